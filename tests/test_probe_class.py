"""The probes of issue 13 as a class: labels with quotes, backslashes and newlines through a whole `pld demo`-like
run (init, all four phases, every export, status), and a bad option followed by a plain run that must behave
as if the bad option had never been typed. The teacher here reads its labels from the request's JSON schema,
never from the prompt text, so it works for any label and a label the prompts garble shows up as a failure."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pld_desktop import cli
from pld_desktop.core.project import Project
from pld_desktop.core.settings import load_settings

from . import rawdb
from .fakes import FakeBackends, FakeTeacher

NASTY_LABELS = ['say "no"', "back\\slash", "new\nline", "tab\there"]
TEXTS = ["The parcel arrived two weeks late and the box was crushed",
         "Great service, the staff answered every question quickly",
         "I want to change the delivery address of my order",
         "Please close my account and send the remaining balance"]


def _enum(schema: dict[str, Any], name: str) -> list[str]:
    """The allowed values of the string field `name` in a (possibly nested) pydantic JSON schema."""
    for model in [schema, *schema.get("$defs", {}).values()]:
        field = model.get("properties", {}).get(name)
        if field and "enum" in field:
            return list(field["enum"])
    raise AssertionError(f"no enum for {name} in {schema}")


class SchemaTeacher(FakeTeacher):
    """Answers every request kind from its schema (the labels) and the known label list, whatever the labels."""

    def __init__(self, labels: Sequence[str]) -> None:
        super().__init__()
        self.labels = list(labels)

    def _reply(self, request: Any, schema: dict[str, Any]) -> dict[str, Any]:
        if request.kind == "extraction":
            (gold,) = _enum(schema, "label")
            m = re.search(r"<example[^>]*>\n(.*?)\n</example>", request.user, re.S)
            words = re.findall(r"[a-z]{5,}", (m.group(1) if m else "").lower()) or ["words"]
            return {"reasoning": f"The message mentions '{words[0]}'.",
                    "rule": f"If the message mentions '{words[0]}', answer {gold}.", "label": gold}
        if request.kind == "merge":
            label = _enum(schema, "label")[0]
            cues = sorted(set(re.findall(r"mentions '([^']+)'", request.user)))[:4] or ["words"]
            return {"rule": f"If the message mentions {' or '.join(repr(c) for c in cues)}, answer {label}.",
                    "label": label}
        if request.kind == "review":
            return {"label_meanings": [{"label": lab, "meaning": f"messages of the kind {lab!r}"}
                                       for lab in self.labels], "conflicts": []}
        if request.kind == "resolution":
            rules = [{"rule": f"If the message reads like {lab!r} messages, answer {lab}.", "label": lab,
                      "from_rules": []} for lab in _enum(schema, "label")]
            return {"root_cause": "the rules were too narrow", "rules": rules, "conflicts": []}
        raise AssertionError(f"unexpected request kind {request.kind}")


def _pld(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], backends: FakeBackends | None,
         *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr("pld_desktop.backends.factory.DefaultBackends", lambda **_: backends or FakeBackends())
    capsys.readouterr()
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse refuses a malformed option before pld runs
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _nasty_csv(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "label"])
        for i in range(60):
            writer.writerow([i, f"{TEXTS[i % 4]} (case {i})", NASTY_LABELS[i % 4]])
    return path


def test_labels_with_quotes_backslashes_and_newlines_survive_a_whole_run(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "nasty.pld"
    code, _, err = _pld(monkeypatch, capsys, None, "init", str(project), "--csv", str(_nasty_csv(tmp_path / "n.csv")),
                        "--text", "text", "--label", "label", "--id", "id")
    assert code == 0, err
    backends = FakeBackends(SchemaTeacher(NASTY_LABELS))
    code, _, err = _pld(monkeypatch, capsys, backends, "run", str(project), "--max-iterations", "2", "--quiet")
    assert code == 0, err
    assert "Traceback" not in err
    code, out, err = _pld(monkeypatch, capsys, None, "status", str(project), "--json")
    assert code == 0, err
    status = json.loads(out)
    assert sorted(status["labels"]) == sorted(NASTY_LABELS)
    assert {p["state"] for p in status["phases"].values()} == {"done"}, status["phases"]
    with Project.open(project, read_only=True) as p:
        failed = p.failed_items()
        micro = p.micro_rules()
        rs_id = p.get_setting("chosen_rule_set_id")
        rules = p.rule_set(rs_id).rules
    assert failed == [], failed
    assert {m["gold_label"] for m in micro} == set(NASTY_LABELS), "every label got micro-rules"
    assert {r.label for r in rules if r.enabled} == set(NASTY_LABELS), "every label has a rule"
    # Every export: the JSON keeps each label exactly; none of the files is cut short or unreadable.
    code, out, err = _pld(monkeypatch, capsys, None, "export", str(project), "--out", str(tmp_path / "exports"))
    assert code == 0, err
    paths = [Path(line) for line in out.splitlines() if line.strip()]
    assert paths and all(p.stat().st_size > 0 for p in paths)
    payloads = [json.loads(p.read_text(encoding="utf-8")) for p in paths if p.suffix == ".json"]
    assert payloads and all(sorted(d["labels"]) == sorted(NASTY_LABELS) for d in payloads if "labels" in d)


@pytest.mark.parametrize("options", [
    ("--student", "/nonexistent.gguf"), ("--n-ctx", "-1"), ("--max-test", "-1"), ("--sample-size", "-5"),
    ("--max-iterations", "-1"), ("--teacher", "openai"), ("--student-backend", "openai"),
    ("--student-base-url", "ftp://example.org/v1", "--student-backend", "openai"),
], ids=lambda o: "_".join(o).strip("-").replace("/", "_"))
def test_a_bad_option_then_a_plain_run_behaves_as_if_it_was_never_typed(
        options: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pld_desktop.resources import build_demo_project
    project = tmp_path / "p.pld"
    build_demo_project(project, 1)
    with Project.open(project, read_only=True) as p:
        before = load_settings(p)
    code, _, err = _pld(monkeypatch, capsys, None, "run", str(project), "--phase", "1", "--quiet", *options)
    assert code == 2 and "error:" in err and "Traceback" not in err, err
    with Project.open(project, read_only=True) as p:
        assert load_settings(p) == before
        assert rawdb.query(p, "SELECT COUNT(*) AS n FROM runs")[0]["n"] == 0
    code, _, err = _pld(monkeypatch, capsys, None, "run", str(project), "--phase", "1", "--quiet")
    assert code == 0, err
    with Project.open(project, read_only=True) as p:
        assert load_settings(p) == before
        assert p.phase_states()[1]["state"] == "done"


@pytest.mark.parametrize("argv", [("eval",), ("run", "--phase", "4")], ids=["eval", "run_phase4"])
def test_a_closed_port_student_server_is_a_failure_with_the_cause(argv: tuple[str, ...], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The real server-backed student against a port nothing listens on: exit 1 with the address and the cause,
    not "unexpected internal error"."""
    import socket

    from pld_desktop.backends.factory import DefaultBackends
    from pld_desktop.core.pipeline import run_pipeline
    from pld_desktop.core.progress import SilentProgress
    from pld_desktop.resources import build_demo_project
    project = tmp_path / "p.pld"
    build_demo_project(project, 1)
    with Project.open(project) as p:
        assert run_pipeline(p, load_settings(p), FakeBackends(), SilentProgress(), phases=[1, 2]).status == "done"
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setattr("pld_desktop.backends.factory.DefaultBackends", DefaultBackends)
    capsys.readouterr()
    code = cli.main([argv[0], str(project), *argv[1:], "--quiet", "--student-backend", "openai",
                     "--student-base-url", f"http://127.0.0.1:{port}/v1"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("error:") and f"127.0.0.1:{port}" in err and "refused" in err.lower(), err
    assert "internal error" not in err and "Traceback" not in err
