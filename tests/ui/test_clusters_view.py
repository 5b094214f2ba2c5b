"""The clusters view (tree + 2-D map) and the closed-loop chart on a project after a pipeline run with doubles."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pld_desktop.core.phases.synthesis import clusters_of, latest_clustering
from pld_desktop.core.pipeline import run_pipeline
from pld_desktop.core.progress import SilentProgress
from pld_desktop.core.project import Project
from pld_desktop.ui.clusters_view import KEY_ROLE, KIND_ROLE, MICRO_ROLE, ClustersView, LoopChart, read_loop_rounds

from .. import rawdb
from ..fakes import FakeBackends
from ..helpers import make_project, settings


@pytest.fixture
def ran_project(distilled_path: Path) -> Path:
    return distilled_path  # this test's copy of the session's distilled project (conftest)


def cluster_items(view: ClustersView) -> list:  # type: ignore[type-arg]
    return [item for key, item in view._items.items() if item.data(0, KIND_ROLE) == "cluster"]


def test_tree_lists_every_cluster_with_members_and_merged_rule(qtbot, ran_project: Path) -> None:
    view = ClustersView(ran_project)
    qtbot.addWidget(view)
    with Project.open(ran_project, read_only=True) as project:
        clusters = clusters_of(project, latest_clustering(project))
        labels = project.labels()
        n_micro = len(project.micro_rules())
        synthesis = project.rule_set(project.get_setting("synthesis_rule_set_id")).rules
    assert view.stack.currentIndex() == 1
    tops = [view.tree.topLevelItem(i).text(0) for i in range(view.tree.topLevelItemCount())]
    assert tops[:len(labels)] == labels
    items = cluster_items(view)
    assert len(items) == sum(1 for c in clusters if not c["is_noise"])
    merged = {r.cluster_id: r.text for r in synthesis}
    for item in items:
        cid = int(str(item.data(0, KEY_ROLE)).removeprefix("c:"))
        assert item.text(2) == merged[cid]
        assert int(item.text(1)) == item.childCount() == len(next(c for c in clusters if c["id"] == cid)
                                                               ["micro_rule_ids"])
    # Every micro-rule is on the map exactly once.
    assert sum(s.count() for k, s in view._series.items()) == n_micro
    assert f"<b>{n_micro}</b> micro-rules" in view.summary.text()


def test_selecting_a_cluster_highlights_its_points(qtbot, ran_project: Path) -> None:  # type: ignore[no-untyped-def]
    view = ClustersView(ran_project)
    qtbot.addWidget(view)
    assert view.highlighted() == set()
    item = cluster_items(view)[1]
    key = str(item.data(0, KEY_ROLE))
    view.tree.setCurrentItem(item)
    assert view.highlighted() == {key}
    chosen = view._series[key]
    others = [s for k, s in view._series.items() if k != key]
    assert all(chosen.markerSize() > s.markerSize() for s in others)
    assert chosen.brush().color() == view._colors[key]
    assert all(s.brush().color() != view._colors[k] for k, s in view._series.items() if k != key)
    # A member micro-rule: its cluster stays highlighted and a ring marks its own point.
    member = item.child(0)
    view.tree.setCurrentItem(member)
    assert view.highlighted() == {key}
    point = view._focus.at(0)
    assert (point.x(), point.y()) == pytest.approx(view.data.points[int(member.data(0, MICRO_ROLE))])
    # A label selects all of its clusters; clearing the selection restores everything.
    label_item = view.tree.topLevelItem(0)
    view.tree.setCurrentItem(label_item)
    assert view.highlighted() == {g.key for g in view.data.groups if g.label == label_item.text(0)}
    view.tree.clearSelection()
    assert view.highlighted() == set() and view._focus.count() == 0


def test_noise_is_listed_apart_and_drawn_grey(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = make_project(tmp_path)
    run_pipeline(project, settings(), FakeBackends(), SilentProgress(), phases=[1, 2])
    # A later clustering in which the first label's three last micro-rules are noise.
    micro = project.micro_rules()
    label = project.labels()[0]
    mine = [m for m in micro if m["label"] == label]
    old = json.loads(rawdb.query(project, "SELECT report_json FROM clusterings")[0]["report_json"])
    with project.transaction() as conn:
        conn.execute("INSERT INTO clusterings (key, method, params_json, report_json, created_at) VALUES (?,?,?,?,?)",
                     ["k2", "test", "{}", json.dumps({"labels": {}, "points": old["points"]}), time.time()])
        for index, members in ((0, mine[:-3]), (-1, mine[-3:])):
            cur = conn.execute("INSERT INTO clusters (clustering_key, label, cluster_index, is_noise, size) "
                               "VALUES (?,?,?,?,?)", ["k2", label, index, int(index < 0), len(members)])
            conn.executemany("INSERT INTO cluster_members (cluster_id, micro_rule_id) VALUES (?,?)",
                             [(cur.lastrowid, m["id"]) for m in members])
    project.close()
    view = ClustersView(tmp_path / "p.pld")
    qtbot.addWidget(view)
    noise = view._items["noise"]
    assert noise.text(0) == "Noise" and noise.text(1) == "3"
    assert noise.child(0).text(0) == label and noise.child(0).childCount() == 3
    series = view._series[f"noise:{label}"]
    assert series.count() == 3 and series.brush().color().name() == "#9e9e9e"
    assert "<b>3</b> noise rules" in view.summary.text()
    # Not merged yet: the cluster of the new clustering has no consolidated rule.
    assert "not merged yet" in cluster_items(view)[0].text(2)
    view.tree.setCurrentItem(noise)
    assert view.highlighted() == {f"noise:{label}"}


def test_empty_project_then_reload(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_project(tmp_path).close()
    view = ClustersView(tmp_path / "p.pld")
    chart = LoopChart(tmp_path / "p.pld")
    qtbot.addWidget(view)
    qtbot.addWidget(chart)
    assert view.stack.currentIndex() == 0 and "run phase 2" in view.empty.text()
    assert "run phase 3" in chart.caption.text() and chart.chart.series() == []
    with Project.open(tmp_path / "p.pld") as project:
        run_pipeline(project, settings(), FakeBackends(), SilentProgress())
    view.reload()
    chart.reload()
    assert view.stack.currentIndex() == 1 and cluster_items(view)
    assert chart.rounds and chart.accepted_series is not None


def test_unreadable_file_gives_a_message(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.pld"
    bad.write_text("not a project")
    view = ClustersView(bad)
    chart = LoopChart(bad)
    qtbot.addWidget(view)
    qtbot.addWidget(chart)
    assert "Cannot read the clusters" in view.empty.text() and "not a PLD project" in view.empty.text()
    assert "not a PLD project" in chart.caption.text()


def test_loop_chart_plots_each_round(qtbot, ran_project: Path) -> None:  # type: ignore[no-untyped-def]
    chart = LoopChart(ran_project)
    qtbot.addWidget(chart)
    with Project.open(ran_project, read_only=True) as project:
        rounds = read_loop_rounds(project)
    assert rounds and chart.rounds == rounds
    accepted = [r for r in rounds if r["accepted"]]
    assert chart.accepted_series.count() == len(accepted)
    assert chart.rejected_series.count() == len(rounds) - len(accepted)
    for r in rounds:
        assert f"round {r['round']}: {r['dev_macro_f1']:.3f}" in chart.caption.text()


def test_loop_chart_accepted_rejected_and_unscored(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = make_project(tmp_path)
    project.run_id = 7
    project.add_loop_round(round=1, base_rule_set_id=1, candidate_rule_set_id=2, dev_macro_f1=0.55,
                           base_dev_macro_f1=0.40, accepted=1, root_cause="x")
    project.add_loop_round(round=2, base_rule_set_id=2, candidate_rule_set_id=3, dev_macro_f1=0.50,
                           base_dev_macro_f1=0.55, accepted=0, root_cause="y")
    project.add_loop_round(round=3, base_rule_set_id=2, candidate_rule_set_id=None, dev_macro_f1=None,
                           base_dev_macro_f1=0.55, accepted=0, root_cause="teacher reply failed")
    project.close()
    chart = LoopChart(tmp_path / "p.pld")
    qtbot.addWidget(chart)
    acc = chart.accepted_series
    rej = chart.rejected_series
    assert [(acc.at(i).x(), acc.at(i).y()) for i in range(acc.count())] == [(1, 0.55)]
    assert [(rej.at(i).x(), rej.at(i).y()) for i in range(rej.count())] == [(2, 0.50)]
    best = next(s for s in chart.chart.series() if s.name() == "Best so far")
    assert [(best.at(i).x(), best.at(i).y()) for i in range(best.count())] == [(0, 0.40), (1, 0.55), (2, 0.55),
                                                                              (3, 0.55)]
    assert "start 0.400" in chart.caption.text() and "round 3: no candidate scored (teacher reply failed)" \
        in chart.caption.text()


def test_loop_chart_caption_shortens_a_long_cause_at_a_word_and_keeps_it_whole_in_the_tooltip(
        qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cause = ("failed attempt: the list drops the label(s) shipping; every label that had a rule must keep at "
             "least one")
    project = make_project(tmp_path)
    project.run_id = 7
    project.add_loop_round(round=1, base_rule_set_id=1, candidate_rule_set_id=None, dev_macro_f1=None,
                           base_dev_macro_f1=0.30, accepted=0, root_cause=cause)
    project.close()
    chart = LoopChart(tmp_path / "p.pld")
    qtbot.addWidget(chart)
    shown = chart.caption.text().split("no candidate scored (", 1)[1].removesuffix(")")
    assert shown.endswith(" …") and len(shown) <= 80
    assert cause.startswith(shown.removesuffix(" …")) and cause[len(shown) - 2] == " "  # cut between words
    assert cause in chart.caption.toolTip()
