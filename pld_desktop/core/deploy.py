"""Deployment exports of a rule set: an Ollama Modelfile, a llama.cpp server command with a GBNF label grammar,
and a standalone Python script that classifies a CSV with the exact prompt (llama-cpp-python)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .dataset.template import template_parts
from .prompts import student_user_message

DEPLOY_FORMATS = ("modelfile", "llama-server", "classify-py")
_CONFIG = re.compile(r"# PLD-CONFIG-BEGIN\n.*?# PLD-CONFIG-END\n", re.S)


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal: quotes, backslashes and control characters escaped; other characters
    (UTF-8 included) as they are, which llama.cpp's grammar parser accepts."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def labels_grammar(labels: Sequence[str]) -> str:
    """A GBNF grammar whose only sentences are the labels (the answer the app scores)."""
    if not labels:
        raise ValueError("A label grammar needs at least one label.")
    return "root ::= " + " | ".join(gbnf_literal(label) for label in labels) + "\n"


def _student_model(payload: dict[str, Any]) -> tuple[str, int]:
    student = payload.get("student") or {}
    path = student.get("path") or ""
    return str(path), int(student.get("n_ctx") or 4096)


def _header(payload: dict[str, Any], comment: str = "#") -> list[str]:
    rs = payload["rule_set"]
    return [f"{comment} PLD Desktop rule-set version {rs.id} ({rs.origin}): {len(payload['rules'])} rules",
            f"{comment} prompt sha256 {rs.prompt_sha256}"]


def render_modelfile(payload: dict[str, Any]) -> bytes:
    rs = payload["rule_set"]
    if '"""' in rs.prompt_text:
        raise ValueError('The prompt contains """, which an Ollama Modelfile cannot hold in SYSTEM; use the '
                         "llama.cpp or Python exports instead.")
    model, n_ctx = _student_model(payload)
    head, tail = student_user_message("", "\x00").split("\x00")
    lines = _header(payload) + [
        f"# Create: ollama create pld-v{rs.id} -f <this file>. Send each input as the user message",
        f"#   {(head.lstrip() + '<input>' + tail)!r}",
        "# Ollama's chat template decides how SYSTEM and the message are joined; the app joins them as",
        "# SYSTEM + that message in one user turn (the .txt export is SYSTEM byte for byte). Ollama has no label",
        "# grammar: the answer is free text, so check it is one of the labels (or use the llama.cpp export).",
        f"FROM {model or './student.gguf'}",
        f'SYSTEM """{rs.prompt_text}"""',
        "PARAMETER temperature 0",
        f"PARAMETER num_ctx {n_ctx}",
        "PARAMETER num_predict 16", ""]
    return "\n".join(lines).encode("utf-8")


def render_llama_server(payload: dict[str, Any], grammar_name: str) -> bytes:
    rs = payload["rule_set"]
    model, n_ctx = _student_model(payload)
    head, tail = student_user_message(rs.prompt_text, "\x00").split("\x00")
    lines = ["#!/bin/sh"] + _header(payload) + [
        "# A llama.cpp server whose every answer is one of the labels (GBNF grammar beside this file).",
        "# Send one user message per input: the system prompt (the .txt export), a blank line, 'Input:', the",
        "# input, a blank line and 'Label:' - exactly what the app's student read:",
        "#   curl -s http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\",
        "#     -d '{\"messages\": [{\"role\": \"user\", \"content\": \"<system prompt>\\n\\nInput:\\n<input>\\n\\n"
        "Label:\"}]}'",
        f"# (the message is {len(head)} characters of prompt, the input, then {tail!r})",
        f"MODEL=${{1:-{shlex.quote(model or './student.gguf')}}}",
        f'exec llama-server -m "$MODEL" -c {n_ctx} --temp 0 -n 16 --grammar-file "$(dirname "$0")"/'
        f"{shlex.quote(grammar_name)} --host 127.0.0.1 --port 8080", ""]
    return "\n".join(lines).encode("utf-8")


def render_classify_script(payload: dict[str, Any]) -> bytes:
    rs = payload["rule_set"]
    model, n_ctx = _student_model(payload)
    mapping = payload["dataset"].get("mapping") or {}
    parts = [[p, c] for p, c in template_parts(mapping.get("template"), mapping.get("text_columns") or ["text"])]
    head, tail = student_user_message(rs.prompt_text, "\x00").split("\x00")
    config = "\n".join([
        "# PLD-CONFIG-BEGIN",
        f"SYSTEM_PROMPT = {rs.prompt_text!r}",
        f"LABELS = {list(rs.labels)!r}",
        f"MESSAGE_HEAD = {head!r}  # the user message is MESSAGE_HEAD + input + MESSAGE_TAIL",
        f"MESSAGE_TAIL = {tail!r}",
        f"INPUT_PARTS: list[list[object]] = {parts!r}  # [text, is_column]: how the input columns make the input",
        f"DEFAULT_MODEL = {model!r}",
        f"N_CTX = {n_ctx!r}",
        f"RULE_SET = {rs.id!r}",
        f"PROMPT_SHA256 = {rs.prompt_sha256!r}",
        "# PLD-CONFIG-END", ""])
    template = Path(__file__).with_name("deploy_classify.py").read_text(encoding="utf-8")
    script, n = _CONFIG.subn(lambda _m: config, template, count=1)
    if n != 1:
        raise RuntimeError("The classify-script template has lost its configuration block.")
    return script.encode("utf-8")


def deploy_files(fmt: str, payload: dict[str, Any], stem: str) -> list[tuple[str, bytes]]:
    """(file name, bytes) of one deployment format."""
    if fmt == "modelfile":
        return [(f"{stem}.Modelfile", render_modelfile(payload))]
    if fmt == "llama-server":
        grammar = f"{stem}.gbnf"
        return [(grammar, labels_grammar(payload["rule_set"].labels).encode("utf-8")),
                (f"{stem}-llama-server.sh", render_llama_server(payload, grammar))]
    if fmt == "classify-py":
        return [(f"{stem}-classify.py", render_classify_script(payload))]
    raise ValueError(f"Unknown deployment format '{fmt}'; choose from {', '.join(DEPLOY_FORMATS)}.")
