"""The input-text template: `{column}` placeholders rendered into each row's text."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from pld_desktop.core.dataset.problems import (
    DatasetError,
    Problem,
)

# --------------------------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------------------------

_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|\{|\}")


def _parse_template(template: str) -> list[tuple[str, bool]]:
    """Split a template into (literal text, False) and (column name, True) parts. '{{' and '}}' are literal braces."""
    parts: list[tuple[str, bool]] = []
    literal: list[str] = []
    pos = 0
    for match in _TEMPLATE_TOKEN.finditer(template):
        literal.append(template[pos: match.start()])
        pos = match.end()
        token = match.group(0)
        if token == "{{":
            literal.append("{")
        elif token == "}}":
            literal.append("}")
        elif token in ("{", "}"):
            raise DatasetError(Problem(
                f"The template has a '{token}' without its partner at character {match.start() + 1}. Put column "
                "names in braces like {text}; write {{ or }} for a literal brace."))
        else:
            name = (match.group(1) or "").strip()
            if not name:
                raise DatasetError(Problem(
                    "The template has empty braces {}. Put a column name inside them, like {text}."))
            if literal:
                parts.append(("".join(literal), False))
                literal = []
            parts.append((name, True))
    literal.append(template[pos:])
    if any(literal):
        parts.append(("".join(literal), False))
    return parts


def template_parts(template: str | None, text_columns: Sequence[str]) -> list[tuple[str, bool]]:
    if template is not None and template.strip():
        return _parse_template(template)
    columns = list(text_columns)
    if len(columns) == 1:
        return [(columns[0], True)]
    parts: list[tuple[str, bool]] = []
    for i, column in enumerate(columns):
        parts.append((("\n" if i else "") + f"{column}: ", False))
        parts.append((column, True))
    return parts


def _normalise_text(value: str) -> str:
    return value.replace("\r\n", "\n").replace("\r", "\n").strip()


def render_template(template: str | None, text_columns: Sequence[str], record: Mapping[str, str]) -> str:
    """The input text of one record: the template with {column} filled in, or the text column(s) as-is.

    Without a template one column is used as it is, and several become "column: value" lines. Values are
    stripped of surrounding whitespace and line ends normalised to "\\n"; the result is stripped too.
    This is exactly how build_dataset renders every row.
    """
    out: list[str] = []
    for part, is_column in template_parts(template, text_columns):
        if not is_column:
            out.append(part)
            continue
        if part not in record:
            raise DatasetError(Problem(
                f"The template uses the column '{part}', which this record does not have.", column=part))
        value = record[part]
        out.append("" if value is None or (isinstance(value, float) and math.isnan(value))
                   else _normalise_text(str(value)))
    return "".join(out).strip()


