"""The import's value types: the column mapping, split settings, one row, and the imported dataset."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from pld_desktop.core.dataset.labels import LABEL_MERGES
from pld_desktop.core.dataset.problems import DatasetError, Problem

MAX_CELL_CHARS = 100_000
"""A cell longer than this many characters is reported as a problem."""

SPLITS: tuple[str, str, str] = ("train", "dev", "test")

# Name of the index read_csv gives its DataFrame: each row's 1-based line number as a spreadsheet shows it.
SOURCE_ROW = "source_row"
# Key in DataFrame.attrs under which read_csv leaves warnings for build_dataset.
ATTRS_WARNINGS = "pld_dataset_warnings"
SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train", "trn": "train",
    "dev": "dev", "development": "dev", "validation": "dev", "val": "dev", "valid": "dev",
    "test": "test", "testing": "test", "tst": "test",
}


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


class RowTable(Sequence[DatasetRow]):
    """A dataset's rows held by column (six lists), read as a sequence of `DatasetRow`s made when asked for.

    Why by column: 100k row objects are 100k objects the garbage collector walks on every full pass, each pass
    holding the GIL for 60-140 ms; checking a 100k-row file in the import dialog made several and froze the
    window. A list of str or int is one object to the collector, and the column lists also feed SQLite directly.
    """

    __slots__ = ("ext_ids", "groups", "labels", "source_rows", "splits", "texts")

    def __init__(self, source_rows: list[int], ext_ids: list[str], texts: list[str], labels: list[str],
                 splits: list[str], groups: list[str | None]) -> None:
        n = len(source_rows)
        if not all(len(c) == n for c in (ext_ids, texts, labels, splits, groups)):
            raise ValueError("every column of a RowTable has one value per row")
        self.source_rows, self.ext_ids, self.texts = source_rows, ext_ids, texts
        self.labels, self.splits, self.groups = labels, splits, groups

    @classmethod
    def from_rows(cls, rows: Iterable[DatasetRow]) -> RowTable:
        listed = list(rows)
        return cls([r.source_row for r in listed], [r.ext_id for r in listed], [r.text for r in listed],
                   [r.label for r in listed], [r.split for r in listed], [r.group for r in listed])

    def records(self) -> Iterator[tuple[str, int, str, str, str, str | None]]:
        """(ext_id, source_row, text, label, split, group) per row, as the project's examples table stores them."""
        return zip(self.ext_ids, self.source_rows, self.texts, self.labels, self.splits, self.groups)

    def __len__(self) -> int:
        return len(self.source_rows)

    @overload
    def __getitem__(self, index: int) -> DatasetRow: ...

    @overload
    def __getitem__(self, index: slice) -> list[DatasetRow]: ...

    def __getitem__(self, index: int | slice) -> DatasetRow | list[DatasetRow]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return DatasetRow(self.source_rows[index], self.ext_ids[index], self.texts[index], self.labels[index],
                          self.splits[index], self.groups[index])

    def __iter__(self) -> Iterator[DatasetRow]:
        for source_row, ext_id, text, label, split, group in zip(
                self.source_rows, self.ext_ids, self.texts, self.labels, self.splits, self.groups):
            yield DatasetRow(source_row, ext_id, text, label, split, group)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RowTable):
            return all(getattr(self, name) == getattr(other, name) for name in RowTable.__slots__)
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"RowTable({len(self)} rows)"


@dataclass
class ImportedDataset:
    """A checked, split dataset ready to be stored in a project."""

    rows: RowTable
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
        for ext_id, _row, text, label, split, _group in self.rows.records():
            digest.update(json.dumps([ext_id, text, label, split], ensure_ascii=False).encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()

    def split_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(SPLITS, 0)
        counts.update(Counter(self.rows.splits))
        return counts


