"""Deterministic test doubles for the Teacher, Student and Embedder protocols (unit tests of the core logic)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Sequence

import numpy as np

from pld_desktop.core.protocols import (
    ModelIdentity,
    Prediction,
    PromptTooLong,
    TeacherError,
    TeacherReply,
    TeacherRequest,
    TeacherUsage,
)

KEYWORDS = {
    "fraud_report": ["never", "didn't make", "not me", "unauthori", "stolen", "don't recognise", "scam", "hacked"],
    "complaint": ["unacceptable", "fee", "waited", "rude", "annoyed", "terrible", "disappointed", "still"],
    "question": ["how", "what", "when", "can i", "is there", "?"],
}


def _example_text(user: str) -> str:
    m = re.search(r"<example[^>]*>\n(.*?)\n</example>", user, re.S)
    return m.group(1) if m else user


class FakeTeacher:
    """Answers each request kind with schema-valid JSON; can be told to misbehave for given item texts."""

    def __init__(self, *, delay_s: float = 0.0, invalid_for: Sequence[str] = (), quota_after: int | None = None,
                 max_concurrency: int = 4) -> None:
        self.model_id = "fake-teacher"
        self.max_concurrency = max_concurrency
        self.price_per_million = (1.0, 2.0)
        self.delay_s = delay_s
        self.invalid_for = list(invalid_for)
        self.quota_after = quota_after
        self.requests: list[TeacherRequest] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return len(self.requests)

    def generate(self, request: TeacherRequest) -> TeacherReply:
        with self._lock:
            self.requests.append(request)
            n = len(self.requests)
        if self.quota_after is not None and n > self.quota_after:
            raise TeacherError("Gemini quota exhausted (429).", quota_exhausted=True, status=429)
        if self.delay_s:
            time.sleep(self.delay_s)
        if any(s in request.user for s in self.invalid_for):
            return TeacherReply(text='{"reasoning": "truncated', usage=TeacherUsage(10, 3, 0, 0, 13))
        schema = request.schema.model_json_schema()
        body = self._reply(request, schema)
        return TeacherReply(text=json.dumps(body), usage=TeacherUsage(100, 20, 0, 0, 120), latency_s=0.001,
                            model=self.model_id)

    def _reply(self, request: TeacherRequest, schema: dict) -> dict:
        if request.kind == "extraction":
            gold = re.search(r"Gold label: (\S+)", request.user).group(1)  # type: ignore[union-attr]
            text = _example_text(request.user).lower()
            cue = next((k for k in KEYWORDS[gold] if k in text), KEYWORDS[gold][0])
            return {"reasoning": f"The message mentions '{cue}'.",
                    "rule": f"If the message mentions '{cue}', answer {gold}.", "label": gold}
        if request.kind == "merge":
            label = re.search(r"lead to the label: (\S+)", request.user).group(1)  # type: ignore[union-attr]
            cues = sorted(set(re.findall(r"mentions '([^']+)'", request.user)))
            return {"rule": f"If the message mentions {' or '.join(repr(c) for c in cues)}, answer {label}.",
                    "label": label}
        if request.kind == "review":
            labels = re.findall(r"^- (\S+)", request.user, re.M)
            return {"label_meanings": [{"label": lab, "meaning": f"messages that are a {lab}"} for lab in labels],
                    "conflicts": [{"rule_a": 1, "rule_b": 2, "reason": "both can match a short message"}]}
        if request.kind == "resolution":
            rules = re.findall(r"^\d+\. (.*) -> (\S+)$", request.user.split("Examples the model got WRONG")[0], re.M)
            out = [{"rule": t, "label": lab, "from_rules": [i]} for i, (t, lab) in enumerate(rules, 1)]
            out.append({"rule": "If the message asks how to do something, answer question.", "label": "question",
                        "from_rules": []})
            return {"root_cause": "questions were missed", "rules": out, "conflicts": []}
        raise AssertionError(f"unexpected request kind {request.kind}")

    def close(self) -> None:
        pass


class FakeStudent:
    """Keyword matching over the rule text in the prompt: more rules about a label -> more votes for it."""

    def __init__(self, n_ctx: int = 4096) -> None:
        self.identity = ModelIdentity("fake-student", "/dev/null", "f" * 64, 0, "fake")
        self.n_ctx = n_ctx
        self.calls = 0
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def check_fits(self, system_prompt: str, longest_input: str, labels: Sequence[str]) -> None:
        need = self.count_tokens(system_prompt) + self.count_tokens(longest_input) + 10
        if need > self.n_ctx:
            raise PromptTooLong(f"The prompt needs {need} tokens but the student's context is {self.n_ctx} tokens.")

    def classify(self, system_prompt: str, text: str, labels: Sequence[str]) -> Prediction:
        with self._lock:
            self.calls += 1
        low = text.lower()
        scores = np.ones(len(labels))
        for line in system_prompt.splitlines():
            m = re.match(r"\d+\. .* -> (\S+)$", line)
            if not m or m.group(1) not in labels:
                continue
            cues = re.findall(r"'([^']+)'", line)
            if any(c in low for c in cues):
                scores[list(labels).index(m.group(1))] += 2
        probs = scores / scores.sum()
        return Prediction(labels[int(np.argmax(probs))], {lab: float(p) for lab, p in zip(labels, probs)}, 0.001)

    def close(self) -> None:
        pass


class FakeEmbedder:
    """Bag-of-words hashing into 64 dimensions, unit-normalised: similar wording -> similar vectors."""

    model_id = "fake-embedder"
    dim = 64

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)

    def close(self) -> None:
        pass


class FakeBackends:
    """A BackendProvider over the fakes (one instance each, so tests can inspect them)."""

    def __init__(self, teacher: FakeTeacher | None = None, student: FakeStudent | None = None) -> None:
        self.t = teacher or FakeTeacher()
        self.s = student or FakeStudent()
        self.e = FakeEmbedder()

    def teacher(self, settings: object) -> FakeTeacher:
        return self.t

    def student(self, settings: object) -> FakeStudent:
        return self.s

    def embedder(self, settings: object) -> FakeEmbedder:
        return self.e

    def teacher_endpoint(self, settings: object) -> str | None:
        return None  # the fake teacher lives in this process: nothing to reach

    def close(self) -> None:
        pass
