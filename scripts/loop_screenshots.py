"""The docs/ screenshots of the loop views (results.png, impact.png, diff.png): the demo data run with the test
doubles, four edits (reword, disable, move, relabel against the text), a dev score and the rule impact.

Run from the repository root: xvfb-run -a -s "-screen 0 1280x800x24" python scripts/loop_screenshots.py docs
"""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from PySide6.QtCore import QEventLoop, QSettings
from PySide6.QtWidgets import QApplication

app = QApplication(sys.argv)
QSettings.setDefaultFormat(QSettings.Format.IniFormat)
from pld_desktop.core.rule_edits import Move, SetEnabled, SetLabel, SetText
from pld_desktop.resources import build_demo_project
from pld_desktop.ui.app import TAB_NAMES, MainWindow
from tests.fakes import FakeBackends

out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
work = Path(tempfile.mkdtemp())
QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(work / "qsettings"))
target = work / "walk.pld"
build_demo_project(target)
w = MainWindow(backends_factory=FakeBackends)
w.auto_score_dev = False
w.resize(1280, 800)
w.show()
w.open_project(target)
def pump(cond, limit=600):
    import time
    t = time.time()
    while not cond() and time.time() - t < limit:
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
w.run_all()
pump(lambda: w.worker is None)
ed = w.views["rules"]
ed.auto_conflicts = False
rules = ed.model.rules()
ed.model.push(SetText(rules[1].uid, rules[1].text.replace("If the message", "When the message")))
ed.model.push(SetEnabled(rules[3].uid, False))
ed.model.push(Move(rules[5].uid, 1))
ed.model.push(SetLabel(rules[7].uid, "complaint"))
ed.compute_impact()
pump(lambda: ed.job is None)
res = w.views["results"]
res.score("dev")
pump(lambda: not res.busy())
w.views["diff"].refresh_choices()
for _name, tab, fname in (("Results", "Results", "results.png"), ("Rules", "Rules", "impact.png"),
                         ("Version diff", "Version diff", "diff.png")):
    w.tabs.setCurrentIndex(TAB_NAMES.index(tab))
    if tab == "Rules":
        from PySide6.QtCore import Qt

        from pld_desktop.ui.rules_model import COL_IMPACT
        ed.tree.sortByColumn(COL_IMPACT, Qt.SortOrder.AscendingOrder)
        ed.select_uid(rules[7].uid)
    for _ in range(30):
        app.processEvents()
    w.grab().save(str(out / fname))
w.close()
print("done")
