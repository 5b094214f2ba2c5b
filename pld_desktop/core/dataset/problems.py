"""Problems found in a file or in the chosen settings, and the wording helpers that phrase them."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

# How many row numbers / problems a message lists before saying "and N more".
MAX_LISTED = 10


@dataclass(frozen=True)
class Problem:
    """One thing wrong with (or worth knowing about) a file, phrased for a non-programmer."""

    message: str
    row: int | None = None  # 1-based line number as a spreadsheet shows it (header = 1, first data row = 2)
    column: str | None = None
    severity: str = "error"  # "error" blocks the import; "warning" does not

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


class DatasetError(Exception):
    """The file or the chosen settings cannot be imported; `problems` says exactly why."""

    def __init__(self, problems: Problem | str | Sequence[Problem]) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__(self._summary())

    def _summary(self) -> str:
        errors = [p for p in self.problems if p.is_error] or self.problems
        if not errors:
            return "The data could not be imported."
        if len(errors) == 1:
            return errors[0].message
        lines = [f"The data could not be imported ({len(errors)} problems):"]
        lines += [f"- {p.message}" for p in errors[:MAX_LISTED]]
        if len(errors) > MAX_LISTED:
            lines.append(f"and {len(errors) - MAX_LISTED} more.")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._summary()




# --------------------------------------------------------------------------------------------------------------------
# Small message helpers
# --------------------------------------------------------------------------------------------------------------------


def rows_phrase(rows: Sequence[int], limit: int = MAX_LISTED) -> str:
    """'Row 5', 'Rows 5 and 9', 'Rows 5, 9, 12 and 40 more'."""
    if len(rows) == 1:
        return f"Row {rows[0]}"
    shown = [str(r) for r in rows[:limit]]
    rest = len(rows) - len(shown)
    if rest > 0:
        return f"Rows {', '.join(shown)} and {rest} more"
    return f"Rows {', '.join(shown[:-1])} and {shown[-1]}"


def quoted_list(names: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    if len(names) > limit:
        shown += f" and {len(names) - limit} more"
    return shown


def suggest_column(name: str, choices: Sequence[str]) -> str:
    lowered = {c.lower().strip(): c for c in choices}
    if name.lower().strip() in lowered:
        return f" Did you mean '{lowered[name.lower().strip()]}'?"
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def snippet(text: str, width: int = 50) -> str:
    text = text.replace("\r", " ").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


