"""The local teacher's GBNF grammar, built from a request's JSON schema with every user literal escaped.

llama-cpp-python's own schema converter escapes only `"`, CR and LF in literals (a label with `\\` or `"` gives
an unparsable grammar, which llama.cpp answers with a NULL sampler and a segfault) and its string rule lets raw
control characters into JSON strings. This converter covers the subset of JSON Schema that pydantic emits for
the teacher schemas; every literal goes through `gbnf_literal`, which writes anything outside printable ASCII as
a `\\x`/`\\u`/`\\U` escape, so no label or text can end a literal or inject a rule.

A `rule` property with a grammar hint is written "If <condition>, answer <label>." where the condition is whole
words with no character cap, so it is never cut mid-word and always ends the sentence (the reply is bounded in
tokens by max_tokens; a reply cut there, or a rule at the word bound, is retried, never stored); an object with a
`rule` and a `label` has its `label` fixed to the label its rule answers, so the label the teacher is given
(extraction, merge) is a literal.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["RULE_MAX_WORDS", "gbnf_literal", "hint_labels", "rule_hit_bound", "schema_grammar"]

# JSON string content: no raw quote, backslash or control character; escapes as JSON allows them.
_JSON_CHAR = r'[^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
# A rule's condition: words of plain characters (no escapes, so it reads the same in JSON and as text) joined
# by single spaces. A tiny model rambles until max_tokens without a bound, so the condition has at most
# RULE_MAX_WORDS words: it can only end at a word, and a rule that reaches the bound is reported as cut
# (`rule_hit_bound`) and retried, never stored. The condition is one clause: no comma, full stop, colon or
# semicolon, so where a small model would go on to a second sentence the grammar's ", answer <label>." ends it
# (without this SmolLM2 ran to the word bound on every demo item and phase 1 gave up on all of them).
_CONDITION_CHAR = r'[^ ",.;:!?\\\x00-\x1F]'
RULE_MAX_WORDS = 30
_LIST_MAX_ITEMS = 3  # items of another list of objects (conflicting pairs): three reasons fit max_tokens
_LIST_MAX_NUMBERS = 16  # items of a list of numbers (the source rules a rewritten rule comes from)
_WORD_MAX_CHARS = 40
_PRIMITIVES = {
    "ws": '" "?',
    "json-char": _JSON_CHAR,
    "json-string": '"\\"" json-char* "\\"" ws',
    "condition-char": _CONDITION_CHAR,
    "condition-word": f"condition-char{{1,{_WORD_MAX_CHARS}}}",
    "condition": f'condition-word (" " condition-word){{1,{RULE_MAX_WORDS - 1}}}',
    "integer": '"-"? ([0-9] | [1-9] [0-9] [0-9]? [0-9]? [0-9]? [0-9]? [0-9]? [0-9]? [0-9]?) ws',
    "number": '"-"? [0-9]+ ("." [0-9]+)? ([eE] [-+]? [0-9]+)? ws',
    "boolean": '("true" | "false") ws',
    "null": '"null" ws',
    "value": "object | array | json-string | number | boolean | null",
    "object": '"{" ws (json-string ":" ws value ("," ws json-string ":" ws value)*)? "}" ws',
    "array": '"[" ws (value ("," ws value)*)? "]" ws',
}


def gbnf_literal(text: str) -> str:
    """A GBNF string literal that matches exactly `text` (code point for code point)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02X}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04X}")
        else:
            out.append(f"\\U{code:08X}")
    return '"' + "".join(out) + '"'


def _json_content(text: str) -> str:
    """`text` as it reads inside a JSON string (without the quotes)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


_ANSWER = re.compile(r"answer \((.*)\)\[\.\]\$$", re.DOTALL)


def hint_labels(patterns: dict[str, str]) -> tuple[str, ...] | None:
    """The labels a rule may answer, from the core's grammar hints: the `rule_labels` entry (a JSON list, for
    any label) or else the alternatives of the `rule` regex (`... answer (a|b)[.]$`, plain labels only)."""
    if "rule_labels" in patterns:
        labels = json.loads(patterns["rule_labels"])
        return tuple(str(lab) for lab in labels)
    regex = patterns.get("rule")
    if regex is None:
        return None
    match = _ANSWER.search(regex)
    if match is None:
        return None
    labels, current, chars = [], [], iter(match.group(1))
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == "|":
            labels.append("".join(current))
            current = []
        else:
            current.append(ch)
    labels.append("".join(current))
    return tuple(labels)


class _Builder:
    def __init__(self, schema: dict[str, Any], max_chars: int, rule_labels: tuple[str, ...] | None) -> None:
        self.root = schema
        self.max_chars = max_chars
        self.rule_labels = rule_labels
        self.rules: dict[str, str] = {}
        self.refs: dict[tuple[str, str | None], str] = {}

    @staticmethod
    def primitive(name: str) -> str:
        # Every primitive is always emitted (llama.cpp accepts unused rules), so none can be missing.
        return name

    def add(self, hint: str, body: str) -> str:
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", hint).strip("-").lower() or "r"
        name, n = base, 1
        while name in self.rules or name in _PRIMITIVES or name == "root":
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        return name

    def resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise ValueError(f"only local $ref is supported, got {ref!r}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        if not isinstance(node, dict):
            raise ValueError(f"$ref {ref!r} does not name a schema object")
        return node

    def string_rule(self, schema: dict[str, Any], name: str) -> str:
        low = int(schema.get("minLength", 0))
        high = int(schema.get("maxLength", self.max_chars))
        high = max(high, low)
        return self.add(name, f'"\\"" {self.primitive("json-char")}{{{low},{high}}} "\\"" ws')

    def rule_string(self, label: str | None) -> str:
        answers = self.rule_labels if label is None else (label,)
        if not answers:
            return self.add("rule-any", f'"\\"" {self.primitive("json-char")}* "\\"" ws')
        alts = " | ".join(gbnf_literal(f", answer {_json_content(lab)}.") for lab in answers)
        return self.add("rule", f'"\\"If " {self.primitive("condition")} ({alts}) "\\"" ws')

    def visit(self, schema: Any, name: str, label: str | None = None) -> str:
        if not isinstance(schema, dict) or not schema:
            return self.primitive("value")
        if "$ref" in schema:
            ref = schema["$ref"]
            ref_key = (ref, label)
            if ref_key not in self.refs:
                self.refs[ref_key] = self.visit(self.resolve(ref), ref.rsplit("/", 1)[-1], label)
            return self.refs[ref_key]
        if "const" in schema:
            return self.add(name, gbnf_literal(json.dumps(schema["const"], ensure_ascii=False)) + " ws")
        if "enum" in schema:
            values = schema["enum"]
            alts = " | ".join(gbnf_literal(json.dumps(v, ensure_ascii=False)) for v in values)
            return self.add(name, f"({alts}) ws")
        for combinator in ("anyOf", "oneOf"):
            if combinator in schema:
                options = [self.visit(s, f"{name}-{i}", label) for i, s in enumerate(schema[combinator])]
                return self.add(name, " | ".join(options))
        kind = schema.get("type")
        if isinstance(kind, list):
            options = [self.visit({**schema, "type": t}, f"{name}-{t}", label) for t in kind]
            return self.add(name, " | ".join(options))
        if kind == "object" or "properties" in schema:
            return self.object_rule(schema, name)
        if kind == "array":
            items = schema.get("items", {})
            item = self.visit(items, f"{name}-item")
            target = self.resolve(items["$ref"]) if isinstance(items, dict) and "$ref" in items else items
            if self.rule_labels and isinstance(target, dict) and "rule" in (target.get("properties") or {}):
                # A list of rules: one at least, and at most one per label plus one, so a looping model stops
                # within max_tokens (SmolLM2 repeats one rule until the bound otherwise).
                most = len(self.rule_labels) + 1
                return self.add(name, f'"[" ws {item} ("," ws {item}){{0,{most - 1}}} "]" ws')
            # Any other list (conflicting pairs, source numbers) is bounded too, for the same reason: a small
            # model listed conflict pairs until max_tokens and the reply was cut mid-string.
            short = isinstance(target, dict) and target.get("type") in ("integer", "number", "boolean")
            most = int(schema.get("maxItems", _LIST_MAX_NUMBERS if short else _LIST_MAX_ITEMS))
            return self.add(name, f'"[" ws ({item} ("," ws {item}){{0,{max(most - 1, 0)}}})? "]" ws')
        if kind == "string":
            return self.string_rule(schema, name)
        if kind in ("integer", "number", "boolean", "null"):
            return self.primitive(kind)
        return self.primitive("value")

    def object_rule(self, schema: dict[str, Any], name: str) -> str:
        props: dict[str, Any] = schema.get("properties") or {}
        if not props:
            return self.primitive("object")
        label_enum = props.get("label", {}).get("enum") if isinstance(props.get("label"), dict) else None
        paired = "rule" in props and self.rule_labels is not None and label_enum is not None
        if not paired:
            return self.add(name, self.object_body(props, name, None))
        # One alternative per label the rule may answer: its `label` is that label as a literal.
        answers = [lab for lab in self.rule_labels or () if lab in (label_enum or ())] or list(self.rule_labels or ())
        alts = [self.object_body(props, f"{name}-{i}", lab) for i, lab in enumerate(answers)]
        return self.add(name, " | ".join(f"({a})" for a in alts))

    def object_body(self, props: dict[str, Any], name: str, label: str | None) -> str:
        parts = []
        for i, (prop, sub) in enumerate(props.items()):
            if prop == "rule" and self.rule_labels is not None and isinstance(sub, dict) \
                    and sub.get("type") == "string":
                value = self.rule_string(label)
            elif prop == "label" and label is not None:
                value = self.add(f"{name}-label", gbnf_literal(json.dumps(label, ensure_ascii=False)) + " ws")
            else:
                value = self.visit(sub, f"{name}-{prop}")
            key = gbnf_literal(json.dumps(prop, ensure_ascii=False))
            parts.append(("" if i == 0 else '"," ws ') + f"{key} ws \":\" ws {value}")
        return '"{" ws ' + " ".join(parts) + ' "}" ws'

    def grammar(self) -> str:
        root = self.visit(self.root, "root-value")
        lines = [f"root ::= {root}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        lines += [f"{name} ::= {body}" for name, body in _PRIMITIVES.items()]
        return "\n".join(lines) + "\n"


def rule_hit_bound(reply_text: str) -> bool:
    """Whether a reply holds a rule whose condition reached RULE_MAX_WORDS words (so it may be cut short)."""
    try:
        data = json.loads(reply_text)
    except ValueError:
        return False

    def rules(node: Any) -> Any:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "rule" and isinstance(value, str):
                    yield value
                else:
                    yield from rules(value)
        elif isinstance(node, list):
            for value in node:
                yield from rules(value)

    for rule in rules(data):
        if rule.startswith("If ") and ", answer " in rule:
            words = rule[3:rule.rindex(", answer ")].split(" ")
            if len(words) >= RULE_MAX_WORDS or max(len(w) for w in words) >= _WORD_MAX_CHARS:
                return True
    return False


def schema_grammar(schema: dict[str, Any], *, max_chars: int = 320, patterns: dict[str, str] | None = None) -> str:
    """The GBNF grammar of replies to a request: `schema` (a pydantic JSON schema) with free strings bounded to
    `max_chars` characters, and `patterns` the request's grammar hints (see `hint_labels`)."""
    return _Builder(schema, max_chars, hint_labels(patterns or {})).grammar()
