"""The Import a CSV dialog: column guesses, live template preview, label chart, inline problems, project creation."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QEvent, QMimeData, QObject, Qt, QUrl

from pld_desktop.core.dataset import ColumnMapping, DatasetError, SplitSettings, load_dataset, preview_csv
from pld_desktop.core.new_project import create_project, default_template, guess_mapping, label_count_warnings
from pld_desktop.core.progress import Cancelled, SilentProgress
from pld_desktop.core.project import Project
from pld_desktop.core.settings import load_settings
from pld_desktop.resources import demo_csv
from pld_desktop.ui import import_dialog as import_dialog_module
from pld_desktop.ui.import_dialog import ImportDialog, create_project_from_dialog, csv_paths_from_mime

FIXTURES = Path(__file__).parents[1] / "fixtures" / "bad_csv"
CASES = {c.get("name") or c["file"]: c for c in json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))}


def open_dialog(qtbot: Any, path: Path | str) -> ImportDialog:
    dialog = ImportDialog(path)
    qtbot.addWidget(dialog)
    wait_idle(qtbot, dialog)
    return dialog


def wait_idle(qtbot: Any, dialog: ImportDialog) -> None:
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=30000)


def problem_texts(dialog: ImportDialog) -> list[str]:
    return [dialog.problems_list.item(i).text() for i in range(dialog.problems_list.count())]


def checked_columns(dialog: ImportDialog) -> list[str]:
    return [dialog.text_columns.item(i).text() for i in range(dialog.text_columns.count())
            if dialog.text_columns.item(i).checkState() == Qt.CheckState.Checked]


def tick(dialog: ImportDialog, column: str, on: bool = True) -> None:
    for i in range(dialog.text_columns.count()):
        item = dialog.text_columns.item(i)
        if item.text() == column:
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            return
    raise AssertionError(f"no column {column!r}")


def write_csv(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...] = ("text", "label")) -> Path:
    lines = [",".join(header)] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------------
# The demo CSV
# ----------------------------------------------------------------------------------------------------------------

def test_demo_csv_preselects_sensible_columns_and_is_ready(qtbot: Any) -> None:
    dialog = open_dialog(qtbot, demo_csv())
    mapping = dialog.result_mapping()
    assert checked_columns(dialog) == ["message"]  # 'channel' is a short category, not free text
    assert mapping.label_column == "label" and mapping.id_column == "id"
    assert mapping.split_column is None and mapping.group_column is None
    assert dialog.template_edit.toPlainText() == "{message}"
    assert dialog.task_edit.toPlainText().startswith("Classify the input")
    assert dialog.preview_model.rowCount() == 50  # a preview, not the whole file
    assert dialog.preview_model.headerData(0, Qt.Orientation.Vertical) == "2"  # spreadsheet row numbers
    assert dialog.ok_button.isEnabled()
    assert dialog.ok_button.text() == "Create project…"
    dataset = dialog.dataset()
    assert dataset is not None and len(dataset.rows) == 105
    assert "105 rows" in dialog.summary.text() and "train 63 / dev 21 / test 21" in dialog.summary.text()
    assert problem_texts(dialog) == ["No problems found."]


def test_the_form_scroll_area_leaves_qwidget_scroll_alone(qtbot: Any) -> None:
    # The scroll area was once stored as `self.scroll`, which hid QWidget.scroll(dx, dy) on the dialog.
    dialog = open_dialog(qtbot, demo_csv())
    assert dialog.scroll_area.widgetResizable() and dialog.scroll_area.widget() is not None
    dialog.scroll(0, 0)  # QWidget.scroll, not the scroll area


def test_label_chart_has_one_bar_per_label_and_follows_the_label_column(qtbot: Any) -> None:
    dialog = open_dialog(qtbot, demo_csv())
    assert dialog.chart.bar_count() == 3
    assert dialog.chart.categories == ["question", "complaint", "fraud_report"]  # largest first
    values = [dialog.chart.bar_set.at(i) for i in range(dialog.chart.bar_count())]
    assert sorted(values) == [30.0, 35.0, 40.0]
    assert dialog.chart.highlighted_categories() == []
    assert dialog.meanings_table.rowCount() == 3

    dialog.label_combo.setCurrentText("channel")
    channels = load_dataset(demo_csv(), ColumnMapping(("message",), "channel")).label_counts
    assert dialog.chart.bar_count() == len(channels)
    assert set(dialog.chart.categories) == set(channels)


def test_template_preview_updates_as_the_template_changes(qtbot: Any) -> None:
    dialog = open_dialog(qtbot, demo_csv())
    assert dialog.rendered_view.toPlainText() == "Hi, what time does the Millbrook Road branch close on Saturdays?"
    dialog.template_edit.setPlainText("Channel: {channel}\nMessage: {message}")
    assert dialog.rendered_view.toPlainText() == (
        "Channel: chat\nMessage: Hi, what time does the Millbrook Road branch close on Saturdays?")
    dialog.example_spin.setValue(2)
    assert dialog.rendered_view.toPlainText().startswith("Channel: phone_transcript\nMessage: Yeah hi")
    assert "row 3" in dialog.example_info.text()

    dialog.template_edit.setPlainText("Text: {mesage")  # a typo: the preview says what is wrong at once
    assert "without its partner" in dialog.rendered_view.toPlainText()
    wait_idle(qtbot, dialog)
    assert not dialog.ok_button.isEnabled()
    assert any("without its partner" in t for t in problem_texts(dialog))

    dialog.template_edit.setPlainText("Text: {mesage}")
    wait_idle(qtbot, dialog)
    assert any("no column 'mesage'" in t and "Did you mean 'message'" in t for t in problem_texts(dialog))
    assert dialog.dataset() is None


def test_ticking_columns_follows_the_default_template_until_the_user_edits_it(qtbot: Any) -> None:
    dialog = open_dialog(qtbot, demo_csv())
    tick(dialog, "channel")
    assert dialog.template_edit.toPlainText() == default_template(["message", "channel"]) \
        == "message: {message}\nchannel: {channel}"
    tick(dialog, "channel", on=False)
    assert dialog.template_edit.toPlainText() == "{message}"
    dialog.template_edit.setPlainText("Customer wrote: {message}")
    tick(dialog, "channel")
    assert dialog.template_edit.toPlainText() == "Customer wrote: {message}"  # never drop what the user wrote
    wait_idle(qtbot, dialog)
    assert any("'channel' is not used by the template" in t for t in problem_texts(dialog))
    assert dialog.ok_button.isEnabled()  # a warning does not block
    dialog.reset_template_btn.click()
    assert dialog.template_edit.toPlainText() == "message: {message}\nchannel: {channel}"


def test_a_bad_label_column_shows_problems_and_disables_ok(qtbot: Any) -> None:
    dialog = open_dialog(qtbot, demo_csv())
    assert dialog.ok_button.isEnabled()
    dialog.label_combo.setCurrentText("message")
    assert not dialog.ok_button.isEnabled()  # disabled at once, before the re-check finishes
    wait_idle(qtbot, dialog)
    texts = problem_texts(dialog)
    assert any("'message' is also used as input text" in t for t in texts)
    assert not dialog.ok_button.isEnabled() and dialog.dataset() is None
    assert "problem" in dialog.status.text()

    dialog.label_combo.setCurrentText("id")  # every value unique: each 'label' has one row
    tick(dialog, "message")
    wait_idle(qtbot, dialog)
    assert any("has only 1 row" in t for t in problem_texts(dialog))
    assert len(dialog.chart.highlighted_categories()) == dialog.chart.bar_count()
    assert dialog.label_note.isVisibleTo(dialog) and "Too few rows" in dialog.label_note.text()
    assert not dialog.ok_button.isEnabled()

    dialog.label_combo.setCurrentText("label")
    wait_idle(qtbot, dialog)
    assert dialog.ok_button.isEnabled()


def test_split_settings_match_split_settings_and_bad_ones_block(qtbot: Any) -> None:
    dialog = open_dialog(qtbot, demo_csv())
    dialog.dev_spin.setValue(10.0)
    dialog.test_spin.setValue(30.0)
    dialog.seed_spin.setValue(7)
    assert dialog.split_settings() == SplitSettings(train=0.6, dev=0.1, test=0.3, seed=7)
    assert dialog.train_label.text() == "60.0 %"
    wait_idle(qtbot, dialog)
    dataset = dialog.dataset()
    assert dataset is not None and dataset.split_counts() == {"train": 63, "dev": 11, "test": 31}

    dialog.dev_spin.setValue(0.0)
    wait_idle(qtbot, dialog)
    assert any("dev proportion is 0" in t for t in problem_texts(dialog))
    assert not dialog.ok_button.isEnabled()

    dialog.dev_spin.setValue(20.0)
    dialog.group_combo.setCurrentText("channel")
    assert "Grouped by 'channel'" in dialog.split_note.text()
    wait_idle(qtbot, dialog)
    assert dialog.result_mapping().group_column == "channel"


def test_labels_with_few_rows_warn_but_do_not_block(qtbot: Any, tmp_path: Path) -> None:
    rows = [(f"the parcel {i} arrived broken", "complaint") for i in range(12)] + \
        [(f"how do I reset my pin {i}", "question") for i in range(4)]
    dialog = open_dialog(qtbot, write_csv(tmp_path / "few.csv", rows))
    assert dialog.chart.highlighted_categories() == ["question"]
    assert "'question' (4)" in dialog.label_note.text()
    texts = problem_texts(dialog)
    assert any("Few rows for the label 'question' (4)" in t for t in texts)
    assert dialog.ok_button.isEnabled()
    assert label_count_warnings({"a": 12, "b": 2}, SplitSettings()) == []  # 2 rows is an error, reported elsewhere


# ----------------------------------------------------------------------------------------------------------------
# Bad files
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["empty.csv", "mixed_encoding.csv", "latin1.csv", "png_renamed.csv",
                                  "utf16le_no_bom_cjk.csv", "nul_bytes.csv", "ragged_rows.csv",
                                  "unterminated_quote.csv", "duplicate_header.csv"])
def test_unreadable_files_give_their_message_in_the_dialog(qtbot: Any, name: str) -> None:
    case = CASES[name]
    message = ImportDialog.check_file(FIXTURES / case["file"])
    assert message is not None and case["expect"].lower() in message.lower()
    dialog = open_dialog(qtbot, FIXTURES / case["file"])
    texts = problem_texts(dialog)
    assert any(case["expect"].lower() in t.lower() for t in texts), texts
    assert dialog.file_error is not None and not dialog.form.isEnabled()
    assert not dialog.ok_button.isEnabled()
    assert "Traceback" not in " ".join(texts)


@pytest.mark.parametrize("name", ["some_empty_labels.csv", "label_with_one_row.csv", "one_label_only.csv",
                                  "all_empty_texts.csv", "duplicate_ids.csv", "bad_split_values.csv"])
def test_bad_rows_are_listed_with_their_row_numbers(qtbot: Any, name: str) -> None:
    case = CASES[name]
    dialog = open_dialog(qtbot, FIXTURES / case["file"])
    for i in range(dialog.text_columns.count()):
        item = dialog.text_columns.item(i)
        item.setCheckState(Qt.CheckState.Checked if item.text() in case["text_columns"] else Qt.CheckState.Unchecked)
    dialog.label_combo.setCurrentText(case["label_column"])
    if case.get("id_column"):
        dialog.id_combo.setCurrentText(case["id_column"])
    if "--split-column" in case.get("args", []):
        dialog.split_combo.setCurrentText("split")
        dialog.keep_split_check.setChecked(True)
    wait_idle(qtbot, dialog)
    texts = problem_texts(dialog)
    assert any(case["expect"].lower() in t.lower() for t in texts), texts
    assert not dialog.ok_button.isEnabled()


def test_missing_file_and_folder_are_refused_in_words(qtbot: Any, tmp_path: Path) -> None:
    missing = ImportDialog.check_file(tmp_path / "nope.csv")
    assert missing is not None and "does not exist" in missing
    folder = ImportDialog.check_file(tmp_path)
    assert folder is not None and "is a folder" in folder
    dialog = open_dialog(qtbot, tmp_path / "nope.csv")
    assert any("does not exist" in t for t in problem_texts(dialog))
    assert ImportDialog.check_file(demo_csv()) is None


# ----------------------------------------------------------------------------------------------------------------
# Large files: the whole-file read runs in the background and can be cancelled
# ----------------------------------------------------------------------------------------------------------------

def test_reading_a_large_file_shows_progress_and_can_be_cancelled(qtbot: Any, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("id,text,label\n")
        for i in range(60_000):
            fh.write(f"r{i},customer message number {i} about the account,{('a', 'b', 'c')[i % 3]}\n")
    assert path.stat().st_size > 2 * (1 << 20)  # larger than what the preview reads
    dialog = ImportDialog(path)
    qtbot.addWidget(dialog)
    dialog.show()
    # Straight after opening: the preview is there, the whole file is being read.
    assert dialog.preview_model.rowCount() == 50
    assert dialog.progress_bar.isVisible() and dialog.stop_btn.isVisible()
    assert "first 50 rows" in dialog.summary.text()
    dialog.stop_btn.click()
    assert not dialog.is_busy() and dialog.source is None
    assert "cancelled" in dialog.status.text()
    assert not dialog.ok_button.isEnabled()
    dialog.stop_btn.click()  # now "Read the whole file"
    wait_idle(qtbot, dialog)
    assert dialog.source is not None and len(dialog.source.frame) == 60_000
    dataset = dialog.dataset()
    assert dataset is not None and len(dataset.rows) == 60_000 and dialog.ok_button.isEnabled()
    assert dialog.chart.bar_count() == 3


# ----------------------------------------------------------------------------------------------------------------
# Creating the project
# ----------------------------------------------------------------------------------------------------------------

def test_creating_the_project_stores_the_rows_labels_task_and_meanings(qtbot: Any, tmp_path: Path) -> None:
    dialog = open_dialog(qtbot, demo_csv())
    dialog.task_edit.setPlainText("Triage a bank customer's message.")
    dialog.meanings_table.item(0, 1).setText("a neutral request for information")  # row 0 is 'question'
    target = tmp_path / "demo.pld"
    with qtbot.waitSignal(dialog.project_created, timeout=30000) as blocker:
        dialog.start_create(target)
    assert blocker.args == [target]
    assert dialog.result() == ImportDialog.DialogCode.Accepted and dialog.created_path == target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.pld"]
    with Project.open(target, read_only=True) as project:
        info = project.dataset_info()
        assert info is not None and info["n_rows"] == 105 and info["source_name"] == "bank_messages.csv"
        assert sorted(project.labels()) == ["complaint", "fraud_report", "question"]
        assert info["mapping"]["id_column"] == "id" and info["mapping"]["text_columns"] == ["message"]
        settings = load_settings(project)
        assert settings.task == "Triage a bank customer's message."
        assert settings.label_meanings == {"question": "a neutral request for information"}
        # Same rows and splits as `pld init` would store for the same mapping.
        expected = load_dataset(demo_csv(), dialog.result_mapping(), dialog.split_settings())
        assert info["dataset_hash"] == expected.dataset_hash()


def test_create_project_from_dialog_and_refusal_while_blocked(qtbot: Any, tmp_path: Path) -> None:
    dialog = open_dialog(qtbot, demo_csv())
    path = create_project_from_dialog(dialog, tmp_path / "p.pld")
    with Project.open(path, read_only=True) as project:
        assert len(project.examples()) == 105
    with pytest.raises(Exception, match="already exists"):
        create_project_from_dialog(dialog, tmp_path / "p.pld")
    dialog.label_combo.setCurrentText("message")
    wait_idle(qtbot, dialog)
    with pytest.raises(DatasetError, match="also used as input text"):
        create_project_from_dialog(dialog, tmp_path / "q.pld")
    assert not (tmp_path / "q.pld").exists()


def test_a_shown_dialog_reads_the_whole_file_after_its_first_paint(qtbot: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Painting a new dialog while the reader holds the GIL stalled the window ~0.5 s at 100k rows: the first
    # paint goes first. A dialog that is never shown (the other tests) reads at once.
    events: list[str] = []
    real_read = import_dialog_module.read_source

    def read(path: Any) -> Any:
        events.append("read")  # on the reader thread; list.append is atomic
        return real_read(path)

    class PaintWatch(QObject):
        def eventFilter(self, watched: QObject, event: QEvent) -> bool:
            if event.type() == QEvent.Type.Paint and watched is dialog:
                events.append("paint")
            return False

    monkeypatch.setattr(import_dialog_module, "read_source", read)
    dialog = ImportDialog(demo_csv())
    qtbot.addWidget(dialog)
    watch = PaintWatch()
    dialog.installEventFilter(watch)
    dialog.show()
    wait_idle(qtbot, dialog)
    assert dialog.source is not None and len(dialog.source.frame) == 105
    assert "paint" in events and events.index("paint") < events.index("read"), events
    assert dialog.preview_model.item(0, 1).toolTip().startswith("Hi, what time")  # cells are Qt items


def test_cancel_leaves_no_file(qtbot: Any, tmp_path: Path) -> None:
    dialog = open_dialog(qtbot, demo_csv())
    dialog.cancel_button.click()
    assert dialog.result() == ImportDialog.DialogCode.Rejected
    assert list(tmp_path.iterdir()) == []


def test_cancelling_while_the_project_is_written_leaves_no_file(qtbot: Any, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    started, returned = threading.Event(), threading.Event()
    real_create = import_dialog_module.create_project

    def slow_create(*args: Any, progress: Any, **kwargs: Any) -> Path:
        started.set()
        try:
            for _ in range(1000):  # hold the write until the user has pressed Cancel
                if progress.cancelled():
                    break
                threading.Event().wait(0.01)
            return real_create(*args, progress=progress, **kwargs)
        finally:
            returned.set()

    monkeypatch.setattr(import_dialog_module, "create_project", slow_create)
    dialog = open_dialog(qtbot, demo_csv())
    dialog.start_create(tmp_path / "p.pld")
    # Keep the event loop turning: the serial runner may queue the write until the check's thread has ended,
    # and that hand-over is a queued signal (a blocking wait here deadlocked under load in CI).
    qtbot.waitUntil(started.is_set, timeout=30000)
    assert dialog.stop_btn.isVisibleTo(dialog) and not dialog.ok_button.isEnabled()
    # The dialog is never shown here, so "not visible" and result() == Rejected (0) hold from the start: wait for
    # its `finished` signal instead, and record whether the write had stopped when it came.
    write_stopped_at_close: list[bool] = []
    dialog.finished.connect(lambda _code: write_stopped_at_close.append(returned.is_set()))
    with qtbot.waitSignal(dialog.finished, timeout=30000) as closed:
        dialog.cancel_button.click()  # closes only after the write has stopped
    assert closed.args == [ImportDialog.DialogCode.Rejected.value]
    assert write_stopped_at_close == [True], "the dialog closed while the project was still being written"
    assert list(tmp_path.iterdir()) == []


def test_core_create_project_cancelled_leaves_nothing(tmp_path: Path) -> None:
    dataset = load_dataset(demo_csv(), guess_mapping(preview_csv(demo_csv())[0]))
    progress = SilentProgress()
    progress.cancel()
    with pytest.raises(Cancelled):
        create_project(tmp_path / "p.pld", dataset, source_name="x.csv", progress=progress)
    assert list(tmp_path.iterdir()) == []
    done = SilentProgress()
    create_project(tmp_path / "p.pld", dataset, source_name="x.csv", progress=done)
    assert done.done == done.total == 2 * len(dataset.rows)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------

def test_csv_paths_from_mime_keeps_local_csv_files_only(tmp_path: Path) -> None:
    csv = tmp_path / "a.csv"
    tsv = tmp_path / "b.TSV"
    xlsx = tmp_path / "c.xlsx"
    for p in (csv, tsv, xlsx):
        p.write_text("x")
    folder = tmp_path / "d.csv"
    folder.mkdir()
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in (csv, tsv, xlsx, folder)]
                 + [QUrl("https://example.com/e.csv")])
    assert csv_paths_from_mime(mime) == [csv, tsv]
    assert csv_paths_from_mime(QMimeData()) == []


def test_guess_mapping_names_and_split_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "g.csv", [
        ("1", "the first long contract clause text here", "yes", "train", "doc1"),
        ("2", "the second long contract clause text", "no", "test", "doc1"),
        ("3", "a third clause that is long enough", "yes", "validation", "doc2"),
    ], header=("id", "clause", "answer", "split", "doc_id"))
    mapping = guess_mapping(preview_csv(path)[0])
    assert mapping.text_columns == ("clause",) and mapping.label_column == "answer"
    assert (mapping.id_column, mapping.split_column, mapping.group_column) == ("id", "split", "doc_id")
    assert mapping.keep_source_split


def test_preview_model_passes_the_qt_model_tester(qtmodeltester: Any, qtbot: Any) -> None:
    dialog = open_dialog(qtbot, demo_csv())
    qtmodeltester.check(dialog.preview_model)
