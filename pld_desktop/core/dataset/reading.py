"""Reading a CSV safely: bytes -> text (encoding, binary sniffing) -> a str DataFrame with line numbers."""

from __future__ import annotations

import bisect
import codecs
import csv
import hashlib
import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pld_desktop.core.dataset.problems import (
    MAX_LISTED,
    DatasetError,
    Problem,
    rows_phrase,
    snippet,
)
from pld_desktop.core.dataset.records import (
    ATTRS_WARNINGS,
    SOURCE_ROW,
)

# How many bytes the import dialog's preview reads from the start of the file.
_PREVIEW_BYTES = 1 << 20

_SAVE_AS_UTF8 = (
    "Save it as UTF-8 (in Excel: File > Save As > 'CSV UTF-8 (Comma delimited)'; in LibreOffice: "
    "tick 'Edit filter settings' and choose 'Unicode (UTF-8)'; in a text editor: save with encoding UTF-8) "
    "and import it again."
)



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
        more = [str(n) for n in bad_lines[1:MAX_LISTED]]
        extra = len(bad_lines) - 1 - len(more)
        others = f" Other lines with such bytes: {', '.join(more)}" + (f" and {extra} more" if extra > 0 else "") + "."
    return DatasetError(Problem(
        f"The file is not valid UTF-8: byte 0x{byte:02X} on line {line} cannot be decoded "
        f"(the line reads \"{snippet(context, 80)}\").{others} The file was probably saved in an older encoding "
        f"such as Windows-1252 or Latin-1, and importing it as such could silently change characters. " + _SAVE_AS_UTF8,
        row=None,
    ))


def _nul_error(text: str) -> DatasetError:
    positions = [m.start() for m in re.finditer("\x00", text[: 10 * 1024 * 1024])] or [text.find("\x00")]
    lines = sorted({_line_of_char(text, p) for p in positions[:1000]})
    where = f"line {lines[0]}" if len(lines) == 1 else f"lines {', '.join(map(str, lines[:MAX_LISTED]))}" + (
        f" and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else "")
    return DatasetError(Problem(
        f"The file contains a NUL character (an invisible zero byte) on {where}. Text CSV files never contain it; "
        "the file may be damaged or partly binary. Open it in a spreadsheet program and save it again as "
        "'CSV UTF-8 (Comma delimited)'."
    ))


_DECODE_STEP = 1 << 20


def _decode_in_steps(raw: bytes, encoding: str, final: bool) -> str:
    """`raw` decoded 1 MB at a time (one call for a 15 MB file held the GIL ~30 ms: a stall of the window). After
    an error the whole is decoded at once, so the error raised (and its positions) are exactly those of one call."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    parts = []
    view = memoryview(raw)  # slices without copies
    try:
        for start in range(0, len(raw), _DECODE_STEP):
            end = start + _DECODE_STEP
            parts.append(decoder.decode(view[start:end], final=final and end >= len(raw)))
    except UnicodeError:  # decoded whole, as before: the same error, at positions in the file (or the text)
        whole: str = codecs.getincrementaldecoder(encoding)(errors="strict").decode(raw, final=final)
        return whole
    return "".join(parts)


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
    try:
        text = _decode_in_steps(raw, encoding, final)
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


def _sniff_delimiter(text: str) -> str:
    """Comma, unless the header line has no comma but has tabs or semicolons (European Excel, TSV)."""
    for line in text[:65536].splitlines():
        if line.strip():
            counts = {d: line.count(d) for d in (",", "\t", ";")}
            best = max(counts, key=lambda d: counts[d])  # ties keep the order above: comma first
            return best if counts[best] > 0 else ","
    return ","


_EMPTY_FILE = "The file is empty: it contains no text (only blank lines or spaces)."


def _delimiter(text: str) -> tuple[str, str]:
    """(delimiter, the text to parse): Excel's "sep=;" first line names the separator and is not a row (Excel
    does not show it); otherwise the delimiter is sniffed from the header line."""
    sep_line = _SEP_HINT.match(text)
    if sep_line:
        delimiter = "\t" if sep_line.group(1) == "\\t" else sep_line.group(1)
        return delimiter, text[sep_line.end():]
    return _sniff_delimiter(text), text


@dataclass
class _Records:
    """What one pass of the csv reader found: the header, the data rows with their spreadsheet row numbers, and
    the rows with more values than the header has columns."""

    header: list[str] | None = None
    data: list[tuple[str, ...]] = field(default_factory=list)
    source_rows: list[int] = field(default_factory=list)
    ragged: list[tuple[int, int, int, int]] = field(default_factory=list)  # (row, n_values, first line, last line)
    record: int = 0  # spreadsheet row number of the last record read
    last_line: int = 0  # physical line the last record ended on
    last_start_pos: int = 0  # character offset where the last record started
    ended: bool = False  # the reader reached the end of the text (not stopped at max_rows)

    @property
    def n_columns(self) -> int:
        return len(self.header) if self.header is not None else 0


def _fit_row(values: list[str], n_columns: int) -> list[str] | None:
    """The row padded or trimmed to the header's width; None if it has non-empty values beyond it (ragged)."""
    if len(values) > n_columns:
        if any(v.strip() for v in values[n_columns:]):
            return None
        return values[:n_columns]
    return values + [""] * (n_columns - len(values))


def _csv_error(exc: csv.Error, records: _Records) -> DatasetError:
    row, line = records.record + 1, records.last_line + 1
    if "field larger than field limit" in str(exc):
        return DatasetError(Problem(
            f"Row {row} (starting on line {line} of the file) has a value longer than {csv.field_size_limit():,} "
            "characters. This usually means a quotation mark (\") opened there is never closed.",
            row=row,
        ))
    return DatasetError(Problem(f"The file cannot be read as CSV near line {line}: {exc}.", row=row))


class _Lines:
    """The text's lines with their endings, as `io.StringIO(text, newline="")` yields them (a line ends at \\n, \\r
    or \\r\\n), and `offset`: where the next line starts, as that stream's `tell()` would say.

    One StringIO per ~1 MB piece cut after a \\n, not one for the whole text: building that copies the text in a
    single call that held the GIL ~50 ms for a 15 MB file (the window stalled while the import dialog read it).
    """

    STEP = 1 << 20

    def __init__(self, text: str) -> None:
        self._text = text
        self.offset = 0

    def __iter__(self) -> Iterator[str]:
        text, base = self._text, 0
        while base < len(text):
            cut = text.find("\n", base + self.STEP)  # after a \n: a line ends there in either reading
            end = len(text) if cut < 0 else cut + 1
            piece = io.StringIO(text[base:end], newline="")
            for line in piece:
                self.offset = base + piece.tell()
                yield line
            base = end


def _read_records(text: str, delimiter: str, max_rows: int | None, truncated: bool) -> _Records:
    """Every record of the text (stopping after `max_rows` data rows, plus one the preview may drop)."""
    lines = _Lines(text)
    reader = csv.reader(lines, delimiter=delimiter)
    records = _Records()
    position = 0
    try:
        for values in reader:
            records.record += 1
            first_line, records.last_line = records.last_line + 1, reader.line_num
            records.last_start_pos, position = position, lines.offset
            if records.header is None:
                if any(v.strip() for v in values):
                    records.header = values
                continue
            fitted = _fit_row(values, records.n_columns) if len(values) != records.n_columns else values
            if fitted is None:
                records.ragged.append((records.record, len(values), first_line, records.last_line))
                continue
            if not any(fitted):
                continue  # blank line or a row of empty cells
            records.data.append(tuple(fitted))  # a tuple of str leaves the GC at its first pass (a list stays)
            records.source_rows.append(records.record)
            if max_rows is not None and len(records.data) >= max_rows + (1 if truncated else 0):
                break
        else:
            records.ended = True
    except csv.Error as exc:
        raise _csv_error(exc, records) from exc
    return records


def _check_last_record(text: str, delimiter: str, records: _Records, truncated: bool) -> None:
    """Drop a last record the preview chunk may have cut short; in a whole file, refuse a last record whose
    quotation mark is never closed (the csv reader would silently read the rest of the file as one value)."""
    if records.ended and truncated and records.source_rows and records.source_rows[-1] == records.record:
        records.data.pop()
        records.source_rows.pop()
    elif records.ended and not truncated and records.record:
        tail = text[records.last_start_pos:]
        if '"' not in tail:
            return
        try:
            for _ in csv.reader(io.StringIO(tail, newline=""), delimiter=delimiter, strict=True):
                pass
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                start_line = _line_of_char(text, records.last_start_pos)
                raise DatasetError(Problem(
                    f"Row {records.record} (line {start_line} of the file) opens a quotation mark (\") that is never "
                    "closed, so everything after it up to the end of the file would be read as one value. "
                    "Add the missing closing quotation mark, or remove the stray one.",
                    row=records.record,
                )) from exc


def _ragged_row_problem(row: int, n_values: int, first_line: int, end_line: int, n_columns: int,
                        delimiter: str) -> Problem:
    lines = f"line {first_line}" if first_line == end_line else f"lines {first_line}-{end_line}"
    hint = "A value that contains a comma is probably missing its quotation marks." if delimiter == "," else \
        f"A value that contains the separator ({'tab' if delimiter == chr(9) else delimiter}) is probably " \
        "missing its quotation marks."
    if first_line != end_line:
        hint += " This row spans several lines of the file, so a quotation mark may be missing or extra."
    return Problem(
        f"Row {row} ({lines} of the file) has {n_values} values but the header has {n_columns} columns. {hint}",
        row=row,
    )


def _ragged_problems(records: _Records, delimiter: str) -> list[Problem]:
    """Rows with more values than the header has columns (or one problem with the header, if every row has)."""
    ragged, n_columns = records.ragged, records.n_columns
    if len(ragged) > 1 and not records.data and len({n for _, n, *_ in ragged}) == 1:
        # Every row is one shape: the header, not the rows, is probably wrong (e.g. an unnamed index column).
        return [Problem(
            f"Every row has {ragged[0][1]} values but the header names only {n_columns} columns. Add the missing "
            "column name(s) to the header (line 1), or check that the header uses the same separator as the rows.",
            row=1)]
    problems = [_ragged_row_problem(*entry, n_columns, delimiter) for entry in ragged[:MAX_LISTED]]
    if len(ragged) > MAX_LISTED:
        more = [r for r, *_ in ragged[MAX_LISTED:]]
        problems.append(Problem(
            f"{rows_phrase(more)} also have more values than the header has columns.", row=more[0]))
    return problems


def _duplicate_name_problems(names: list[str]) -> list[Problem]:
    problems: list[Problem] = []
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
    return problems


def _frame(names: list[str], records: _Records) -> pd.DataFrame:
    """The str DataFrame indexed by spreadsheet row; an unnamed column is named "Column N" (with a warning in
    `attrs`), or dropped if it is empty too."""
    named = set(filter(None, names))
    # One list per column, row by row: a single zip(*rows) held the GIL ~70 ms for 100k rows.
    columns = [[row[i] for row in records.data] for i in range(len(names))]
    warnings: list[Problem] = []
    frame: dict[str, pd.Series] = {}
    for i, name in enumerate(names):
        values = columns[i]
        if not name:
            if not any(v.strip() for v in values):
                continue  # an unnamed, empty column (often left by spreadsheet formatting)
            name = f"Column {i + 1}"
            while name in named or name in frame:
                name += "_"
            warnings.append(Problem(
                f"Column {i + 1} has no name in the header; it is called '{name}' here.", row=1, column=name,
                severity="warning"))
        frame[name] = pd.Series(values, dtype=str, copy=False)
    df = pd.DataFrame(frame)
    df.index = pd.Index(records.source_rows, name=SOURCE_ROW)
    df.attrs[ATTRS_WARNINGS] = warnings
    return df


def _parse(text: str, *, max_rows: int | None = None, truncated: bool = False) -> pd.DataFrame:
    """Parse decoded CSV text into a str DataFrame indexed by spreadsheet line number; raise on structural errors."""
    if not text or text.isspace():  # not text.strip(): that copies the whole text
        raise DatasetError(Problem(_EMPTY_FILE))
    delimiter, text = _delimiter(text)
    records = _read_records(text, delimiter, max_rows, truncated)
    _check_last_record(text, delimiter, records, truncated)
    if records.header is None:
        raise DatasetError(Problem(_EMPTY_FILE))
    names = [h.strip().lstrip("\ufeff").strip() for h in records.header]
    problems = _ragged_problems(records, delimiter) + _duplicate_name_problems(names)
    if problems:
        raise DatasetError(problems)
    if not records.data:
        raise DatasetError(Problem(
            "The file has a header row but no data rows. Add at least one row of examples below the header.", row=1))
    return _frame(names, records)


@contextmanager
def user_facing_errors(action: str) -> Iterator[None]:
    """The importer's outer boundary: anything that is not already a DatasetError becomes one (never a traceback)."""
    try:
        yield
    except DatasetError:
        raise
    except MemoryError as exc:
        raise DatasetError(Problem("The file is too large to import on this computer (not enough memory).")) from exc
    except Exception as exc:
        raise DatasetError(Problem(f"{action} because of an unexpected error: {exc}.")) from exc


def read_with_sha256(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, str, str]:
    """A whole CSV read as `read_csv` does: (DataFrame, encoding, sha256 of the file's bytes)."""
    raw, _ = _read_bytes(path)
    with user_facing_errors("The file could not be read"):
        if not raw or raw.isspace():
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
    df, encoding, _ = read_with_sha256(path)
    return df, encoding


def preview_csv(path: str | os.PathLike[str], n_rows: int = 20) -> tuple[pd.DataFrame, str]:
    """Read only the beginning of a CSV (the first `n_rows` data rows) for the import dialog. Raises DatasetError."""
    raw, size = _read_bytes(path, limit=_PREVIEW_BYTES)
    truncated = len(raw) < size
    try:
        if (not raw or raw.isspace()) and not truncated:
            raise DatasetError(Problem(
                "The file is empty." if not raw else "The file is empty: it contains only blank lines or spaces."))
        text, encoding = _decode(raw, final=not truncated)
        df = _parse(text, max_rows=max(1, n_rows), truncated=truncated)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(Problem(f"The file could not be read because of an unexpected error: {exc}.")) from exc
    return df.iloc[: max(1, n_rows)], encoding


