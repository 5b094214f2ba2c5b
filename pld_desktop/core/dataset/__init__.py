"""Import a user's labelled CSV: read it safely, check it, render each row's input text and assign train/dev/test.

The steps live in their own modules: reading.py (bytes -> text -> DataFrame), records.py (the value types),
problems.py (what is wrong, in words), template.py, labels.py (look-alike labels), splitting.py and
building.py (every check, then the dataset). This module is the import's public face.
"""

from pld_desktop.core.dataset.building import build_dataset, load_dataset
from pld_desktop.core.dataset.problems import DatasetError, Problem
from pld_desktop.core.dataset.reading import preview_csv, read_csv, read_with_sha256
from pld_desktop.core.dataset.records import (
    MAX_CELL_CHARS,
    SPLITS,
    ColumnMapping,
    DatasetRow,
    ImportedDataset,
    RowTable,
    SplitSettings,
)
from pld_desktop.core.dataset.splitting import assign_splits
from pld_desktop.core.dataset.template import render_template

__all__ = [
    "MAX_CELL_CHARS",
    "SPLITS",
    "ColumnMapping",
    "DatasetError",
    "DatasetRow",
    "ImportedDataset",
    "Problem",
    "RowTable",
    "SplitSettings",
    "assign_splits",
    "build_dataset",
    "load_dataset",
    "preview_csv",
    "read_csv",
    "read_with_sha256",
    "render_template",
]
