"""Building an ImportedDataset from a read CSV: every check, with row numbers, then the split."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pld_desktop.core.dataset.labels import (
    LABEL_MERGES,
    lookalike_label_warnings,
    merged_labels,
)
from pld_desktop.core.dataset.problems import (
    MAX_LISTED,
    DatasetError,
    Problem,
    quoted_list,
    rows_phrase,
    suggest_column,
)
from pld_desktop.core.dataset.reading import (
    read_with_sha256,
    user_facing_errors,
)
from pld_desktop.core.dataset.records import (
    ATTRS_WARNINGS,
    MAX_CELL_CHARS,
    SOURCE_ROW,
    SPLIT_ALIASES,
    SPLITS,
    ColumnMapping,
    ImportedDataset,
    RowTable,
    SplitSettings,
)
from pld_desktop.core.dataset.splitting import (
    assign_splits,
    group_split_warnings,
    source_splits,
)
from pld_desktop.core.dataset.template import (
    template_parts,
)

# --------------------------------------------------------------------------------------------------------------------
# Building a dataset from a DataFrame
# --------------------------------------------------------------------------------------------------------------------


def _as_text(series: pd.Series) -> pd.Series:
    """A column as stripped str values; missing values become ""."""
    if not (pd.api.types.is_string_dtype(series.dtype) and not pd.api.types.is_object_dtype(series.dtype)):
        series = series.astype(object).where(series.notna(), "").astype(str)
    return series.fillna("").str.strip()


def _column_problems(columns: list[str], mapping: ColumnMapping) -> tuple[list[Problem], list[Problem]]:
    """Every chosen column exists (errors) and no text column is chosen twice (a warning)."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    available = f" The file's columns are: {quoted_list(columns)}."

    def check(name: str | None, role: str) -> None:
        if name is None:
            return
        if not isinstance(name, str) or not name.strip():
            errors.append(Problem(f"The {role} is set to an empty column name. Choose one of the file's columns."))
        elif name not in columns:
            errors.append(Problem(
                f"The {role} '{name}' is not a column of this file.{suggest_column(name, columns)}{available}",
                column=name))

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
        warnings.append(Problem(f"The text column {quoted_list(duplicated)} is chosen more than once.",
                                severity="warning"))
    if mapping.keep_source_split and not mapping.split_column:
        errors.append(Problem("'Keep the file's own split' is on, but no split column is chosen."))
    return errors, warnings


def _template_problems(columns: list[str], mapping: ColumnMapping,
                       placeholders: list[str]) -> tuple[list[Problem], list[Problem]]:
    """A template names only existing columns, uses at least one, and every text column (else a warning)."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    if mapping.template is None or not mapping.template.strip():
        return errors, warnings
    available = f" The file's columns are: {quoted_list(columns)}."
    unknown = [p for p in dict.fromkeys(placeholders) if p not in columns]
    for name in unknown:
        errors.append(Problem(
            f"The template uses {{{name}}}, but the file has no column '{name}'.{suggest_column(name, columns)}"
            f"{available}", column=name))
    if not placeholders:
        errors.append(Problem(
            "The template does not use any column, so every example would have the same text. "
            "Put column names in braces, like {text}."))
    unused = [c for c in mapping.text_columns if c in columns and c not in placeholders]
    if unused:
        warnings.append(Problem(
            f"The text column {quoted_list(unused)} is not used by the template, so it is left out of the text.",
            severity="warning"))
    return errors, warnings


def _check_mapping(columns: list[str], mapping: ColumnMapping) -> tuple[list[Problem], list[Problem],
                                                                          list[tuple[str, bool]]]:
    """(errors, warnings, the template's parts) of a mapping against the file's columns."""
    errors, warnings = _column_problems(columns, mapping)
    parts: list[tuple[str, bool]] = []
    try:
        parts = template_parts(mapping.template, mapping.text_columns)
    except DatasetError as exc:
        errors.extend(exc.problems)
    placeholders = [name for name, is_column in parts if is_column]
    template_errors, template_warnings = _template_problems(columns, mapping, placeholders)
    errors += template_errors
    warnings += template_warnings
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
    return Problem(f"{rows_phrase(rows)} {multiple}", row=rows[0], column=column)


def _source_rows(df: pd.DataFrame) -> np.ndarray:
    if df.index.name == SOURCE_ROW and pd.api.types.is_integer_dtype(df.index.dtype):
        return np.asarray(df.index.to_numpy(dtype=np.int64))
    return np.arange(2, len(df) + 2, dtype=np.int64)  # a plain frame: header on line 1, rows follow


@dataclass
class _Findings:
    """The errors (blocking) and warnings collected by the steps of build_dataset, in the order found."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


@dataclass
class _Labels:
    values: pd.Series           # each row's label (merged if asked)
    counts: dict[str, int]      # label -> rows, sorted by label
    empty: np.ndarray           # rows without a label

    @property
    def names(self) -> list[str]:
        return list(self.counts)


def _check_settings(df: pd.DataFrame, columns: list[str], mapping: ColumnMapping, split: SplitSettings,
                    found: _Findings) -> list[tuple[str, bool]]:
    """The header, the mapping and the split settings; raises at once if the rows cannot be checked (no usable
    mapping, or no rows). Returns the template's parts; split-setting errors go into `found`."""
    errors = [Problem(f"The column name '{name}' appears more than once in the header. Rename one of them.",
                      row=1, column=name)
              for name in sorted({c for c in columns if columns.count(c) > 1})]
    mapping_errors, mapping_warnings, parts = _check_mapping(columns, mapping)
    errors += mapping_errors
    found.warnings += mapping_warnings
    split_errors = _check_split_settings(split)
    if len(df) == 0:
        errors.append(Problem("The file has a header row but no data rows.", row=1))
    if errors:  # without a usable mapping the rows cannot be checked
        raise DatasetError(errors + split_errors + found.warnings)
    found.errors += split_errors
    return parts


def _long_cell_problems(df: pd.DataFrame, used: list[str], rows_all: np.ndarray) -> list[Problem]:
    """Cells over the limit (on the raw values, before stripping): one problem per column."""
    problems = []
    for column in used:
        lengths = df[column].astype(str).str.len().to_numpy() if len(df) else np.zeros(0)
        too_long = np.flatnonzero(lengths > MAX_CELL_CHARS)
        if not len(too_long):
            continue
        listed = ", ".join(f"row {rows_all[i]} ({int(lengths[i]):,} characters)" for i in too_long[:MAX_LISTED])
        more = f" and {len(too_long) - MAX_LISTED} more rows" if len(too_long) > MAX_LISTED else ""
        first = int(rows_all[too_long[0]])
        if len(too_long) == 1:
            message = (f"Row {first}: the value in column '{column}' is {int(lengths[too_long[0]]):,} characters "
                       f"long; the limit is {MAX_CELL_CHARS:,}. Shorten it, or check for a missing quotation mark.")
        else:
            message = (f"Column '{column}' has values longer than the limit of {MAX_CELL_CHARS:,} characters: "
                       f"{listed}{more}. Shorten them, or check for a missing quotation mark.")
        problems.append(Problem(message, row=first, column=column))
    return problems


def _render_texts(values: dict[str, pd.Series], input_columns: list[str], parts: list[tuple[str, bool]],
                  rows_all: np.ndarray, found: _Findings) -> pd.Series:
    """Each row's input text from the template (line breaks normalised); rows whose text columns are all empty
    are reported."""
    n = len(rows_all)
    text_values = {c: values[c].str.replace("\r\n", "\n", regex=False).str.replace("\r", "\n", regex=False)
                   for c in input_columns}
    all_empty = np.ones(n, dtype=bool)
    for c in input_columns:
        all_empty &= (text_values[c].str.len() == 0).to_numpy()
    empty_rows = rows_all[all_empty].tolist()
    if empty_rows:
        what = f"column '{input_columns[0]}'" if len(input_columns) == 1 else \
            f"columns {quoted_list(input_columns)}"
        found.errors.append(_rows_problem(
            empty_rows, f"the text is empty ({what}).", f"have an empty text ({what}).",
            input_columns[0] if len(input_columns) == 1 else None))
    rendered: pd.Series | None = None
    for part, is_column in parts:
        piece: pd.Series | str = text_values[part] if is_column else part
        rendered = piece if rendered is None else rendered + piece
    if isinstance(rendered, str) or rendered is None:  # a template without columns: already reported
        rendered = pd.Series([rendered or ""] * n, dtype=str)
    return rendered.str.strip()


def _check_labels(label_values: pd.Series, mapping: ColumnMapping, rows_all: np.ndarray,
                  found: _Findings) -> _Labels:
    """Merge look-alike labels if asked (else warn about them); report empty labels and fewer than two labels."""
    if mapping.merge_labels is not None:
        if mapping.merge_labels not in LABEL_MERGES:
            raise DatasetError(Problem(f"Unknown way to merge look-alike labels '{mapping.merge_labels}'; "
                                       f"choose {' or '.join(LABEL_MERGES)}."))
        label_values = label_values.map(merged_labels(label_values.tolist(), mapping.merge_labels))
    found.warnings += lookalike_label_warnings(label_values.tolist(), rows_all.tolist(), mapping.label_column,
                                               mapping.merge_labels)
    label_empty = (label_values.str.len() == 0).to_numpy()
    if label_empty.any():
        found.errors.append(_rows_problem(rows_all[label_empty].tolist(), "the label is empty.",
                                          "have an empty label.", mapping.label_column))
    label_counts_series = label_values[~label_empty].value_counts()
    counts = {str(k): int(v) for k, v in sorted(label_counts_series.items(), key=lambda kv: str(kv[0]))}
    if len(counts) < 2:
        found_labels = f"only the label '{next(iter(counts))}'" if counts else "no labels"
        found.errors.append(Problem(
            f"The label column '{mapping.label_column}' has {found_labels}. At least two different labels are "
            "needed to learn a classification.", column=mapping.label_column))
    return _Labels(values=label_values, counts=counts, empty=label_empty)


def _duplicate_id_problems(ids: pd.Series, id_empty: np.ndarray, rows_all: np.ndarray,
                           column: str) -> list[Problem]:
    duplicated_mask = ids.duplicated(keep=False).to_numpy() & ~id_empty
    if not duplicated_mask.any():
        return []
    problems = []
    dup = pd.DataFrame({"id": ids[duplicated_mask].to_numpy(), "row": rows_all[duplicated_mask]})
    grouped = dup.groupby("id", sort=False)["row"].apply(list)
    for count, (ext_id, dup_rows) in enumerate(grouped.items()):
        if count == MAX_LISTED:
            problems.append(Problem(f"{len(grouped) - MAX_LISTED} more ids also appear more than once.",
                                    column=column))
            break
        where = f"rows {dup_rows[0]} and {dup_rows[1]}" if len(dup_rows) == 2 else \
            f"{len(dup_rows)} rows ({rows_phrase(dup_rows)[5:]})"
        problems.append(Problem(f"The id '{ext_id}' appears on {where}; every id must be unique.",
                                row=int(dup_rows[1]), column=column))
    return problems


def _external_ids(values: dict[str, pd.Series], mapping: ColumnMapping, rows_all: np.ndarray,
                  found: _Findings) -> list[str]:
    """Each row's id: the id column's values (none empty, none repeated), else the row's line number."""
    if mapping.id_column is None:
        return [str(r) for r in rows_all.tolist()]
    ids = values[mapping.id_column]
    id_empty = (ids.str.len() == 0).to_numpy()
    if id_empty.any():
        found.errors.append(_rows_problem(rows_all[id_empty].tolist(), "the id is empty.", "have an empty id.",
                                          mapping.id_column))
    found.errors += _duplicate_id_problems(ids, id_empty, rows_all, mapping.id_column)
    return list(ids.tolist())


def _file_splits(column: pd.Series, column_name: str, split: SplitSettings, labels: _Labels,
                 group_list: list[str | None] | None, rows_all: np.ndarray, settings_ok: bool,
                 found: _Findings) -> list[str]:
    """The file's own split (mapping.keep_source_split), checked; [] when its values are not all known."""
    source = column.str.lower().map(SPLIT_ALIASES)
    unknown = source.isna().to_numpy()
    if unknown.any():
        bad_values = list(dict.fromkeys(column[unknown].tolist()))
        shown = quoted_list(bad_values, limit=5).replace("''", "(empty)")
        found.errors.append(_rows_problem(
            rows_all[unknown].tolist(),
            f"the split value {shown} is not one of train, dev (or validation) and test.",
            f"have a split value that is not one of train, dev (or validation) and test: {shown}.",
            column_name))
        return []
    if not settings_ok:
        return []
    splits, source_errors, source_warnings = source_splits(
        source.tolist(), labels.values.tolist(), group_list, labels.names, split)
    found.errors += source_errors
    found.warnings += source_warnings
    return splits


def _too_few_rows_problems(labels: _Labels, mapping: ColumnMapping, split: SplitSettings) -> list[Problem]:
    """Labels with fewer rows than there are splits to fill."""
    needed = sum(1 for r in split.ratios() if r > 0)
    return [Problem(
        f"The label '{label}' has only {count} row{'s' if count != 1 else ''}; each label needs at least "
        f"{needed} rows so that it appears in train, dev and test. Add more examples of it or remove "
        "its rows.", column=mapping.label_column)
        for label, count in labels.counts.items() if count < needed]


def build_dataset(df: pd.DataFrame, mapping: ColumnMapping, split: SplitSettings, *, source_sha256: str = "",
                  encoding: str = "utf-8") -> ImportedDataset:
    """Check a read CSV against the mapping, render texts, assign splits. Raises DatasetError listing all problems.

    A DataFrame from read_csv carries each row's line number in its index; for any other DataFrame row i
    (0-based) is taken to be line i + 2 of the file.
    """
    found = _Findings(warnings=list(df.attrs.get(ATTRS_WARNINGS, [])))
    columns = [str(c) for c in df.columns]
    df = df.set_axis(columns, axis=1)
    parts = _check_settings(df, columns, mapping, split, found)
    settings_ok = not found.errors

    rows_all = _source_rows(df)
    input_columns = list(dict.fromkeys(name for name, is_column in parts if is_column))
    used = [c for c in dict.fromkeys(
        [*input_columns, mapping.label_column, mapping.id_column, mapping.split_column, mapping.group_column])
        if c is not None]
    values: dict[str, pd.Series] = {c: _as_text(df[c]).reset_index(drop=True) for c in used}

    found.errors += _long_cell_problems(df, used, rows_all)
    texts = _render_texts(values, input_columns, parts, rows_all, found)
    labels = _check_labels(values[mapping.label_column], mapping, rows_all, found)
    ext_ids = _external_ids(values, mapping, rows_all, found)
    group_list: list[str | None] | None = None
    if mapping.group_column is not None:
        group_list = [g if g else None for g in values[mapping.group_column].tolist()]
    splits: list[str] = []
    if mapping.keep_source_split and mapping.split_column is not None:
        splits = _file_splits(values[mapping.split_column], mapping.split_column, split, labels, group_list,
                              rows_all, settings_ok, found)
    else:
        found.errors += _too_few_rows_problems(labels, mapping, split)
    if found.errors:
        raise DatasetError(found.errors + found.warnings)

    label_list = labels.values.tolist()
    if not splits:
        splits = assign_splits(label_list, group_list, split)
        if group_list is not None and any(g is not None for g in group_list):
            found.warnings += group_split_warnings(splits, label_list, labels.names, split)
    rows = RowTable([int(r) for r in rows_all.tolist()], ext_ids, texts.tolist(), label_list, list(splits),
                    list(group_list) if group_list is not None else [None] * len(label_list))
    return ImportedDataset(rows=rows, labels=labels.names, label_counts=labels.counts, columns=columns,
                           mapping=mapping, split_settings=split, source_sha256=source_sha256, encoding=encoding,
                           warnings=found.warnings)


def load_dataset(path: str | os.PathLike[str], mapping: ColumnMapping,
                 split: SplitSettings = SplitSettings()) -> ImportedDataset:
    """Read a CSV and build the dataset from it (read_csv + build_dataset). Raises DatasetError."""
    df, encoding, sha = read_with_sha256(path)
    with user_facing_errors("The data could not be imported"):
        return build_dataset(df, mapping, split, source_sha256=sha, encoding=encoding)
