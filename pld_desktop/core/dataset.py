"""Import a user's labelled CSV: read it safely, check it, render each row's input text and assign train/dev/test."""

from __future__ import annotations

import bisect
import codecs
import csv
import difflib
import hashlib
import io
import json
import math
import os
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "MAX_CELL_CHARS",
    "ColumnMapping",
    "DatasetError",
    "DatasetRow",
    "ImportedDataset",
    "Problem",
    "SplitSettings",
    "assign_splits",
    "build_dataset",
    "load_dataset",
    "preview_csv",
    "read_csv",
    "render_template",
]

MAX_CELL_CHARS = 100_000
"""A cell longer than this many characters is reported as a problem."""

SPLITS: tuple[str, str, str] = ("train", "dev", "test")

# How many row numbers / problems a message lists before saying "and N more".
_MAX_LISTED = 10
# How many bytes the import dialog's preview reads from the start of the file.
_PREVIEW_BYTES = 1 << 20
# Name of the index read_csv gives its DataFrame: each row's 1-based line number as a spreadsheet shows it.
_SOURCE_ROW = "source_row"
# Key in DataFrame.attrs under which read_csv leaves warnings for build_dataset.
_ATTRS_WARNINGS = "pld_dataset_warnings"
# Requested and achieved split proportions further apart than this (absolute) produce a warning.
_PROPORTION_TOLERANCE = 0.05

_SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train", "trn": "train",
    "dev": "dev", "development": "dev", "validation": "dev", "val": "dev", "valid": "dev",
    "test": "test", "testing": "test", "tst": "test",
}

_SAVE_AS_UTF8 = (
    "Save it as UTF-8 (in Excel: File > Save As > 'CSV UTF-8 (Comma delimited)'; in LibreOffice: "
    "tick 'Edit filter settings' and choose 'Unicode (UTF-8)'; in a text editor: save with encoding UTF-8) "
    "and import it again."
)


# --------------------------------------------------------------------------------------------------------------------
# Public value types
# --------------------------------------------------------------------------------------------------------------------


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
        lines += [f"- {p.message}" for p in errors[:_MAX_LISTED]]
        if len(errors) > _MAX_LISTED:
            lines.append(f"and {len(errors) - _MAX_LISTED} more.")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._summary()


def _json_error(what: str, detail: str) -> DatasetError:
    return DatasetError(Problem(f"The saved {what} is not valid: {detail}."))


@dataclass(frozen=True)
class ColumnMapping:
    """Which CSV columns hold the input text, the label and the optional id, split and group."""

    text_columns: tuple[str, ...]
    label_column: str
    template: str | None = None
    id_column: str | None = None
    split_column: str | None = None
    group_column: str | None = None
    keep_source_split: bool = False
    # Look-alike labels merged at import, only when asked: None (kept apart and reported), "nfc" (same text
    # after Unicode NFC and without zero-width/bidi characters) or "casefold" (also ignoring letter case).
    merge_labels: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text_columns": list(self.text_columns),
            "label_column": self.label_column,
            "template": self.template,
            "id_column": self.id_column,
            "split_column": self.split_column,
            "group_column": self.group_column,
            "keep_source_split": self.keep_source_split,
        }
        if self.merge_labels is not None:  # absent otherwise, so older mappings read and hash the same
            out["merge_labels"] = self.merge_labels
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ColumnMapping:
        if not isinstance(d, Mapping):
            raise _json_error("column mapping", "it is not a JSON object")
        text_columns = d.get("text_columns")
        if isinstance(text_columns, str):
            text_columns = [text_columns]
        if not isinstance(text_columns, (list, tuple)) or not all(isinstance(c, str) for c in text_columns):
            raise _json_error("column mapping", "'text_columns' must be a list of column names")
        label = d.get("label_column")
        if not isinstance(label, str):
            raise _json_error("column mapping", "'label_column' must be a column name")
        optional: dict[str, str | None] = {}
        for key in ("template", "id_column", "split_column", "group_column"):
            value = d.get(key)
            if value is not None and not isinstance(value, str):
                raise _json_error("column mapping", f"'{key}' must be text or null")
            optional[key] = value
        merge = d.get("merge_labels")
        if merge is not None and merge not in LABEL_MERGES:
            raise _json_error("column mapping", f"'merge_labels' must be one of {', '.join(LABEL_MERGES)} or null")
        return cls(
            text_columns=tuple(text_columns),
            label_column=label,
            keep_source_split=bool(d.get("keep_source_split", False)),
            merge_labels=merge,
            **optional,
        )


@dataclass(frozen=True)
class SplitSettings:
    """Train/dev/test proportions and the seed that makes the split reproducible."""

    train: float = 0.6
    dev: float = 0.2
    test: float = 0.2
    seed: int = 13

    def ratios(self) -> tuple[float, float, float]:
        return (float(self.train), float(self.dev), float(self.test))

    def to_json(self) -> dict[str, Any]:
        return {"train": self.train, "dev": self.dev, "test": self.test, "seed": self.seed}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SplitSettings:
        if not isinstance(d, Mapping):
            raise _json_error("split settings", "it is not a JSON object")
        default = cls()
        try:
            return cls(
                train=float(d.get("train", default.train)),
                dev=float(d.get("dev", default.dev)),
                test=float(d.get("test", default.test)),
                seed=int(d.get("seed", default.seed)),
            )
        except (TypeError, ValueError) as exc:
            raise _json_error("split settings", "the proportions must be numbers and the seed a whole number") from exc


@dataclass
class DatasetRow:
    """One imported example."""

    source_row: int  # 1-based line number as a spreadsheet shows it
    ext_id: str  # the id column's value, or str(source_row) when there is no id column
    text: str  # rendered through the template
    label: str
    split: str  # "train" | "dev" | "test"
    group: str | None


@dataclass
class ImportedDataset:
    """A checked, split dataset ready to be stored in a project."""

    rows: list[DatasetRow]
    labels: list[str]
    label_counts: dict[str, int]
    columns: list[str]
    mapping: ColumnMapping
    split_settings: SplitSettings
    source_sha256: str
    encoding: str
    warnings: list[Problem] = field(default_factory=list)

    def dataset_hash(self) -> str:
        """A sha256 over (ext_id, text, label, split) of every row, in order; equal data gives an equal hash."""
        digest = hashlib.sha256()
        for row in self.rows:
            digest.update(json.dumps([row.ext_id, row.text, row.label, row.split], ensure_ascii=False).encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()

    def split_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(SPLITS, 0)
        for row in self.rows:
            counts[row.split] += 1
        return counts


# --------------------------------------------------------------------------------------------------------------------
# Small message helpers
# --------------------------------------------------------------------------------------------------------------------


def _rows_phrase(rows: Sequence[int], limit: int = _MAX_LISTED) -> str:
    """'Row 5', 'Rows 5 and 9', 'Rows 5, 9, 12 and 40 more'."""
    if len(rows) == 1:
        return f"Row {rows[0]}"
    shown = [str(r) for r in rows[:limit]]
    rest = len(rows) - len(shown)
    if rest > 0:
        return f"Rows {', '.join(shown)} and {rest} more"
    return f"Rows {', '.join(shown[:-1])} and {shown[-1]}"


def _quoted_list(names: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    if len(names) > limit:
        shown += f" and {len(names) - limit} more"
    return shown


def _suggest(name: str, choices: Sequence[str]) -> str:
    lowered = {c.lower().strip(): c for c in choices}
    if name.lower().strip() in lowered:
        return f" Did you mean '{lowered[name.lower().strip()]}'?"
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _snippet(text: str, width: int = 50) -> str:
    text = text.replace("\r", " ").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------------------------------------------------
# Reading: bytes -> text -> DataFrame
# --------------------------------------------------------------------------------------------------------------------

_MAGIC: list[tuple[bytes, str]] = [
    (b"PK\x03\x04", "an Excel workbook or another zip archive (.xlsx, .zip, .docx)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old-style Excel workbook (.xls) or another Office document"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"PAR1", "a Parquet file"),
]

_BOMS: list[tuple[bytes, str]] = [  # longest first: the UTF-32 LE BOM starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]

# Bytes that do not occur in text files (everything below 0x20 except tab, LF, VT, FF, CR, and DEL); NUL counted too.
_BINARY_BYTES = bytes([*range(0, 9), *range(14, 32), 127])


def _read_bytes(path: str | os.PathLike[str], limit: int | None = None) -> tuple[bytes, int]:
    """The file's bytes (at most `limit`) and its full size; every OS failure becomes a DatasetError."""
    p = Path(path)
    try:
        if p.is_dir():
            raise DatasetError(Problem(f"'{p}' is a folder, not a file. Choose a CSV file inside it."))
        if p.exists() and not p.is_file():
            # A pipe, socket or device would block or never end; only regular files are read.
            raise DatasetError(Problem(f"'{p}' is not a regular file (a pipe or device?). Choose a CSV file."))
        with open(p, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = fh.read() if limit is None else fh.read(limit)
        return data, max(size, len(data))
    except DatasetError:
        raise
    except FileNotFoundError as exc:
        raise DatasetError(Problem(
            f"The file '{p}' does not exist. It may have been moved, renamed or deleted.")) from exc
    except IsADirectoryError as exc:
        raise DatasetError(Problem(f"'{p}' is a folder, not a file. Choose a CSV file inside it.")) from exc
    except PermissionError as exc:
        raise DatasetError(Problem(
            f"The file '{p}' cannot be opened: you do not have permission to read it. "
            "Check the file's permissions, or copy it to a folder you own."
        )) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DatasetError(Problem(f"The file '{p}' cannot be read: {reason}.")) from exc


def _line_of_char(text: str, pos: int) -> int:
    """1-based physical line of character `pos` (LF, CRLF or lone CR line ends)."""
    prefix = text[:pos]
    if "\n" in prefix:
        return prefix.count("\n") + 1
    return prefix.count("\r") + 1


def _looks_like_utf16_without_bom(head: bytes) -> str | None:
    """'utf-16-le' / 'utf-16-be' when mostly-ASCII UTF-16 text without a BOM, else None."""
    if len(head) < 4:
        return None
    even, odd = head[0::2], head[1::2]
    even_nul = even.count(0) / len(even)
    odd_nul = odd.count(0) / len(odd)
    if odd_nul > 0.7 and even_nul < 0.1:
        return "utf-16-le"
    if even_nul > 0.7 and odd_nul < 0.1:
        return "utf-16-be"
    return None


def _not_text(what: str | None = None) -> DatasetError:
    kind = f" It looks like {what}." if what else ""
    return DatasetError(Problem(
        "This file does not look like a text CSV file." + kind +
        " Open it in your spreadsheet program and save it as 'CSV UTF-8 (Comma delimited)', then import that file."
    ))


def _utf8_error(raw: bytes) -> DatasetError:
    """A message naming the first undecodable byte, its line, and how many lines have such bytes."""
    text = raw.decode("utf-8", errors="surrogateescape")
    bad = [m.start() for m in re.finditer("[\udc80-\udcff]", text)]
    if not bad:  # cannot happen (strict decoding failed), but never show a traceback
        return DatasetError(Problem("The file is not valid UTF-8. " + _SAVE_AS_UTF8))
    line_ends = [m.start() for m in re.finditer("\r\n|\n|\r", text)]
    bad_lines = sorted({bisect.bisect_right(line_ends, pos) + 1 for pos in bad})
    first = bad[0]
    byte = ord(text[first]) - 0xDC00
    line = bad_lines[0]
    start = line_ends[line - 2] + 1 if line >= 2 else 0
    end = line_ends[line - 1] if line - 1 < len(line_ends) else len(text)
    context = text[start:end].encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    others = ""
    if len(bad_lines) > 1:
        more = [str(n) for n in bad_lines[1:_MAX_LISTED]]
        extra = len(bad_lines) - 1 - len(more)
        others = f" Other lines with such bytes: {', '.join(more)}" + (f" and {extra} more" if extra > 0 else "") + "."
    return DatasetError(Problem(
        f"The file is not valid UTF-8: byte 0x{byte:02X} on line {line} cannot be decoded "
        f"(the line reads \"{_snippet(context, 80)}\").{others} The file was probably saved in an older encoding "
        f"such as Windows-1252 or Latin-1, and importing it as such could silently change characters. " + _SAVE_AS_UTF8,
        row=None,
    ))


def _nul_error(text: str) -> DatasetError:
    positions = [m.start() for m in re.finditer("\x00", text[: 10 * 1024 * 1024])] or [text.find("\x00")]
    lines = sorted({_line_of_char(text, p) for p in positions[:1000]})
    where = f"line {lines[0]}" if len(lines) == 1 else f"lines {', '.join(map(str, lines[:_MAX_LISTED]))}" + (
        f" and {len(lines) - _MAX_LISTED} more" if len(lines) > _MAX_LISTED else "")
    return DatasetError(Problem(
        f"The file contains a NUL character (an invisible zero byte) on {where}. Text CSV files never contain it; "
        "the file may be damaged or partly binary. Open it in a spreadsheet program and save it again as "
        "'CSV UTF-8 (Comma delimited)'."
    ))


def _decode(raw: bytes, final: bool = True) -> tuple[str, str]:
    """Decode the file's bytes: UTF-8, UTF-8 with BOM, UTF-16/32 with BOM (or BOM-less ASCII-range UTF-16).

    With final=False (a preview of the file's beginning) an incomplete character at the end is dropped.
    """
    for magic, what in _MAGIC:
        if raw.startswith(magic):
            raise _not_text(what)
    encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), None)
    head = raw[:8192]
    if encoding is None and b"\x00" in head:
        encoding = _looks_like_utf16_without_bom(head)
    if encoding is None:
        # Terminal colour codes (ESC [ ... m) pasted into a cell are text, not a sign of a binary file.
        binary = sum(re.sub(rb"\x1b\[[0-9;]*[A-Za-z]", b"", head).count(bytes([b])) for b in _BINARY_BYTES)
        if binary >= 8 and binary / len(head) > 0.05:  # a stray NUL in a tiny file gets its own message
            raise _not_text()
        encoding = "utf-8"
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        text = decoder.decode(raw, final=final)
    except UnicodeDecodeError as exc:
        if encoding == "utf-8":
            invalid = raw[:8192].decode("utf-8", errors="replace").count("\ufffd")
            if invalid > 0.2 * max(1, len(raw[:8192])):
                raise _not_text() from exc
            raise _utf8_error(raw) from exc
        prefix = raw[: exc.start].decode(encoding, errors="replace")
        line = _line_of_char(prefix, len(prefix))
        name = encoding.upper().replace("-SIG", "")
        raise DatasetError(Problem(
            f"The file starts like a {name} text file, but bytes on line {line} (near byte {exc.start}) cannot be "
            f"decoded as {name}; the file may be damaged or cut off. " + _SAVE_AS_UTF8
        )) from exc
    if text.startswith("\ufeff"):  # a BOM left by a decoder that keeps it, or a doubled BOM
        text = text.lstrip("\ufeff")
    if "\x00" in text:
        raise _nul_error(text)
    return text, encoding


_SEP_HINT = re.compile(r'\A"?sep=(\\t|[^\r\n"])"?[ \t]*,*(?:\r\n|\n|\r|\Z)', re.IGNORECASE)


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
        listed = ", ".join(f"'{visible_label(lab)}' ({_rows_phrase(where[lab]).lower()})" for lab in members)
        how = "nfc" if same_nfc else "casefold"
        problems.append(Problem(
            f"The labels {listed} {why}; they are kept as {len(members)} separate labels. To merge them into one, "
            f"import again with --merge-labels {how} (the import dialog offers the same choice).",
            row=where[members[1]][0], column=column))
    return problems


def _sniff_delimiter(text: str) -> str:
    """Comma, unless the header line has no comma but has tabs or semicolons (European Excel, TSV)."""
    for line in text[:65536].splitlines():
        if line.strip():
            counts = {d: line.count(d) for d in (",", "\t", ";")}
            best = max(counts, key=lambda d: counts[d])  # ties keep the order above: comma first
            return best if counts[best] > 0 else ","
    return ","


def _parse(text: str, *, max_rows: int | None = None, truncated: bool = False) -> pd.DataFrame:
    """Parse decoded CSV text into a str DataFrame indexed by spreadsheet line number; raise on structural errors."""
    if not text.strip():
        raise DatasetError(Problem("The file is empty: it contains no text (only blank lines or spaces)."))
    sep_line = _SEP_HINT.match(text)
    if sep_line:  # Excel's "sep=;" first line: it names the separator and is not a row (Excel does not show it)
        delimiter = "\t" if sep_line.group(1) == "\\t" else sep_line.group(1)
        text = text[sep_line.end():]
    else:
        delimiter = _sniff_delimiter(text)
    stream = io.StringIO(text, newline="")
    reader = csv.reader(stream, delimiter=delimiter)
    header: list[str] | None = None
    n_columns = 0
    data: list[list[str]] = []
    source_rows: list[int] = []
    ragged: list[tuple[int, int, int, int]] = []  # (row, n_values, first line, last line)
    record = 0  # spreadsheet row number of the last record read
    last_line = 0  # physical line the last record ended on
    last_start_pos = 0  # character offset where the last record started
    position = 0
    ended = False
    try:
        for values in reader:
            record += 1
            first_line, last_line = last_line + 1, reader.line_num
            last_start_pos, position = position, stream.tell()
            if header is None:
                if any(v.strip() for v in values):
                    header = values
                    n_columns = len(values)
                continue
            if len(values) != n_columns:
                if len(values) > n_columns:
                    if any(v.strip() for v in values[n_columns:]):
                        ragged.append((record, len(values), first_line, last_line))
                        continue
                    values = values[:n_columns]
                else:
                    values = values + [""] * (n_columns - len(values))
            if not any(values):
                continue  # blank line or a row of empty cells
            data.append(values)
            source_rows.append(record)
            if max_rows is not None and len(data) >= max_rows + (1 if truncated else 0):
                break
        else:
            ended = True
    except csv.Error as exc:
        row, line = record + 1, last_line + 1
        if "field larger than field limit" in str(exc):
            raise DatasetError(Problem(
                f"Row {row} (starting on line {line} of the file) has a value longer than {csv.field_size_limit():,} "
                "characters. This usually means a quotation mark (\") opened there is never closed.",
                row=row,
            )) from exc
        raise DatasetError(Problem(f"The file cannot be read as CSV near line {line}: {exc}.", row=row)) from exc

    if ended and truncated and source_rows and source_rows[-1] == record:
        data.pop()  # the preview chunk may have cut the last record short
        source_rows.pop()
    elif ended and not truncated and record:
        tail = text[last_start_pos:]
        if '"' in tail:
            try:
                for _ in csv.reader(io.StringIO(tail, newline=""), delimiter=delimiter, strict=True):
                    pass
            except csv.Error as exc:
                if "unexpected end of data" in str(exc):
                    start_line = _line_of_char(text, last_start_pos)
                    raise DatasetError(Problem(
                        f"Row {record} (line {start_line} of the file) opens a quotation mark (\") that is never "
                        "closed, so everything after it up to the end of the file would be read as one value. "
                        "Add the missing closing quotation mark, or remove the stray one.",
                        row=record,
                    )) from exc

    if header is None:
        raise DatasetError(Problem("The file is empty: it contains no text (only blank lines or spaces)."))

    problems: list[Problem] = []
    if len(ragged) > 1 and not data and len({n for _, n, *_ in ragged}) == 1:
        # Every row is one shape: the header, not the rows, is probably wrong (e.g. an unnamed index column).
        problems.append(Problem(
            f"Every row has {ragged[0][1]} values but the header names only {n_columns} columns. Add the missing "
            "column name(s) to the header (line 1), or check that the header uses the same separator as the rows.",
            row=1))
        ragged = []
    for row, n_values, first_line, end_line in ragged[:_MAX_LISTED]:
        lines = f"line {first_line}" if first_line == end_line else f"lines {first_line}-{end_line}"
        hint = "A value that contains a comma is probably missing its quotation marks." if delimiter == "," else \
            f"A value that contains the separator ({'tab' if delimiter == chr(9) else delimiter}) is probably " \
            "missing its quotation marks."
        if first_line != end_line:
            hint += " This row spans several lines of the file, so a quotation mark may be missing or extra."
        problems.append(Problem(
            f"Row {row} ({lines} of the file) has {n_values} values but the header has {n_columns} columns. {hint}",
            row=row,
        ))
    if len(ragged) > _MAX_LISTED:
        more = [r for r, *_ in ragged[_MAX_LISTED:]]
        problems.append(Problem(
            f"{_rows_phrase(more)} also have more values than the header has columns.", row=more[0]))

    names = [h.strip().lstrip("\ufeff").strip() for h in header]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name:
            continue
        if name in seen:
            problems.append(Problem(
                f"The column name '{name}' appears more than once in the header (columns {seen[name] + 1} and "
                f"{i + 1}). Rename one of them so every column has a different name.",
                row=1, column=name,
            ))
        else:
            seen[name] = i
    if problems:
        raise DatasetError(problems)
    if not data:
        raise DatasetError(Problem(
            "The file has a header row but no data rows. Add at least one row of examples below the header.", row=1))

    columns = list(zip(*data))
    warnings: list[Problem] = []
    frame: dict[str, pd.Series] = {}
    for i, name in enumerate(names):
        values = columns[i]
        if not name:
            if not any(v.strip() for v in values):
                continue  # an unnamed, empty column (often left by spreadsheet formatting)
            name = f"Column {i + 1}"
            while name in seen or name in frame:
                name += "_"
            warnings.append(Problem(
                f"Column {i + 1} has no name in the header; it is called '{name}' here.", row=1, column=name,
                severity="warning"))
        frame[name] = pd.Series(values, dtype=str, copy=False)
    df = pd.DataFrame(frame)
    df.index = pd.Index(source_rows, name=_SOURCE_ROW)
    df.attrs[_ATTRS_WARNINGS] = warnings
    return df


@contextmanager
def _user_facing_errors(action: str) -> Iterator[None]:
    """The importer's outer boundary: anything that is not already a DatasetError becomes one (never a traceback)."""
    try:
        yield
    except DatasetError:
        raise
    except MemoryError as exc:
        raise DatasetError(Problem("The file is too large to import on this computer (not enough memory).")) from exc
    except Exception as exc:
        raise DatasetError(Problem(f"{action} because of an unexpected error: {exc}.")) from exc


def _read(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, str, str]:
    raw, _ = _read_bytes(path)
    with _user_facing_errors("The file could not be read"):
        if not raw.strip():
            raise DatasetError(Problem(
                "The file is empty." if not raw else "The file is empty: it contains only blank lines or spaces."))
        text, encoding = _decode(raw)
        df = _parse(text)
    return df, encoding, hashlib.sha256(raw).hexdigest()


def read_csv(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, str]:
    """Read a whole CSV as str columns (no NA guessing); return (DataFrame, encoding used). Raises DatasetError.

    The DataFrame's index holds each row's line number as a spreadsheet shows it (header = 1); blank rows are
    skipped; header names are stripped of surrounding spaces.
    """
    df, encoding, _ = _read(path)
    return df, encoding


def preview_csv(path: str | os.PathLike[str], n_rows: int = 20) -> tuple[pd.DataFrame, str]:
    """Read only the beginning of a CSV (the first `n_rows` data rows) for the import dialog. Raises DatasetError."""
    raw, size = _read_bytes(path, limit=_PREVIEW_BYTES)
    truncated = len(raw) < size
    try:
        if not raw.strip() and not truncated:
            raise DatasetError(Problem(
                "The file is empty." if not raw else "The file is empty: it contains only blank lines or spaces."))
        text, encoding = _decode(raw, final=not truncated)
        df = _parse(text, max_rows=max(1, n_rows), truncated=truncated)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(Problem(f"The file could not be read because of an unexpected error: {exc}.")) from exc
    return df.iloc[: max(1, n_rows)], encoding


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


def _template_parts(template: str | None, text_columns: Sequence[str]) -> list[tuple[str, bool]]:
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
    for part, is_column in _template_parts(template, text_columns):
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


# --------------------------------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------------------------------


def _normalised_ratios(split: SplitSettings) -> np.ndarray:
    ratios = np.array([max(0.0, r) for r in split.ratios()], dtype=float)
    total = ratios.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("split ratios must have a positive sum")
    return ratios / total


def _integerise(desired: np.ndarray, n: int, nonzero: np.ndarray) -> np.ndarray:
    """Whole row counts summing to n, close to `desired`, with >= 1 in every nonzero split when n allows."""
    counts = np.where(nonzero, np.floor(np.clip(desired, 0, None)), 0).astype(int)
    k = int(nonzero.sum())
    if n >= k:
        counts = np.where(nonzero, np.maximum(counts, 1), 0)
        floor = np.where(nonzero, 1, 0)
    else:  # too few rows for every split: fill in priority order train, dev, test
        counts = np.zeros(3, dtype=int)
        for i in np.flatnonzero(nonzero)[:n]:
            counts[i] = 1
        return counts
    while counts.sum() > n:
        excess = np.where(counts > floor, counts - desired, -np.inf)
        counts[int(np.argmax(excess))] -= 1
    while counts.sum() < n:
        deficit = np.where(nonzero, desired - counts, -np.inf)
        counts[int(np.argmax(deficit))] += 1
    return counts


def _assign_rows(label_codes: np.ndarray, n_labels: int, ratios: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split codes (0/1/2) for rows, stratified by label; rounding is carried across labels to keep totals close."""
    out = np.zeros(len(label_codes), dtype=np.int8)
    order = np.argsort(label_codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(label_codes, minlength=n_labels))])
    nonzero = ratios > 0
    cum_target = np.zeros(3)
    cum_assigned = np.zeros(3)
    for k in range(n_labels):
        members = order[bounds[k]: bounds[k + 1]]
        n = len(members)
        if n == 0:
            continue
        cum_target += n * ratios
        counts = _integerise(cum_target - cum_assigned, n, nonzero)
        cum_assigned += counts
        shuffled = rng.permutation(members)
        out[shuffled[counts[0]: counts[0] + counts[1]]] = 1
        out[shuffled[counts[0] + counts[1]:]] = 2
    return out


def _assign_groups(labels: np.ndarray, groups: Sequence[str | None], ratios: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Split codes for rows, assigning whole groups; groups are stratified by their majority label."""
    n = len(labels)
    keys = np.array(
        [f"\x00row{i}" if g is None or str(g).strip() == "" else "\x01" + str(g).strip()
         for i, g in enumerate(groups)], dtype=object)
    frame = pd.DataFrame({"g": keys, "l": labels})
    pair_counts = frame.groupby(["g", "l"], sort=True).size().reset_index(name="n")
    pair_counts = pair_counts.sort_values(["g", "n", "l"], ascending=[True, False, True], kind="stable")
    majority = pair_counts.drop_duplicates("g").set_index("g")["l"]
    sizes = frame.groupby("g", sort=True).size()
    table = pd.DataFrame({"label": majority, "size": sizes}).sort_index()  # sorted group keys: row-order independent
    nonzero = ratios > 0
    split_of: dict[str, int] = {}
    assigned = np.zeros(3)
    rows_done = 0
    for _, stratum in table.groupby("label", sort=True):
        group_keys = stratum.index.to_numpy()
        group_sizes = stratum["size"].to_numpy()
        perm = rng.permutation(len(group_keys))
        perm = perm[np.argsort(-group_sizes[perm], kind="stable")]  # largest first, random among equal sizes
        total = int(group_sizes.sum())
        target = ratios * (rows_done + total) - assigned
        local = np.zeros(3)
        local_groups = np.zeros(3, dtype=int)
        remaining = len(perm)
        for j in perm:
            empty = [i for i in range(3) if nonzero[i] and local_groups[i] == 0]
            candidates = empty if remaining <= len(empty) else [i for i in range(3) if nonzero[i]]
            choice = max(candidates, key=lambda i: (target[i] - local[i], -i))
            split_of[group_keys[j]] = choice
            local[choice] += group_sizes[j]
            local_groups[choice] += 1
            remaining -= 1
        assigned += local
        rows_done += total
    return pd.Series(keys).map(split_of).to_numpy(dtype=np.int8) if n else np.zeros(0, dtype=np.int8)


def assign_splits(labels: Sequence[str], groups: Sequence[str | None] | None, split: SplitSettings) -> list[str]:
    """Assign "train"/"dev"/"test" to each row: stratified by label, reproducible for a given seed and input.

    Every label gets at least one row in each split with a nonzero ratio when it has enough rows. With groups,
    all rows of a group land in the same split (groups stratified by their majority label; rows whose group is
    None or empty count as groups of their own), so proportions can drift from the requested ones.
    """
    labels_array = np.asarray([str(label) for label in labels], dtype=object)
    if groups is not None and len(groups) != len(labels_array):
        raise ValueError(f"groups has {len(groups)} entries but labels has {len(labels_array)}")
    if len(labels_array) == 0:
        return []
    ratios = _normalised_ratios(split)
    rng = np.random.default_rng(int(split.seed))
    use_groups = groups is not None and any(g is not None and str(g).strip() != "" for g in groups)
    if use_groups:
        assert groups is not None
        codes = _assign_groups(labels_array, groups, ratios, rng)
    else:
        uniques, label_codes = np.unique(labels_array.astype(str), return_inverse=True)
        codes = _assign_rows(label_codes.ravel(), len(uniques), ratios, rng)
    names = np.array(SPLITS, dtype=object)
    return names[codes].tolist()


# --------------------------------------------------------------------------------------------------------------------
# Building a dataset from a DataFrame
# --------------------------------------------------------------------------------------------------------------------


def _as_text(series: pd.Series) -> pd.Series:
    """A column as stripped str values; missing values become ""."""
    if not (pd.api.types.is_string_dtype(series.dtype) and not pd.api.types.is_object_dtype(series.dtype)):
        series = series.astype(object).where(series.notna(), "").astype(str)
    return series.fillna("").str.strip()


def _check_mapping(columns: list[str], mapping: ColumnMapping) -> tuple[list[Problem], list[Problem],
                                                                          list[tuple[str, bool]]]:
    errors: list[Problem] = []
    warnings: list[Problem] = []
    available = f" The file's columns are: {_quoted_list(columns)}."

    def check(name: str | None, role: str) -> None:
        if name is None:
            return
        if not isinstance(name, str) or not name.strip():
            errors.append(Problem(f"The {role} is set to an empty column name. Choose one of the file's columns."))
        elif name not in columns:
            errors.append(Problem(
                f"The {role} '{name}' is not a column of this file.{_suggest(name, columns)}{available}", column=name))

    if not mapping.text_columns:
        errors.append(Problem("No text column is chosen. Choose at least one column that holds the input text."))
    for name in mapping.text_columns:
        check(name, "text column")
    check(mapping.label_column, "label column")
    check(mapping.id_column, "id column")
    check(mapping.split_column, "split column")
    check(mapping.group_column, "group column")
    if len(set(mapping.text_columns)) != len(mapping.text_columns):
        duplicated = sorted({c for c in mapping.text_columns if mapping.text_columns.count(c) > 1})
        warnings.append(Problem(f"The text column {_quoted_list(duplicated)} is chosen more than once.",
                                severity="warning"))
    if mapping.keep_source_split and not mapping.split_column:
        errors.append(Problem("'Keep the file's own split' is on, but no split column is chosen."))

    parts: list[tuple[str, bool]] = []
    try:
        parts = _template_parts(mapping.template, mapping.text_columns)
    except DatasetError as exc:
        errors.extend(exc.problems)
    placeholders = [name for name, is_column in parts if is_column]
    if mapping.template is not None and mapping.template.strip():
        unknown = [p for p in dict.fromkeys(placeholders) if p not in columns]
        for name in unknown:
            errors.append(Problem(
                f"The template uses {{{name}}}, but the file has no column '{name}'.{_suggest(name, columns)}"
                f"{available}", column=name))
        if not placeholders:
            errors.append(Problem(
                "The template does not use any column, so every example would have the same text. "
                "Put column names in braces, like {text}."))
        unused = [c for c in mapping.text_columns if c in columns and c not in placeholders]
        if unused:
            warnings.append(Problem(
                f"The text column {_quoted_list(unused)} is not used by the template, so it is left out of the text.",
                severity="warning"))
    if mapping.label_column in placeholders:
        errors.append(Problem(
            f"The label column '{mapping.label_column}' is also used as input text, so the model would see the "
            "answer. Remove it from the text columns or the template.", column=mapping.label_column))
    return errors, warnings, parts


def _check_split_settings(split: SplitSettings) -> list[Problem]:
    problems: list[Problem] = []
    try:
        ratios = split.ratios()
    except (TypeError, ValueError):
        return [Problem("The split proportions must be numbers.")]
    for name, value in zip(SPLITS, ratios):
        if not math.isfinite(value) or value <= 0:
            problems.append(Problem(
                f"The {name} proportion is {value:g}; each of train, dev and test needs a proportion above 0."))
    total = sum(ratios)
    if math.isfinite(total) and abs(total - 1.0) > 1e-6:
        problems.append(Problem(
            f"The train, dev and test proportions add up to {total:g}; they must add up to 1 "
            f"(for example 0.6, 0.2 and 0.2)."))
    try:
        int(split.seed)
    except (TypeError, ValueError):
        problems.append(Problem("The split seed must be a whole number."))
    return problems


def _rows_problem(rows: list[int], single: str, multiple: str, column: str | None) -> Problem:
    """One problem covering many rows: 'Row 5: the label is empty.' or 'Rows 5, 9 and 40 more have ...'."""
    if len(rows) == 1:
        return Problem(f"Row {rows[0]}: {single}", row=rows[0], column=column)
    return Problem(f"{_rows_phrase(rows)} {multiple}", row=rows[0], column=column)


def _source_rows(df: pd.DataFrame) -> np.ndarray:
    if df.index.name == _SOURCE_ROW and pd.api.types.is_integer_dtype(df.index.dtype):
        return df.index.to_numpy(dtype=np.int64)
    return np.arange(2, len(df) + 2, dtype=np.int64)  # a plain frame: header on line 1, rows follow


def _split_proportions(codes: Sequence[str]) -> np.ndarray:
    counts = np.array([sum(1 for c in codes if c == s) for s in SPLITS], dtype=float)
    return counts / max(1.0, counts.sum())


def _percentages(values: Sequence[float]) -> str:
    return " / ".join(f"{round(100 * v)}%" for v in values)


def build_dataset(df: pd.DataFrame, mapping: ColumnMapping, split: SplitSettings, *, source_sha256: str = "",
                  encoding: str = "utf-8") -> ImportedDataset:
    """Check a read CSV against the mapping, render texts, assign splits. Raises DatasetError listing all problems.

    A DataFrame from read_csv carries each row's line number in its index; for any other DataFrame row i
    (0-based) is taken to be line i + 2 of the file.
    """
    warnings: list[Problem] = list(df.attrs.get(_ATTRS_WARNINGS, []))
    columns = [str(c) for c in df.columns]
    df = df.set_axis(columns, axis=1)

    errors: list[Problem] = []
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    for name in duplicated:
        errors.append(Problem(
            f"The column name '{name}' appears more than once in the header. Rename one of them.", row=1, column=name))
    mapping_errors, mapping_warnings, parts = _check_mapping(columns, mapping)
    errors += mapping_errors
    warnings += mapping_warnings
    split_errors = _check_split_settings(split)
    if len(df) == 0:
        errors.append(Problem("The file has a header row but no data rows.", row=1))
    if errors:  # without a usable mapping the rows cannot be checked
        raise DatasetError(errors + split_errors + warnings)
    errors += split_errors

    rows_all = _source_rows(df)
    input_columns = list(dict.fromkeys(name for name, is_column in parts if is_column))
    used = list(dict.fromkeys(
        [*input_columns, mapping.label_column, mapping.id_column, mapping.split_column, mapping.group_column]))
    values: dict[str, pd.Series] = {c: _as_text(df[c]).reset_index(drop=True) for c in used if c is not None}

    # Cells over the limit (on the raw values, before stripping).
    for column in (c for c in used if c is not None):
        lengths = df[column].astype(str).str.len().to_numpy() if len(df) else np.zeros(0)
        too_long = np.flatnonzero(lengths > MAX_CELL_CHARS)
        if len(too_long):
            listed = ", ".join(f"row {rows_all[i]} ({int(lengths[i]):,} characters)" for i in too_long[:_MAX_LISTED])
            more = f" and {len(too_long) - _MAX_LISTED} more rows" if len(too_long) > _MAX_LISTED else ""
            first = int(rows_all[too_long[0]])
            if len(too_long) == 1:
                message = (f"Row {first}: the value in column '{column}' is {int(lengths[too_long[0]]):,} characters "
                           f"long; the limit is {MAX_CELL_CHARS:,}. Shorten it, or check for a missing quotation mark.")
            else:
                message = (f"Column '{column}' has values longer than the limit of {MAX_CELL_CHARS:,} characters: "
                           f"{listed}{more}. Shorten them, or check for a missing quotation mark.")
            errors.append(Problem(message, row=first, column=column))

    # Input text.
    text_values = {c: values[c].str.replace("\r\n", "\n", regex=False).str.replace("\r", "\n", regex=False)
                   for c in input_columns}
    all_empty = np.ones(len(df), dtype=bool)
    for c in input_columns:
        all_empty &= (text_values[c].str.len() == 0).to_numpy()
    empty_rows = rows_all[all_empty].tolist()
    if empty_rows:
        what = f"column '{input_columns[0]}'" if len(input_columns) == 1 else \
            f"columns {_quoted_list(input_columns)}"
        errors.append(_rows_problem(
            empty_rows, f"the text is empty ({what}).", f"have an empty text ({what}).",
            input_columns[0] if len(input_columns) == 1 else None))
    rendered: pd.Series | None = None
    for part, is_column in parts:
        piece: pd.Series | str = text_values[part] if is_column else part
        rendered = piece if rendered is None else rendered + piece  # type: ignore[operator]
    if isinstance(rendered, str) or rendered is None:  # a template without columns: already reported
        rendered = pd.Series([rendered or ""] * len(df), dtype=str)
    texts = rendered.str.strip()

    # Labels.
    label_values = values[mapping.label_column]
    if mapping.merge_labels is not None:
        if mapping.merge_labels not in LABEL_MERGES:
            raise DatasetError(Problem(f"Unknown way to merge look-alike labels '{mapping.merge_labels}'; "
                                       f"choose {' or '.join(LABEL_MERGES)}."))
        label_values = label_values.map(merged_labels(label_values.tolist(), mapping.merge_labels))
    warnings += lookalike_label_warnings(label_values.tolist(), rows_all.tolist(), mapping.label_column,
                                         mapping.merge_labels)
    label_empty = (label_values.str.len() == 0).to_numpy()
    if label_empty.any():
        errors.append(_rows_problem(rows_all[label_empty].tolist(), "the label is empty.", "have an empty label.",
                                    mapping.label_column))
    label_counts_series = label_values[~label_empty].value_counts()
    label_counts = {str(k): int(v) for k, v in sorted(label_counts_series.items(), key=lambda kv: str(kv[0]))}
    labels = list(label_counts)
    if len(labels) < 2:
        found = f"only the label '{labels[0]}'" if labels else "no labels"
        errors.append(Problem(
            f"The label column '{mapping.label_column}' has {found}. At least two different labels are needed "
            "to learn a classification.", column=mapping.label_column))

    # Ids.
    if mapping.id_column is not None:
        ids = values[mapping.id_column]
        id_empty = (ids.str.len() == 0).to_numpy()
        if id_empty.any():
            errors.append(_rows_problem(rows_all[id_empty].tolist(), "the id is empty.", "have an empty id.",
                                        mapping.id_column))
        duplicated_mask = ids.duplicated(keep=False).to_numpy() & ~id_empty
        if duplicated_mask.any():
            dup = pd.DataFrame({"id": ids[duplicated_mask].to_numpy(), "row": rows_all[duplicated_mask]})
            grouped = dup.groupby("id", sort=False)["row"].apply(list)
            for count, (ext_id, dup_rows) in enumerate(grouped.items()):
                if count == _MAX_LISTED:
                    errors.append(Problem(
                        f"{len(grouped) - _MAX_LISTED} more ids also appear more than once.", column=mapping.id_column))
                    break
                where = f"rows {dup_rows[0]} and {dup_rows[1]}" if len(dup_rows) == 2 else \
                    f"{len(dup_rows)} rows ({_rows_phrase(dup_rows)[5:]})"
                errors.append(Problem(
                    f"The id '{ext_id}' appears on {where}; every id must be unique.",
                    row=int(dup_rows[1]), column=mapping.id_column))
        ext_ids = ids.tolist()
    else:
        ext_ids = [str(r) for r in rows_all.tolist()]

    # Groups.
    group_list: list[str | None] | None = None
    if mapping.group_column is not None:
        group_list = [g if g else None for g in values[mapping.group_column].tolist()]

    # Splits.
    label_list = label_values.tolist()
    splits: list[str] = []
    if mapping.keep_source_split and mapping.split_column is not None:
        source = values[mapping.split_column].str.lower().map(_SPLIT_ALIASES)
        unknown = source.isna().to_numpy()
        if unknown.any():
            bad_values = list(dict.fromkeys(values[mapping.split_column][unknown].tolist()))
            shown = _quoted_list(bad_values, limit=5).replace("''", "(empty)")
            errors.append(_rows_problem(
                rows_all[unknown].tolist(),
                f"the split value {shown} is not one of train, dev (or validation) and test.",
                f"have a split value that is not one of train, dev (or validation) and test: {shown}.",
                mapping.split_column))
        elif not split_errors:
            splits, source_errors, source_warnings = _source_splits(
                source.tolist(), label_list, group_list, labels, split)
            errors += source_errors
            warnings += source_warnings
    else:
        needed = sum(1 for r in split.ratios() if r > 0)
        for label, count in label_counts.items():
            if count < needed:
                errors.append(Problem(
                    f"The label '{label}' has only {count} row{'s' if count != 1 else ''}; each label needs at least "
                    f"{needed} rows so that it appears in train, dev and test. Add more examples of it or remove "
                    "its rows.", column=mapping.label_column))

    if errors:
        raise DatasetError(errors + warnings)

    if not splits:
        splits = assign_splits(label_list, group_list, split)
        if group_list is not None and any(g is not None for g in group_list):
            warnings += _group_split_warnings(splits, label_list, labels, split)

    rows = [
        DatasetRow(source_row=int(r), ext_id=i, text=t, label=lab, split=s, group=g)
        for r, i, t, lab, s, g in zip(rows_all.tolist(), ext_ids, texts.tolist(), label_list, splits,
                                      group_list if group_list is not None else [None] * len(label_list))
    ]
    return ImportedDataset(
        rows=rows,
        labels=labels,
        label_counts=label_counts,
        columns=columns,
        mapping=mapping,
        split_settings=split,
        source_sha256=source_sha256,
        encoding=encoding,
        warnings=warnings,
    )


def _missing_in_splits(splits: Sequence[str], labels: Sequence[str], all_labels: list[str],
                       wanted: Sequence[str]) -> list[tuple[str, str]]:
    present = set(zip(labels, splits))
    return [(label, s) for label in all_labels for s in wanted if (label, s) not in present]


def _group_split_warnings(splits: list[str], labels: list[str], all_labels: list[str],
                          split: SplitSettings) -> list[Problem]:
    warnings: list[Problem] = []
    requested = np.array(split.ratios()) / sum(split.ratios())
    achieved = _split_proportions(splits)
    if np.max(np.abs(achieved - requested)) > _PROPORTION_TOLERANCE:
        warnings.append(Problem(
            f"Because rows of the same group stay together, the split is {_percentages(achieved)} "
            f"(train / dev / test) instead of the requested {_percentages(requested)}.", severity="warning"))
    for label, s in _missing_in_splits(splits, labels, all_labels, SPLITS):
        warnings.append(Problem(
            f"Because rows of the same group stay together, the label '{label}' has no rows in the {s} split.",
            severity="warning"))
    return warnings


def _source_splits(source: list[str], labels: list[str], groups: list[str | None] | None, all_labels: list[str],
                   split: SplitSettings) -> tuple[list[str], list[Problem], list[Problem]]:
    """Use the file's own split; carve a missing dev (or test) split out of train with the requested ratios.

    Returns (splits, errors, warnings).
    """
    warnings: list[Problem] = []
    splits = list(source)
    present = set(splits)
    if "train" not in present:
        return [], [Problem(
            "The split column has no training rows (train). Add some, or turn off 'keep the file's own split'.")], []
    missing = [s for s in ("dev", "test") if s not in present]
    if missing:
        ratios = dict(zip(SPLITS, split.ratios()))
        carve = SplitSettings(train=ratios["train"], dev=ratios["dev"] if "dev" in missing else 0.0,
                              test=ratios["test"] if "test" in missing else 0.0, seed=split.seed)
        train_idx = [i for i, s in enumerate(splits) if s == "train"]
        sub = assign_splits([labels[i] for i in train_idx],
                            [groups[i] for i in train_idx] if groups is not None else None, carve)
        for i, s in zip(train_idx, sub):
            splits[i] = s
        moved = {s: sub.count(s) for s in missing}
        warnings.append(Problem(
            f"The file's split column has no {' or '.join(missing)} rows, so "
            + " and ".join(f"{moved[s]:,} training rows were moved to {s}" for s in missing)
            + " (stratified by label).", severity="warning"))
    for label, s in _missing_in_splits(splits, labels, all_labels, SPLITS):
        warnings.append(Problem(f"The label '{label}' has no rows in the {s} split.", severity="warning"))
    if groups is not None:
        straddling: dict[str, set[str]] = {}
        for g, s in zip(groups, splits):
            if g is not None:
                straddling.setdefault(g, set()).add(s)
        bad = [g for g, ss in straddling.items() if len(ss) > 1]
        if bad:
            warnings.append(Problem(
                f"{len(bad)} group{'s' if len(bad) != 1 else ''} ({_quoted_list(bad, limit=5)}) "
                f"{'have' if len(bad) != 1 else 'has'} rows in more than one split of the file's own split.",
                severity="warning"))
    return splits, [], warnings


def load_dataset(path: str | os.PathLike[str], mapping: ColumnMapping,
                 split: SplitSettings = SplitSettings()) -> ImportedDataset:
    """Read a CSV and build the dataset from it (read_csv + build_dataset). Raises DatasetError."""
    df, encoding, sha = _read(path)
    with _user_facing_errors("The data could not be imported"):
        return build_dataset(df, mapping, split, source_sha256=sha, encoding=encoding)
