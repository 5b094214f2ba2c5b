"""Issue 15, the import dialog's stalls: the reader works in short steps (no single call over the whole file
holds the GIL) and a checked dataset holds its rows by column (no per-row objects for the collector to walk).
Each step-wise path is checked against the one-call path it replaces, on generated inputs."""

from __future__ import annotations

import codecs
import gc
import io
import random
from pathlib import Path
from typing import Any

import pytest

from pld_desktop.core.dataset import (
    ColumnMapping,
    DatasetError,
    DatasetRow,
    RowTable,
    SplitSettings,
    load_dataset,
    read_csv,
)
from pld_desktop.core.dataset import reading as ds_reading
from pld_desktop.core.new_project import create_project
from pld_desktop.core.progress import ProgressBase
from pld_desktop.core.project import Project

_PIECES = ["a", "b", ",", '"', "\r", "\n", "\r\n", " ", "\u2028", "\x0b", "é", "\x85"]


def _stringio_lines(text: str) -> list[tuple[str, int]]:
    stream = io.StringIO(text, newline="")
    out = []
    while line := stream.readline():
        out.append((line, stream.tell()))
    return out


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1 << 20])
def test_lines_and_offsets_are_those_of_one_stringio(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds_reading._Lines, "STEP", step)
    rng = random.Random(step)
    for _ in range(3000):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 40)))
        lines = ds_reading._Lines(text)
        assert [(line, lines.offset) for line in lines] == _stringio_lines(text), repr(text)


def _decoded(raw: bytes, encoding: str, call: Any) -> Any:
    try:
        return call(raw, encoding)
    except UnicodeError as exc:  # the same class, message and positions
        return type(exc).__name__, str(exc), getattr(exc, "start", None), getattr(exc, "end", None)


@pytest.mark.parametrize("step", [1, 2, 3, 5])
def test_decoding_in_steps_gives_the_text_or_error_of_one_call(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds_reading, "_DECODE_STEP", step)
    rng = random.Random(step)

    def one_call(raw: bytes, encoding: str) -> str:
        text: str = codecs.getincrementaldecoder(encoding)(errors="strict").decode(raw, final=True)
        return text

    for encoding in ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"):
        for _ in range(300):
            text = "".join(rng.choice(["a", "é", "€", "𝄞", "\n", ","]) for _ in range(rng.randint(0, 14)))
            raw = text.encode(encoding)
            middle = len(raw) // 2
            for variant in (raw, raw[:-1], raw[1:], raw[:middle] + b"\xff" + raw[middle:]):
                assert (_decoded(variant, encoding, lambda r, e: ds_reading._decode_in_steps(r, e, True))
                        == _decoded(variant, encoding, one_call)), (encoding, variant)


def _awkward_csv(path: Path, rows: int, seed: int) -> Path:
    """Quoted values with commas, quotes and line breaks of every kind, so records cross the reader's steps."""
    rng = random.Random(seed)
    breaks = ["\n", "\r\n", "\r"]
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("id,text,label\r\n")
        for i in range(rows):
            text = "say " + "".join(rng.choice(["word ", "é ", ", ", '""', *breaks]) for _ in range(rng.randint(1, 12)))
            f.write(f'{i},"{text}",{rng.choice(["yes", "no"])}{rng.choice(breaks[:2])}')
    return path


def test_a_whole_file_read_in_small_steps_equals_the_file_read_in_one(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = _awkward_csv(tmp_path / "awkward.csv", 400, seed=3)
    whole, encoding = read_csv(path)
    monkeypatch.setattr(ds_reading._Lines, "STEP", 5)
    monkeypatch.setattr(ds_reading, "_DECODE_STEP", 7)
    stepped, stepped_encoding = read_csv(path)
    assert encoding == stepped_encoding == "utf-8"
    assert stepped.equals(whole) and list(stepped.index) == list(whole.index) and len(whole) == 400


def test_an_unclosed_quote_at_the_end_is_still_found_across_steps(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "open.csv"
    path.write_text("text,label\n" + "".join(f"row {i},a\n" for i in range(50)) + '"never closed,b\nmore,a\n',
                    encoding="utf-8")
    monkeypatch.setattr(ds_reading._Lines, "STEP", 16)
    with pytest.raises(DatasetError, match="never closed") as info:
        read_csv(path)
    assert "line 52" in str(info.value)


def _rows(n: int) -> list[DatasetRow]:
    return [DatasetRow(i + 2, f"id{i}", f"text {i}", "yes" if i % 3 else "no", ("train", "dev", "test")[i % 3],
                       None if i % 4 else f"g{i % 5}") for i in range(n)]


def test_a_row_table_reads_like_the_list_of_rows_it_holds() -> None:
    rows = _rows(10)
    table = RowTable.from_rows(rows)
    assert len(table) == 10 and list(table) == rows and table == rows and table == RowTable.from_rows(rows)
    assert table[3] == rows[3] and table[-1] == rows[-1] and table[2:5] == rows[2:5]
    assert table != _rows(9) and table != RowTable.from_rows(_rows(11))
    assert list(table.records())[1] == ("id1", 3, "text 1", "yes", "dev", None)
    with pytest.raises(ValueError):
        RowTable([1, 2], ["a"], ["t", "u"], ["x", "y"], ["train", "dev"], [None, None])


def test_a_checked_dataset_leaves_no_per_row_objects_for_the_collector(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("text,label\n" + "".join(f"example number {i},{'ab'[i % 2]}\n" for i in range(20_000)),
                    encoding="utf-8")
    gc.collect()
    before = len(gc.get_objects())
    dataset = load_dataset(path, ColumnMapping(("text",), "label"), SplitSettings())
    gc.collect()
    assert len(dataset.rows) == 20_000
    assert len(gc.get_objects()) - before < 2_000  # 20k row objects (the old list of rows) would be 20k more
    assert dataset.split_counts() == {s: sum(r.split == s for r in dataset.rows) for s in ("train", "dev", "test")}


class _Counting(ProgressBase):
    def __init__(self) -> None:
        super().__init__()
        self.reports: list[tuple[int, int]] = []

    def on_report(self, done: int, total: int, message: str) -> None:
        self.reports.append((done, total))


def test_a_stored_dataset_is_the_rows_in_order_with_its_hash(tmp_path: Path) -> None:
    path = _awkward_csv(tmp_path / "rows.csv", 300, seed=5)
    dataset = load_dataset(path, ColumnMapping(("text",), "label", id_column="id"), SplitSettings())
    progress = _Counting()
    project_path = create_project(tmp_path / "p.pld", dataset, source_name=path.name, progress=progress)
    with Project.open(project_path, read_only=True) as project:
        stored = project.examples()
        info = project.dataset_info()
    assert [(e.ext_id, e.text, e.label, e.split) for e in stored] == [
        (r.ext_id, r.text, r.label, r.split) for r in dataset.rows]
    assert info is not None and info["dataset_hash"] == dataset.dataset_hash() and info["n_rows"] == 300
    assert progress.reports[-1] == (600, 600)  # both passes over the rows (insert, hash) reported
