"""The project file: stamped, versioned, refuses what it cannot safely open and leaves it untouched."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pld_desktop.core.project import APPLICATION_ID, Project, ProjectFileError, ProjectTooNew


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_new_project_is_stamped_and_sound(tmp_path: Path) -> None:
    p = Project.create(tmp_path / "a.pld")
    assert p.integrity_check() == "ok"
    assert p._conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert p._conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    p.close()
    assert not (tmp_path / "a.pld.creating").exists()


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    Project.create(tmp_path / "a.pld").close()
    with pytest.raises(ProjectFileError, match="already exists"):
        Project.create(tmp_path / "a.pld")


def test_newer_schema_is_refused_and_the_file_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.pld"
    Project.create(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                 "VALUES ('pld_desktop', 'm099_from_the_future', '2030-01-01')")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(ProjectTooNew, match="newer version"):
        Project.open(path)
    assert digest(path) == before


@pytest.mark.parametrize("content", [b"", b"hello,world\n1,2\n", b"\x00" * 4096, os.urandom(8192)])
def test_non_project_files_are_refused_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pld"
    path.write_bytes(content)
    before = digest(path)
    with pytest.raises(ProjectFileError, match="not a PLD project"):
        Project.open(path)
    assert digest(path) == before


def test_other_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(ProjectFileError, match="not a PLD project"):
        Project.open(path)
    assert digest(path) == before


def test_truncated_project_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "t.pld"
    p = Project.create(path)
    for i in range(300):
        p.set_setting(f"k{i}", "x" * 500)
    p.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = digest(path)
    with pytest.raises(ProjectFileError):
        Project.open(path)
    assert digest(path) == before


def test_missing_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ProjectFileError, match="not found"):
        Project.open(tmp_path / "nope.pld")
    with pytest.raises(ProjectFileError, match="folder"):
        Project.open(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_file_is_refused_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "ro.pld"
    Project.create(path).close()
    path.chmod(0o444)
    with pytest.raises(ProjectFileError, match="read-only"):
        Project.open(path)
    Project.open(path, read_only=True).close()


def test_read_only_mode_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "ro.pld"
    Project.create(path).close()
    before = digest(path)
    with Project.open(path, read_only=True) as p, pytest.raises(ProjectFileError, match="read-only"):
        p.set_setting("x", 1)
    assert digest(path) == before


def test_settings_never_hold_secrets(tmp_path: Path) -> None:
    with Project.create(tmp_path / "s.pld") as p:
        for key in ("gemini_api_key", "API_KEY", "secret"):
            with pytest.raises(ValueError, match="keyring"):
                p.set_setting(key, "AIza-should-not-be-here")
        p.set_setting("teacher_model", "gemini-2.5-flash")
        assert p.get_setting("teacher_model") == "gemini-2.5-flash"


def test_save_as_copies_the_live_document(tmp_path: Path) -> None:
    with Project.create(tmp_path / "a.pld") as p:
        p.set_setting("note", "hello")
        p.save_as(tmp_path / "b.pld")
    with Project.open(tmp_path / "b.pld") as q:
        assert q.get_setting("note") == "hello"


def test_a_killed_writer_loses_at_most_the_item_in_flight(tmp_path: Path) -> None:
    """Commit per item: a process killed between writes leaves every committed row and a sound file."""
    path = tmp_path / "k.pld"
    Project.create(path).close()
    script = (
        "import os, signal, sys\n"
        "from pld_desktop.core.project import Project\n"
        f"p = Project.open({str(path)!r})\n"
        "for i in range(50):\n"
        "    p.set_setting(f'item{i}', i)\n"
        "    if i == 29: os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    with Project.open(path) as p:
        assert p.integrity_check() == "ok"
        assert sorted(int(k[4:]) for k in p.settings() if k.startswith("item")) == list(range(30))


def test_full_disk_gives_a_clear_error_and_keeps_the_file(tmp_path: Path) -> None:
    """A size-limited file (max_page_count) stands in for a full disk."""
    path = tmp_path / "full.pld"
    with Project.create(path) as p:
        pages = p._conn.execute("PRAGMA page_count").fetchone()[0]
        p._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(ProjectFileError, match="full"):
            for i in range(1000):
                p.set_setting(f"k{i}", "x" * 4000)
        assert p.integrity_check() == "ok"


def test_named_reads_and_writes_match_what_the_file_holds(tmp_path: Path) -> None:
    # The methods that replaced SQL in the views, the CLI and the phases, checked against the file read raw.
    from pld_desktop.core.project import NewCluster

    from .. import rawdb
    from ..helpers import make_project
    project = make_project(tmp_path)
    raw_counts = rawdb.query(project, "SELECT split, COUNT(*) AS n FROM examples GROUP BY split")
    assert project.split_counts() == {r["split"]: r["n"] for r in raw_counts}
    assert sum(project.split_counts().values()) == len(project.examples())
    train = project.examples(split="train")[:4]
    call_a = project.record_teacher_call(kind="extract", request_hash="h1", model="m-b", request_json="{}", status="ok")
    project.record_teacher_call(kind="extract", request_hash="h2", model="m-a", request_json="{}", status="error")
    assert project.teacher_models() == ["m-a", "m-b"]
    project.add_micro_rules([(e.id, "because", f"rule {e.id}", e.label, call_a) for e in train])
    project.add_micro_rules([(train[0].id, "again", "duplicate", train[0].label, call_a)])  # one per example
    micro = project.micro_rules()
    assert [m["example_id"] for m in micro] == [e.id for e in train] and micro[0]["rule"] == f"rule {train[0].id}"
    project.record_failure(1, "x", "bad")
    project.record_failure(1, "x", "bad again")
    assert project.failed_item_count() == 2
    project.start_run("test", {})
    project.finish_run("done")
    assert [(r["status"], r["command"]) for r in project.runs()] == [("done", "test")]

    assert project.latest_clustering_key() is None and not project.has_clustering("k1")
    ids = [m["id"] for m in micro]
    project.store_clustering("k1", method="m", params={"eps": 0.4}, report={"labels": {}, "points": {"1": [0, 1]}},
                             clusters=[NewCluster("a", 0, 0.5, 1.5, (ids[1], ids[0])),
                                       NewCluster("a", -1, 0.0, 0.0, (ids[2],))])
    project.store_clustering("k2", method="m", params={}, report={"labels": {}},
                             clusters=[NewCluster("b", -1, 0.0, 0.0, (ids[3],))])
    assert project.has_clustering("k1") and project.latest_clustering_key() == "k2"
    assert project.clustering_report("k1") == {"labels": {}, "points": {"1": [0, 1]}}
    clusters = project.clusters("k1")
    assert [(c["cluster_index"], c["is_noise"], c["size"], c["micro_rule_ids"]) for c in clusters] == \
        [(-1, 1, 1, [ids[2]]), (0, 0, 2, sorted(ids[:2]))]
    assert rawdb.query(project, "SELECT params_json FROM clusterings WHERE key = 'k1'")[0]["params_json"] == \
        '{"eps": 0.4}'
    # Noise of the latest clustering only.
    assert [(n["id"], n["ext_id"]) for n in project.noise_micro_rules()] == [(ids[3], train[3].ext_id)]
    project.close()


def test_loop_dev_scores_prefer_the_candidate_score(tmp_path: Path) -> None:
    from ..helpers import make_project
    project = make_project(tmp_path)
    project.add_loop_round(round=1, base_rule_set_id=1, candidate_rule_set_id=2, dev_macro_f1=0.5,
                           base_dev_macro_f1=0.4)
    project.add_loop_round(round=2, base_rule_set_id=2, candidate_rule_set_id=None, base_dev_macro_f1=0.45)
    assert project.loop_dev_scores() == {2: 0.5, 1: 0.4}
    project.close()
