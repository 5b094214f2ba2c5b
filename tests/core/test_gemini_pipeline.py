"""Phase 1 through the engine with the real google-genai client against the fake Gemini server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

from pld_desktop.core.pipeline import run_pipeline
from pld_desktop.core.progress import SilentProgress
from pld_desktop.core.settings import RunSettings

from .. import rawdb
from ..fake_gemini import FakeGemini, invalid_json, quota_exhausted, server_error
from ..helpers import GEMINI_KEY as KEY
from ..helpers import extraction_responder, gemini_backends, make_project


def test_phase1_with_gemini_retries_validates_and_records_usage(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    n_train = len(project.examples(split="train"))
    with FakeGemini(expected_key=KEY) as server:
        # 429 and 500 before success (retried by the SDK), then one invalid JSON reply (retried by the core).
        server.enqueue(quota_exhausted(), server_error(), invalid_json())
        server.responder = extraction_responder
        report = run_pipeline(project, RunSettings(teacher="gemini"), gemini_backends(server), SilentProgress(),
                              phases=[1])
        assert report.status == "done"
        first = server.requests[-1]
        assert first.model == "gemini-2.5-flash"
        assert "expert annotator" in first.system_text
        config = first.generation_config
        assert config["responseMimeType"] == "application/json"
        assert "rule" in json.dumps(config)  # the pydantic schema went with the request
        sent = len(server.requests)
        # A second run of phase 1 makes zero calls.
        run_pipeline(project, RunSettings(teacher="gemini"), gemini_backends(server), SilentProgress(), phases=[1])
        assert len(server.requests) == sent
    assert len(project.micro_rules()) == n_train
    totals = project.teacher_totals()
    assert totals["prompt_tokens"] >= 120 * n_train and totals["cost_usd"] > 0
    assert rawdb.query(project, "SELECT COUNT(*) AS n FROM teacher_calls WHERE status = 'invalid'")[0]["n"] == 1
    project.close()
    assert KEY.encode() not in (tmp_path / "p.pld").read_bytes()


def test_quota_exhausted_run_stops_resumably(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    with FakeGemini(expected_key=KEY) as server:
        calls = {"n": 0}

        def responder(body: dict) -> object:
            calls["n"] += 1
            return extraction_responder(body) if calls["n"] <= 10 else quota_exhausted()
        server.responder = responder
        report = run_pipeline(project, RunSettings(teacher="gemini"), gemini_backends(server), SilentProgress(),
                              phases=[1])
        assert report.status == "quota_exhausted"
        assert "quota" in report.message.lower()
        assert KEY not in report.message
        got = len(project.micro_rules())
        assert got >= 10 - 4  # at most the in-flight items are lost
        server.responder = extraction_responder
        report = run_pipeline(project, RunSettings(teacher="gemini"), gemini_backends(server), SilentProgress(),
                              phases=[1])
        assert report.status == "done"
    assert len(project.micro_rules()) == len(project.examples(split="train"))
