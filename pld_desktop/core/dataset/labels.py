"""Look-alike labels: spellings that differ only by case, Unicode form or invisible characters."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from pld_desktop.core.dataset.problems import (
    Problem,
    rows_phrase,
)

# --------------------------------------------------------------------------------------------------------------------
# Look-alike labels
# --------------------------------------------------------------------------------------------------------------------
LABEL_MERGES = ("nfc", "casefold")
# Zero-width, joiner, soft hyphen, BOM and bidi control characters: invisible, yet they make a label different.
_INVISIBLE = re.compile("[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def label_form(label: str, how: str) -> str:
    """`label` as compared under a merge: NFC without invisible characters, case-folded for "casefold"."""
    text = unicodedata.normalize("NFC", _INVISIBLE.sub("", label)).strip()
    return text.casefold() if how == "casefold" else text


def merged_labels(labels: Sequence[str], how: str) -> dict[str, str]:
    """Each label -> the label it is merged into: the most frequent spelling among its look-alikes (ties to
    a spelling without invisible characters, then the alphabetically first). A label without look-alikes
    keeps its spelling."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    groups: dict[str, list[str]] = {}
    for label in counts:
        if label:
            groups.setdefault(label_form(label, how), []).append(label)
    target = {key: min(members, key=lambda lab: (-counts[lab], label_form(lab, "nfc") != lab, lab))
              for key, members in groups.items()}
    return {label: (target[label_form(label, how)] if label else label) for label in counts}


def visible_label(label: str) -> str:
    """A label as text that shows what sets it apart: invisible, control and combining characters as \\uXXXX."""
    out = []
    for ch in label:
        if _INVISIBLE.match(ch) or unicodedata.category(ch) in ("Cc", "Cf", "Mn", "Zl", "Zp", "Co", "Cs"):
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return "".join(out)


def lookalike_label_warnings(labels: Sequence[str], rows: Sequence[int], column: str | None,
                             merged: str | None = None) -> list[Problem]:
    """A warning per group of labels that differ only by case, Unicode normalisation or invisible characters,
    naming the rows of each spelling and how to merge them (never done without being asked)."""
    where: dict[str, list[int]] = {}
    for label, row in zip(labels, rows):
        if label:
            where.setdefault(label, []).append(int(row))
    groups: dict[str, list[str]] = {}
    for label in where:
        groups.setdefault(label_form(label, "casefold"), []).append(label)
    problems = []
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda lab: where[lab][0])
        same_nfc = len({label_form(lab, "nfc") for lab in members}) == 1
        why = ("differ only by Unicode form or invisible (zero-width or bidi) characters" if same_nfc
               else "differ only by letter case" + ("" if merged == "nfc" else " (or also by Unicode form)"))
        listed = ", ".join(f"'{visible_label(lab)}' ({rows_phrase(where[lab]).lower()})" for lab in members)
        how = "nfc" if same_nfc else "casefold"
        problems.append(Problem(
            f"The labels {listed} {why}; they are kept as {len(members)} separate labels. To merge them into one, "
            f"import again with --merge-labels {how} (the import dialog offers the same choice).",
            row=where[members[1]][0], column=column))
    return problems


