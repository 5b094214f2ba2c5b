"""Qt-free steps of creating a project from a CSV: guess a column mapping, default template, label checks, build."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

# SPLIT_ALIASES is private to dataset.py; reusing it keeps "is this a split column?" in step with the importer.
from .dataset import ColumnMapping, ImportedDataset, Problem, RowTable, SplitSettings, read_with_sha256
from .dataset.records import SPLIT_ALIASES
from .progress import Progress, check
from .project import Project
from .settings import RunSettings, save_settings

__all__ = [
    "FEW_ROWS_PER_LABEL",
    "SourceTable",
    "create_project",
    "default_template",
    "guess_mapping",
    "label_count_warnings",
    "label_counts",
    "read_source",
]

FEW_ROWS_PER_LABEL = 10
"""A label with fewer rows than this still imports, but its dev/test scores rest on one or two examples."""

_LABEL_NAMES = ("label", "labels", "class", "category", "target", "intent", "sentiment", "tag", "y", "answer")
_ID_NAMES = ("id", "uid", "uuid", "guid", "key", "example_id", "row_id", "item_id", "message_id")
_SPLIT_NAMES = ("split", "fold", "subset", "partition", "set")
_GROUP_NAMES = ("group", "grp", "group_id", "doc_id", "document_id", "document", "conversation_id", "session_id")
# A column whose preview values average at least this many characters reads as free text, not a category.
_TEXT_MEAN_CHARS = 20


@dataclass(frozen=True)
class SourceTable:
    """A whole CSV read once, so that every change of the mapping can be re-checked without reading it again."""

    frame: pd.DataFrame
    encoding: str
    sha256: str
    path: Path


def read_source(path: str | os.PathLike[str]) -> SourceTable:
    """Read the whole CSV (raises DatasetError, never a traceback) and fingerprint its bytes."""
    frame, encoding, sha256 = read_with_sha256(path)  # the digest of the very bytes parsed (one read)
    return SourceTable(frame=frame, encoding=encoding, sha256=sha256, path=Path(path))


def _clean(series: pd.Series) -> pd.Series:
    return series.astype(object).where(series.notna(), "").astype(str).str.strip()


def _find(columns: Sequence[str], names: Sequence[str], taken: set[str]) -> str | None:
    lowered = {c.lower().strip(): c for c in columns if c not in taken}
    return next((lowered[n] for n in names if n in lowered), None)


def guess_mapping(frame: pd.DataFrame) -> ColumnMapping:
    """A sensible first mapping for a preview: named label/id/split/group columns, long free-text columns as input.

    Only a guess for the user to correct; every choice is shown and editable in the import dialog.
    """
    columns = [str(c) for c in frame.columns]
    values = {c: _clean(frame[c]) for c in columns}
    taken: set[str] = set()

    label = _find(columns, _LABEL_NAMES, taken)
    if label is None:
        # The column with the fewest distinct short values (at least two) looks most like a label.
        candidates = [c for c in columns if values[c].nunique() >= 2 and values[c].str.len().mean() < _TEXT_MEAN_CHARS]
        label = min(candidates, key=lambda c: (values[c].nunique(), -columns.index(c)), default=columns[-1])
    taken.add(label)

    id_column = _find(columns, _ID_NAMES, taken)
    if id_column is not None and values[id_column].duplicated().any():
        id_column = None  # a repeated "id" is not an id; the user can still choose it
    if id_column:
        taken.add(id_column)

    split_column = _find(columns, _SPLIT_NAMES, taken)
    keep_split = False
    if split_column is not None:
        taken.add(split_column)
        keep_split = bool(values[split_column].str.lower().isin(SPLIT_ALIASES.keys()).all())

    group_column = _find(columns, _GROUP_NAMES, taken)
    if group_column:
        taken.add(group_column)

    rest = [c for c in columns if c not in taken]
    mean_length = {c: float(values[c].str.len().mean()) if len(frame) else 0.0 for c in rest}
    text_columns = [c for c in rest if mean_length[c] >= _TEXT_MEAN_CHARS]
    if not text_columns and rest:
        text_columns = [max(rest, key=lambda c: mean_length[c])]
    return ColumnMapping(text_columns=tuple(text_columns), label_column=label, id_column=id_column,
                         split_column=split_column, group_column=group_column, keep_source_split=keep_split)


def default_template(text_columns: Sequence[str]) -> str:
    """The template that renders exactly as the core does without one (dataset.render_template with None).

    One column is used as it is; several become "column: value" lines. Braces in names are doubled so that the
    literal part stays literal; a column whose name itself contains a brace cannot be a placeholder, so for such
    columns the empty template (the core's own rendering) is returned instead.
    """
    columns = list(text_columns)
    if not columns or any("{" in c or "}" in c for c in columns):
        return ""
    if len(columns) == 1:
        return "{" + columns[0] + "}"
    return "\n".join(f"{c}: {{{c}}}" for c in columns)


def label_counts(frame: pd.DataFrame, label_column: str) -> dict[str, int]:
    """Rows per non-empty label, most frequent first (labels stripped the way the importer strips them)."""
    if label_column not in frame.columns:
        return {}
    labels = _clean(frame[label_column])
    counts = labels[labels.str.len() > 0].value_counts()
    ordered = sorted(counts.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
    return {str(k): int(v) for k, v in ordered}


def label_count_warnings(counts: Mapping[str, int], split: SplitSettings) -> list[Problem]:
    """Warnings (not errors) for labels that will import but have few rows; the importer reports the blocking case."""
    needed = sum(1 for r in split.ratios() if r > 0)
    few = [(label, n) for label, n in counts.items() if needed <= n < FEW_ROWS_PER_LABEL]
    if not few:
        return []
    listed = ", ".join(f"'{label}' ({n})" for label, n in few[:10]) + (f" and {len(few) - 10} more" if len(few) > 10
                                                                        else "")
    return [Problem(
        f"Few rows for the label{'s' if len(few) > 1 else ''} {listed}: fewer than {FEW_ROWS_PER_LABEL} rows means "
        "only one or two dev and test examples, so their scores will be noisy.", severity="warning")]


class _ReportingRows(RowTable):
    """The dataset's rows, reporting progress and honouring cancellation while Project.store_dataset reads them.

    store_dataset reads the records twice (insert, then the dataset hash), so progress counts both passes.
    """

    __slots__ = ("_progress", "_seen")

    def __init__(self, rows: RowTable, progress: Progress | None) -> None:
        super().__init__(rows.source_rows, rows.ext_ids, rows.texts, rows.labels, rows.splits, rows.groups)
        self._progress = progress
        self._seen = 0

    def records(self) -> Iterator[tuple[str, int, str, str, str, str | None]]:
        total = 2 * len(self)
        for i, record in enumerate(super().records()):
            if self._progress is not None and i % 2000 == 0:
                check(self._progress)  # Cancelled inside fill: Project.build removes the partial file
                self._progress.report(min(self._seen, total), total, "Saving the examples")
            self._seen += 1
            yield record


def create_project(project_path: str | os.PathLike[str], dataset: ImportedDataset, *, source_name: str,
                   task: str | None = None, label_meanings: Mapping[str, str] | None = None,
                   overwrite: bool = False, progress: Progress | None = None) -> Path:
    """Create a .pld project holding `dataset` and its run settings, atomically (the same steps as `pld init`).

    A failure or a cancellation (progress.cancel()) leaves no file behind and any existing file untouched.
    """
    settings = RunSettings(seed=int(dataset.split_settings.seed))
    if task is not None and task.strip():
        settings.task = task.strip()
    known = set(dataset.labels)
    settings.label_meanings = {k: v.strip() for k, v in (label_meanings or {}).items() if k in known and v.strip()}
    if progress is not None:
        progress.begin("Creating the project", 2 * len(dataset.rows))
    reporting = dataclasses.replace(dataset, rows=_ReportingRows(dataset.rows, progress))

    def fill(project: Project) -> None:
        project.store_dataset(reporting, source_name)
        save_settings(project, settings)

    Project.build(project_path, fill, overwrite=overwrite)
    if progress is not None:
        progress.report(2 * len(dataset.rows), 2 * len(dataset.rows), "Project created")
    return Path(project_path)

