"""Tests for CSV import: reading, validation messages, template rendering and train/dev/test splitting."""

from __future__ import annotations

import codecs
import csv
import os
import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from pld_desktop.core.dataset import (
    MAX_CELL_CHARS,
    ColumnMapping,
    DatasetError,
    ImportedDataset,
    Problem,
    SplitSettings,
    assign_splits,
    build_dataset,
    load_dataset,
    preview_csv,
    read_csv,
    render_template,
)
from pld_desktop.core.dataset import reading as ds_reading

FIXTURES = Path(__file__).parents[1] / "fixtures" / "csv"
TREC = Path("/work/shared/data/trec.csv")
BASIC = ColumnMapping(text_columns=("text",), label_column="label", id_column="id")


def write(tmp_path: Path, content: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    lines = [",".join(header)] + [",".join(r) for r in rows]
    return "\n".join(lines) + "\n"


def balanced_rows(n_per_label: int = 3, labels: tuple[str, ...] = ("pos", "neg")) -> list[list[str]]:
    rows = []
    for label in labels:
        for i in range(n_per_label):
            rows.append([f"{label}{i}", f"text about {label} number {i}", label])
    return rows


def import_error(path: Path, mapping: ColumnMapping = BASIC, split: SplitSettings = SplitSettings()) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_dataset(path, mapping, split)
    return info.value


def build_error(df: pd.DataFrame, mapping: ColumnMapping = BASIC,
                split: SplitSettings = SplitSettings()) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        build_dataset(df, mapping, split)
    return info.value


def messages(error: DatasetError) -> str:
    return "\n".join(p.message for p in error.problems)


# ---------------------------------------------------------------------------------------------------------------------
# Reading the file
# ---------------------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    error = import_error(tmp_path / "nope.csv")
    assert "does not exist" in str(error)
    assert "nope.csv" in str(error)


def test_directory(tmp_path: Path) -> None:
    error = import_error(tmp_path)
    assert "folder" in str(error)
    with pytest.raises(DatasetError):
        preview_csv(tmp_path)


def test_no_read_permission_via_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, csv_text(["id", "text", "label"], balanced_rows()))

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ds_reading, "open", refuse, raising=False)
    error = import_error(path)
    assert "permission" in str(error)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_no_read_permission_chmod(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(["id", "text", "label"], balanced_rows()))
    path.chmod(0)
    try:
        assert "permission" in str(import_error(path))
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("content", [b"", b"   \n\n \r\n\t", codecs.BOM_UTF8, codecs.BOM_UTF8 + b"\n\n",
                                     "\n \n".encode("utf-16")])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path, content)
    assert "empty" in str(import_error(path))
    with pytest.raises(DatasetError, match="empty"):
        preview_csv(path)


@pytest.mark.parametrize("content", ["id,text,label\n", "id,text,label", "id,text,label\n\n\n", "id,text,label\n,,\n"])
def test_header_only(tmp_path: Path, content: str) -> None:
    error = import_error(write(tmp_path, content))
    assert "no data rows" in str(error)
    assert error.problems[0].row == 1


def test_header_only_fixture() -> None:
    assert "no data rows" in str(import_error(FIXTURES / "header_only.csv"))


def test_utf8_bom_gives_clean_first_column() -> None:
    df, encoding = read_csv(FIXTURES / "utf8_bom.csv")
    assert list(df.columns) == ["id", "text", "label"]
    assert encoding == "utf-8-sig"
    assert df["text"].iloc[0] == "Café au lait"
    dataset = load_dataset(FIXTURES / "utf8_bom.csv", BASIC)
    assert dataset.rows[0].ext_id == "1"
    assert dataset.encoding == "utf-8-sig"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be-bom", "utf-16-le-nobom", "utf-32"])
def test_utf16_and_utf32_load(tmp_path: Path, encoding: str) -> None:
    text = csv_text(["id", "text", "label"], balanced_rows()).replace("text about pos", "texte à propos de pos")
    if encoding == "utf-16-be-bom":
        raw = codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    elif encoding == "utf-16-le-nobom":
        raw = text.encode("utf-16-le")
    else:
        raw = text.encode(encoding)
    df, used = read_csv(write(tmp_path, raw))
    assert list(df.columns) == ["id", "text", "label"]
    assert df["text"].iloc[0] == "texte à propos de pos number 0"
    assert used.startswith("utf-16") or used == "utf-32"


def test_utf16_fixture_with_crlf() -> None:
    dataset = load_dataset(FIXTURES / "utf16_bom.csv", BASIC)
    assert dataset.encoding == "utf-16"
    assert [r.text for r in dataset.rows][:2] == ["Café au lait", "Crème brûlée is great"]
    assert dataset.labels == ["negative", "positive"]


def test_latin1_gives_clear_message_with_line() -> None:
    error = import_error(FIXTURES / "latin1.csv")
    message = str(error)
    assert "not valid UTF-8" in message
    assert "0xE9" in message
    assert "line 2" in message
    assert "CSV UTF-8" in message
    assert "3, 4" in message  # other lines with bad bytes are listed


def test_latin1_bad_byte_late_in_file(tmp_path: Path) -> None:
    rows = balanced_rows(10)
    rows[11][1] = "na\xefve"  # data row 12 -> line 13
    raw = csv_text(["id", "text", "label"], rows).encode("latin-1")
    message = str(import_error(write(tmp_path, raw)))
    assert "byte 0xEF on line 13" in message


def test_latin1_preview_also_fails_clearly() -> None:
    with pytest.raises(DatasetError, match="line 2"):
        preview_csv(FIXTURES / "latin1.csv")


@pytest.mark.parametrize("raw, line", [
    (b"id,text,label\n1,ok,a\n2,bad\x00text,b\n3,ok,b\n", 3),
    (b"a,b\n1,2\x00\n", 2),
    (b"id,text,label\n" + b"1,ok,a\n" * 300 + b"2,bad\x00\x00text,b\n", 302),
])
def test_nul_byte_names_line(tmp_path: Path, raw: bytes, line: int) -> None:
    message = str(import_error(write(tmp_path, raw)))
    assert "NUL" in message
    assert f"line {line}" in message


@pytest.mark.parametrize("raw", [
    b"PK\x03\x04" + bytes(range(256)) * 4,
    b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    random.Random(1).randbytes(5000),
    b"\x00\x01\x02\x03\x04\x05" * 200,
])
def test_binary_file(tmp_path: Path, raw: bytes) -> None:
    message = str(import_error(write(tmp_path, raw, "renamed.csv")))
    assert "does not look like a text CSV" in message


def test_xlsx_is_named(tmp_path: Path) -> None:
    message = str(import_error(write(tmp_path, b"PK\x03\x04" + b"\x00" * 100, "book.csv")))
    assert "Excel" in message


def test_ragged_row_names_row_and_line() -> None:
    error = import_error(FIXTURES / "ragged.csv")
    assert len(error.problems) == 1
    problem = error.problems[0]
    assert problem.row == 3
    assert "Row 3" in problem.message and "line 3" in problem.message
    assert "4 values" in problem.message and "3 columns" in problem.message


def test_ragged_rows_all_reported(tmp_path: Path) -> None:
    rows = [[str(i), f"t{i}", "a" if i % 2 else "b"] for i in range(30)]
    for i in (4, 7, 9):
        rows[i].append("extra")
    error = import_error(write(tmp_path, csv_text(["id", "text", "label"], rows)))
    assert [p.row for p in error.problems] == [6, 9, 11]


def test_ragged_row_spanning_lines_mentions_quote(tmp_path: Path) -> None:
    content = 'id,text,label\n1,"multi\nline",a,oops\n2,x,b\n'
    error = import_error(write(tmp_path, content))
    assert error.problems[0].row == 2
    assert "lines 2-3" in error.problems[0].message


def test_header_with_too_few_names(tmp_path: Path) -> None:
    content = "text,label\n" + "".join(f"{i},{r[1]},{r[2]}\n" for i, r in enumerate(balanced_rows()))
    error = import_error(write(tmp_path, content))
    assert len(error.problems) == 1
    assert "Every row has 3 values but the header names only 2 columns" in str(error)


def test_trailing_empty_fields_are_ignored(tmp_path: Path) -> None:
    rows = [r + ["", ""] for r in balanced_rows()]
    df, _ = read_csv(write(tmp_path, csv_text(["id", "text", "label"], rows)))
    assert list(df.columns) == ["id", "text", "label"]


def test_short_rows_are_padded(tmp_path: Path) -> None:
    content = "id,text,label,note\n" + "".join(f"{r[0]},{r[1]},{r[2]}\n" for r in balanced_rows())
    df, _ = read_csv(write(tmp_path, content))
    assert (df["note"] == "").all()
    assert len(load_dataset(write(tmp_path, content), BASIC).rows) == 6


def test_unterminated_quote() -> None:
    error = import_error(FIXTURES / "unterminated_quote.csv")
    problem = error.problems[0]
    assert "quotation mark" in problem.message and "never closed" in problem.message
    assert problem.row == 3
    assert "line 3" in problem.message


def test_unterminated_quote_swallowing_huge_text(tmp_path: Path) -> None:
    content = 'id,text,label\n1,"open\n' + ("lots of text, " * 20000) + "\n2,x,b\n"
    message = str(import_error(write(tmp_path, content)))
    assert "quotation mark" in message
    assert "Row 2" in message


def test_na_and_null_stay_text(tmp_path: Path) -> None:
    rows = [["1", "NA", "null"], ["2", "None", "NaN"], ["3", "n/a", "null"], ["4", "#N/A", "NaN"],
            ["5", "nan", "null"], ["6", "NULL", "NaN"]]
    path = write(tmp_path, csv_text(["id", "text", "label"], rows))
    df, _ = read_csv(path)
    assert df["text"].tolist()[:2] == ["NA", "None"]
    dataset = load_dataset(path, BASIC)
    assert dataset.labels == ["NaN", "null"]
    assert [r.text for r in dataset.rows][:2] == ["NA", "None"]


def test_read_csv_columns_are_str_and_index_is_source_row(tmp_path: Path) -> None:
    content = "id,text,label\n1,x,a\n\n2,007,b\n"
    df, encoding = read_csv(write(tmp_path, content))
    assert encoding == "utf-8"
    assert df["text"].tolist() == ["x", "007"]
    assert all(pd.api.types.is_string_dtype(t) for t in df.dtypes)
    assert df.index.tolist() == [2, 4]  # the blank line is row 3


def test_blank_rows_keep_row_numbers(tmp_path: Path) -> None:
    content = "id,text,label\n1,x,a\n\n,,\n2,,b\n3,y,a\n"
    error = import_error(write(tmp_path, content))
    assert "Row 5: the text is empty" in str(error)


def test_quoted_fields_with_commas_and_newlines(tmp_path: Path) -> None:
    content = 'id,text,label\n1,"a, b",x\n2,"line one\r\nline two",y\n3,"say ""hi""",x\n4,plain,y\n5,p,x\n6,q,y\n'
    dataset = load_dataset(write(tmp_path, content), BASIC)
    texts = {r.ext_id: r.text for r in dataset.rows}
    assert texts["1"] == "a, b"
    assert texts["2"] == "line one\nline two"
    assert texts["3"] == 'say "hi"'
    assert [r.source_row for r in dataset.rows] == [2, 3, 4, 5, 6, 7]


def test_semicolon_and_tab_separated(tmp_path: Path) -> None:
    for sep in (";", "\t"):
        content = sep.join(["id", "text", "label"]) + "\n" + "".join(
            sep.join(r) + "\n" for r in balanced_rows())
        df, _ = read_csv(write(tmp_path, content, f"sep{ord(sep)}.csv"))
        assert list(df.columns) == ["id", "text", "label"]


def test_duplicate_header_names(tmp_path: Path) -> None:
    error = import_error(write(tmp_path, "id,text,text,label\n1,a,b,c\n"))
    problem = error.problems[0]
    assert "'text'" in problem.message and "more than once" in problem.message
    assert problem.column == "text" and problem.row == 1


def test_header_names_are_stripped_and_unnamed_columns_handled(tmp_path: Path) -> None:
    content = " id , text ,label,,\n" + "".join(f"{r[0]},{r[1]},{r[2]},,\n" for r in balanced_rows())
    df, _ = read_csv(write(tmp_path, content))
    assert list(df.columns) == ["id", "text", "label"]
    content = ",text,label\n" + "".join(f"{i},{r[1]},{r[2]}\n" for i, r in enumerate(balanced_rows()))
    df, _ = read_csv(write(tmp_path, content))
    assert list(df.columns) == ["Column 1", "text", "label"]
    dataset = load_dataset(write(tmp_path, content), ColumnMapping(("text",), "label"))
    assert any("no name" in w.message for w in dataset.warnings)


def test_crlf_and_cr_line_endings(tmp_path: Path) -> None:
    for newline in ("\r\n", "\r"):
        content = csv_text(["id", "text", "label"], balanced_rows()).replace("\n", newline)
        dataset = load_dataset(write(tmp_path, content), BASIC)
        assert len(dataset.rows) == 6
        assert dataset.rows[-1].source_row == 7


def test_preview_reads_first_rows_only(tmp_path: Path) -> None:
    rows = [[str(i), "x" * 200 + str(i), "ab"[i % 2]] for i in range(20000)]  # ~4 MB, more than the preview reads
    path = write(tmp_path, csv_text(["id", "text", "label"], rows))
    df, encoding = preview_csv(path, n_rows=5)
    assert len(df) == 5 and encoding == "utf-8"
    assert df["id"].tolist() == ["0", "1", "2", "3", "4"]
    df, _ = preview_csv(path, n_rows=100000)
    assert 0 < len(df) < 20000
    assert df["text"].iloc[-1].startswith("x" * 200)  # no truncated last row
    small, _ = preview_csv(FIXTURES / "contracts.csv", n_rows=3)
    assert small["id"].tolist() == ["c1", "c2", "c3"]


def test_preview_reports_the_same_errors() -> None:
    with pytest.raises(DatasetError, match="Row 3"):
        preview_csv(FIXTURES / "ragged.csv")
    with pytest.raises(DatasetError, match="never"):
        preview_csv(FIXTURES / "unterminated_quote.csv")


AWKWARD_INPUTS: list[bytes] = [
    b"", b"\n", b",", b",,,\n,,,", b'"', b'""', b'"""', b"a", b"a\n", b"a\nb", b"a,b\n1", b"\xff\xfe", b"\xfe\xff\x00",
    b"\xef\xbb\xbf", b"\xff\xfe\x00\x00", b"id,text,label\n\x00", b"id,text,label\n1,\xff,a", "é".encode("utf-16-le"),
    b"\xff\xfea\x00b", b"\r\r\r", b"id,text,label\n" + b"1,x,a\n" * 3, b'id,text,label\n1,"x"y,a\n2,z,b\n',
    b"text,label\n" + b"x,a\n" * 5 + b"y,b\n" * 5, b"\ttext\tlabel", b"{}", b"<html><body>hi</body></html>",
]


@pytest.mark.parametrize("raw", AWKWARD_INPUTS)
def test_awkward_inputs_only_raise_dataset_error(tmp_path: Path, raw: bytes) -> None:
    path = write(tmp_path, raw)
    for call in (lambda: read_csv(path), lambda: preview_csv(path),
                 lambda: load_dataset(path, ColumnMapping(("text",), "label"))):
        try:
            call()
        except DatasetError as exc:
            assert exc.problems and all(isinstance(p, Problem) and p.message for p in exc.problems)
            assert str(exc)


# ---------------------------------------------------------------------------------------------------------------------
# Mapping and template problems
# ---------------------------------------------------------------------------------------------------------------------


def frame(rows: list[list[str]], columns: tuple[str, ...] = ("id", "text", "label")) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns), dtype=str)


def test_unknown_column_suggests_close_match() -> None:
    error = build_error(frame(balanced_rows()), ColumnMapping(("txt",), "lable", id_column="ID"))
    text = messages(error)
    assert "'txt'" in text and "Did you mean 'text'?" in text
    assert "'lable'" in text and "Did you mean 'label'?" in text
    assert "Did you mean 'id'?" in text
    assert "'id', 'text', 'label'" in text  # the available columns are listed
    assert len(error.problems) == 3


def test_template_placeholders_that_are_not_columns() -> None:
    mapping = ColumnMapping(("text",), "label", template="Q: {text}\nContext: {contxt} {other}")
    error = build_error(frame(balanced_rows()), mapping)
    text = messages(error)
    assert "{contxt}" in text and "{other}" in text
    assert {p.column for p in error.problems} == {"contxt", "other"}


@pytest.mark.parametrize("template", ["Q: {text", "Q: text}", "Q: {}"])
def test_template_syntax_errors(template: str) -> None:
    error = build_error(frame(balanced_rows()), ColumnMapping(("text",), "label", template=template))
    assert "template" in str(error)


def test_label_used_as_text_is_refused() -> None:
    error = build_error(frame(balanced_rows()), ColumnMapping(("text", "label"), "label"))
    assert "would see the answer" in str(error)


def test_no_text_columns() -> None:
    assert "at least one column" in str(build_error(frame(balanced_rows()), ColumnMapping((), "label")))


def test_keep_source_split_without_split_column() -> None:
    error = build_error(frame(balanced_rows()), ColumnMapping(("text",), "label", keep_source_split=True))
    assert "no split column" in str(error)


def test_duplicate_columns_in_dataframe() -> None:
    df = pd.DataFrame([["a", "b", "c"]], columns=["text", "text", "label"])
    assert "more than once" in str(build_error(df, ColumnMapping(("text",), "label")))


def test_plain_dataframe_with_non_str_values() -> None:
    df = pd.DataFrame({"text": ["a", "b", None, "d", 5, 6.5], "label": [1, 1, 1, 2, 2, 2]})
    error = build_error(df, ColumnMapping(("text",), "label"))
    assert "Row 4: the text is empty" in str(error)
    df.loc[2, "text"] = "c"
    dataset = build_dataset(df, ColumnMapping(("text",), "label"), SplitSettings())
    assert dataset.labels == ["1", "2"]
    assert [r.text for r in dataset.rows] == ["a", "b", "c", "d", "5", "6.5"]
    assert [r.source_row for r in dataset.rows] == [2, 3, 4, 5, 6, 7]


# ---------------------------------------------------------------------------------------------------------------------
# Row problems
# ---------------------------------------------------------------------------------------------------------------------


def test_empty_label_rows_are_listed_capped_and_counted() -> None:
    rows = balanced_rows(30)
    empty = [3, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 40, 41]
    for i in empty:
        rows[i][2] = "  "
    error = build_error(frame(rows))
    problem = next(p for p in error.problems if "label" in p.message and "empty" in p.message)
    assert problem.message == "Rows 5, 9, 12, 13, 14, 15, 16, 17, 18, 19 and 5 more have an empty label."
    assert problem.row == 5 and problem.column == "label"


def test_single_empty_label() -> None:
    rows = balanced_rows()
    rows[2][2] = ""
    error = build_error(frame(rows))
    assert any(p.message == "Row 4: the label is empty." for p in error.problems)


def test_empty_text_after_rendering() -> None:
    rows = [[f"{i}", f"c{i}", f"h{i}", "ab"[i % 2]] for i in range(8)]
    rows[3][1] = rows[3][2] = " "
    rows[5][1] = ""  # only one of the two input columns empty: fine
    mapping = ColumnMapping(("contract", "hypothesis"), "label", id_column="id")
    error = build_error(frame(rows, ("id", "contract", "hypothesis", "label")), mapping)
    assert len(error.problems) == 1
    assert error.problems[0].message.startswith("Row 5: the text is empty")


def test_duplicate_ids_name_id_and_both_rows() -> None:
    rows = balanced_rows(5)
    rows[6][0] = rows[1][0]
    error = build_error(frame(rows))
    problem = error.problems[0]
    assert f"'{rows[1][0]}'" in problem.message
    assert "rows 3 and 8" in problem.message
    assert problem.row == 8 and problem.column == "id"


def test_empty_ids_are_a_problem() -> None:
    rows = balanced_rows(5)
    rows[0][0] = ""
    assert "Row 2: the id is empty." in messages(build_error(frame(rows)))


def test_fewer_than_two_labels() -> None:
    rows = [[str(i), f"t{i}", "only"] for i in range(10)]
    error = build_error(frame(rows))
    assert "only the label 'only'" in str(error) and "two different labels" in str(error)


def test_label_with_too_few_rows() -> None:
    rows = balanced_rows(5) + [["r1", "rare one", "rare"], ["r2", "rare two", "rare"]]
    error = build_error(frame(rows))
    assert len(error.problems) == 1
    message = error.problems[0].message
    assert "'rare'" in message and "only 2 rows" in message and "at least 3" in message


def test_cell_longer_than_limit() -> None:
    rows = balanced_rows()
    rows[4][1] = "x" * (MAX_CELL_CHARS + 5)
    error = build_error(frame(rows))
    problem = error.problems[0]
    assert problem.row == 6 and problem.column == "text"
    assert f"{MAX_CELL_CHARS + 5:,}" in problem.message and "Row 6" in problem.message


def test_cell_too_long_from_file(tmp_path: Path) -> None:
    rows = balanced_rows()
    rows[1][1] = '"' + "y" * (MAX_CELL_CHARS + 1) + '"'
    error = import_error(write(tmp_path, csv_text(["id", "text", "label"], rows)))
    assert error.problems[0].row == 3 and "'text'" in error.problems[0].message


@pytest.mark.parametrize("split, expected", [
    (SplitSettings(0.5, 0.2, 0.2), "add up to 0.9"),
    (SplitSettings(0.8, 0.2, 0.0), "test proportion is 0"),
    (SplitSettings(1.2, -0.1, -0.1), "dev proportion is -0.1"),
])
def test_split_ratios_are_checked(split: SplitSettings, expected: str) -> None:
    assert expected in messages(build_error(frame(balanced_rows(5)), BASIC, split))


def test_all_problems_are_listed_together() -> None:
    rows = balanced_rows(5) + [["x", "lonely", "rare"]]
    rows[0][2] = ""
    rows[2][1] = ""
    rows[3][0] = rows[4][0]
    error = build_error(frame(rows), BASIC, SplitSettings(0.7, 0.2, 0.2))
    text = messages(error)
    for fragment in ("label is empty", "text is empty", "appears on rows", "'rare' has only 1 row", "add up to 1.1"):
        assert fragment in text
    assert "5 problems" in str(error)


def test_error_summary_lists_first_ten_and_counts_rest() -> None:
    error = DatasetError([Problem(f"Problem {i}.") for i in range(25)])
    text = str(error)
    assert "Problem 9." in text and "Problem 10." not in text
    assert "and 15 more" in text


def test_whitespace_is_stripped_and_label_case_kept() -> None:
    rows = [["1", "  padded text \n", " Pos "], ["2", "b", "Pos"], ["3", "c", "pos"], ["4", "d", "pos"],
            ["5", "e", "Pos"], ["6", "f", "pos"]]
    dataset = build_dataset(frame(rows), BASIC, SplitSettings())
    assert dataset.rows[0].text == "padded text"
    assert dataset.rows[0].label == "Pos"
    assert dataset.labels == ["Pos", "pos"]
    assert dataset.label_counts == {"Pos": 3, "pos": 3}


def test_imported_dataset_fields(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(["id", "text", "label", "extra"], [r + ["z"] for r in balanced_rows()]))
    dataset = load_dataset(path, BASIC)
    assert isinstance(dataset, ImportedDataset)
    assert dataset.columns == ["id", "text", "label", "extra"]
    assert dataset.labels == ["neg", "pos"] and dataset.label_counts == {"neg": 3, "pos": 3}
    assert len(dataset.source_sha256) == 64
    assert dataset.source_sha256 == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert dataset.encoding == "utf-8"
    assert dataset.mapping == BASIC and dataset.split_settings == SplitSettings()
    assert Counter(r.split for r in dataset.rows) == {"train": 2, "dev": 2, "test": 2}
    no_id = load_dataset(path, ColumnMapping(("text",), "label"))
    assert [r.ext_id for r in no_id.rows] == ["2", "3", "4", "5", "6", "7"]


def test_dataset_hash_is_stable_and_sensitive(tmp_path: Path) -> None:
    path = write(tmp_path, csv_text(["id", "text", "label"], balanced_rows(10)))
    first = load_dataset(path, BASIC).dataset_hash()
    assert first == load_dataset(path, BASIC).dataset_hash()
    assert len(first) == 64
    other = load_dataset(path, BASIC, SplitSettings(seed=99)).dataset_hash()
    assert other != first
    rows = balanced_rows(10)
    rows[0][1] = "changed"
    changed = write(tmp_path, csv_text(["id", "text", "label"], rows), "b.csv")
    assert load_dataset(changed, BASIC).dataset_hash() != first


# ---------------------------------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------------------------------


def test_render_template_variants() -> None:
    record = {"contract": " The party shall... ", "hypothesis": "Secret.\r\nReally.", "label": "x"}
    assert render_template(None, ("contract",), record) == "The party shall..."
    assert render_template(None, ("contract", "hypothesis"), record) == \
        "contract: The party shall...\nhypothesis: Secret.\nReally."
    assert render_template("Contract: {contract}\nHypothesis: {hypothesis}", ("contract", "hypothesis"), record) == \
        "Contract: The party shall...\nHypothesis: Secret.\nReally."
    assert render_template("{{literal}} {contract}", ("contract",), record) == "{literal} The party shall..."
    assert render_template("{ contract }", ("contract",), record) == "The party shall..."
    with pytest.raises(DatasetError, match="missing"):
        render_template("{missing}", ("contract",), record)
    with pytest.raises(DatasetError):
        render_template("{contract", ("contract",), record)


def test_template_with_several_columns_from_file() -> None:
    template = "Contract: {contract}\nHypothesis: {hypothesis}"
    mapping = ColumnMapping(("contract", "hypothesis"), "label", template=template, id_column="id")
    dataset = load_dataset(FIXTURES / "contracts.csv", mapping)
    first = dataset.rows[0]
    assert first.text == ("Contract: The party shall keep all information secret.\n"
                          "Hypothesis: Information is confidential.")
    assert first.ext_id == "c1"
    df, _ = read_csv(FIXTURES / "contracts.csv")
    for row, (_, record) in zip(dataset.rows, df.iterrows()):
        assert row.text == render_template(template, mapping.text_columns, record.to_dict())
    default = load_dataset(FIXTURES / "contracts.csv", ColumnMapping(("contract", "hypothesis"), "label"))
    assert default.rows[1].text == "contract: The agreement ends in 2025.\nhypothesis: The agreement is perpetual."


def test_template_may_use_columns_outside_text_columns() -> None:
    rows = [[str(i), f"t{i}", "ab"[i % 2], f"src{i}"] for i in range(6)]
    mapping = ColumnMapping(("text",), "label", template="[{source}] {text}")
    dataset = build_dataset(frame(rows, ("id", "text", "label", "source")), mapping, SplitSettings())
    assert dataset.rows[0].text == "[src0] t0"


def test_unused_text_column_warns() -> None:
    rows = [[str(i), f"t{i}", "ab"[i % 2], f"s{i}"] for i in range(6)]
    mapping = ColumnMapping(("text", "source"), "label", template="{text}")
    dataset = build_dataset(frame(rows, ("id", "text", "label", "source")), mapping, SplitSettings())
    assert any("'source'" in w.message and w.severity == "warning" for w in dataset.warnings)


# ---------------------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------------------


def thousand_labels() -> list[str]:
    rng = random.Random(5)
    return [rng.choice(["a"] * 6 + ["b"] * 3 + ["c"]) for _ in range(1000)]


def test_stratified_split_proportions_and_coverage() -> None:
    labels = thousand_labels()
    splits = assign_splits(labels, None, SplitSettings())
    counts = Counter(splits)
    assert abs(counts["train"] / 1000 - 0.6) <= 0.01
    assert abs(counts["dev"] / 1000 - 0.2) <= 0.01
    assert abs(counts["test"] / 1000 - 0.2) <= 0.01
    for label in set(labels):
        per = Counter(s for s, lab in zip(splits, labels) if lab == label)
        n = sum(per.values())
        assert set(per) == {"train", "dev", "test"}
        assert abs(per["train"] / n - 0.6) < 0.02


def test_split_is_deterministic_and_seeded() -> None:
    labels = thousand_labels()
    assert assign_splits(labels, None, SplitSettings()) == assign_splits(list(labels), None, SplitSettings())
    assert assign_splits(labels, None, SplitSettings()) != assign_splits(labels, None, SplitSettings(seed=14))


def test_minimum_one_row_per_split_for_small_labels() -> None:
    labels = ["big"] * 50 + ["tiny"] * 3 + ["small"] * 4
    splits = assign_splits(labels, None, SplitSettings())
    for label in ("tiny", "small"):
        assert {s for s, lab in zip(splits, labels) if lab == label} == {"train", "dev", "test"}


def test_many_small_labels_keep_overall_proportions() -> None:
    labels = [f"label{i}" for i in range(40) for _ in range(7)]
    counts = Counter(assign_splits(labels, None, SplitSettings()))
    assert abs(counts["dev"] - 56) <= 3 and abs(counts["test"] - 56) <= 3


def test_other_ratios_and_empty_input() -> None:
    labels = thousand_labels()
    counts = Counter(assign_splits(labels, None, SplitSettings(0.8, 0.1, 0.1)))
    assert abs(counts["train"] - 800) <= 5
    assert assign_splits([], None, SplitSettings()) == []
    assert set(assign_splits(labels, None, SplitSettings(0.7, 0.3, 0.0))) == {"train", "dev"}


def test_groups_never_straddle_splits() -> None:
    rng = random.Random(3)
    labels, groups = [], []
    for g in range(200):
        size = rng.randint(1, 8)
        main = rng.choice("abc")
        for _ in range(size):
            labels.append(main if rng.random() < 0.8 else rng.choice("abc"))
            groups.append(f"doc{g}")
    groups[5] = None  # rows without a group are groups of their own
    splits = assign_splits(labels, groups, SplitSettings())
    by_group: dict[str, set[str]] = {}
    for g, s in zip(groups, splits):
        if g is not None:
            by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    counts = Counter(splits)
    assert abs(counts["train"] / len(splits) - 0.6) < 0.05
    assert splits == assign_splits(labels, groups, SplitSettings())
    for label in "abc":
        assert {s for s, lab in zip(splits, labels) if lab == label} == {"train", "dev", "test"}


def test_group_split_independent_of_row_order() -> None:
    labels = [("a" if g % 3 else "b") for g in range(60) for _ in range(3)]
    groups = [f"g{g}" for g in range(60) for _ in range(3)]
    splits = dict(zip(groups, assign_splits(labels, groups, SplitSettings())))
    reversed_splits = dict(zip(groups[::-1], assign_splits(labels[::-1], groups[::-1], SplitSettings())))
    assert splits == reversed_splits


def test_group_column_in_dataset_and_far_proportions_warn() -> None:
    rows = []
    sizes = [40, 3, 3, 3]  # four groups of very different sizes cannot make 60/20/20
    for g, size in enumerate(sizes):
        for i in range(size):
            rows.append([f"g{g}-{i}", f"text {g} {i}", "ab"[i % 2], f"g{g}"])
    mapping = ColumnMapping(("text",), "label", id_column="id", group_column="grp")
    dataset = build_dataset(frame(rows, ("id", "text", "label", "grp")), mapping, SplitSettings())
    by_group: dict[str | None, set[str]] = {}
    for row in dataset.rows:
        by_group.setdefault(row.group, set()).add(row.split)
    assert all(len(s) == 1 for s in by_group.values())
    assert any("group stay together" in w.message for w in dataset.warnings)


def test_keep_source_split_maps_aliases_and_reports_unknown() -> None:
    values = ["train", "Validation", "TEST", " val ", "dev", "valid", "train", "test"]
    rows = [[str(i), f"t{i}", "ab"[i % 2], values[i]] for i in range(8)]
    mapping = ColumnMapping(("text",), "label", id_column="id", split_column="split", keep_source_split=True)
    df = frame(rows, ("id", "text", "label", "split"))
    dataset = build_dataset(df, mapping, SplitSettings())
    assert [r.split for r in dataset.rows] == ["train", "dev", "test", "dev", "dev", "dev", "train", "test"]
    df.loc[2, "split"] = "holdout"
    df.loc[5, "split"] = ""
    error = build_error(df, mapping)
    problem = error.problems[0]
    assert problem.message.startswith("Rows 4 and 7 have a split value")
    assert "'holdout'" in problem.message and problem.column == "split"


def test_split_column_ignored_without_keep_source_split() -> None:
    rows = [[str(i), f"t{i}", "ab"[i % 2], "whatever"] for i in range(12)]
    mapping = ColumnMapping(("text",), "label", split_column="split")
    dataset = build_dataset(frame(rows, ("id", "text", "label", "split")), mapping, SplitSettings())
    assert [r.split for r in dataset.rows] == assign_splits([r[2] for r in rows], None, SplitSettings())


# ---------------------------------------------------------------------------------------------------------------------
# JSON round trips
# ---------------------------------------------------------------------------------------------------------------------


def test_mapping_and_split_settings_json_round_trip() -> None:
    mapping = ColumnMapping(("a", "b"), "label", template="{a} {b}", id_column="id", split_column="split",
                            group_column="g", keep_source_split=True)
    assert ColumnMapping.from_json(mapping.to_json()) == mapping
    assert ColumnMapping.from_json({"text_columns": ["t"], "label_column": "l"}) == ColumnMapping(("t",), "l")
    settings = SplitSettings(0.7, 0.15, 0.15, seed=3)
    assert SplitSettings.from_json(settings.to_json()) == settings
    assert SplitSettings.from_json({}) == SplitSettings()
    with pytest.raises(DatasetError):
        ColumnMapping.from_json({"label_column": "l"})
    with pytest.raises(DatasetError):
        SplitSettings.from_json({"train": "lots"})


# ---------------------------------------------------------------------------------------------------------------------
# Real and large data
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not TREC.exists(), reason="shared TREC data not available")
def test_trec_loads_with_random_split() -> None:
    dataset = load_dataset(TREC, ColumnMapping(("text",), "label", id_column="id"))
    assert len(dataset.rows) == 5952
    assert dataset.labels == ["abbreviation", "description", "entity", "human", "location", "numeric"]
    assert sum(dataset.label_counts.values()) == 5952
    assert dataset.rows[0].ext_id == "trec-train-0001"
    assert dataset.rows[0].text == "How did serfdom develop in and then leave Russia ?"
    assert dataset.columns == ["id", "text", "label", "split", "fine_label"]
    present = {(r.label, r.split) for r in dataset.rows}
    assert len(present) == 18
    assert not dataset.warnings


@pytest.mark.skipif(not TREC.exists(), reason="shared TREC data not available")
def test_trec_loads_with_source_split() -> None:
    mapping = ColumnMapping(("text",), "label", id_column="id", split_column="split", keep_source_split=True)
    dataset = load_dataset(TREC, mapping)
    counts = Counter(r.split for r in dataset.rows)
    assert counts["test"] == 500  # the source test split is kept exactly
    assert counts["train"] + counts["dev"] == 5452 and counts["dev"] > 0  # TREC has no dev: carved from train
    assert all(r.split == "test" for r in dataset.rows if r.ext_id.startswith("trec-test"))
    assert any("no dev rows" in w.message for w in dataset.warnings)


def test_hundred_thousand_rows_load(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    labels = ["alpha", "beta", "gamma", "delta"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "label"])
        for i in range(100_000):
            writer.writerow([f"r{i}", f"example, number {i} with \"quotes\"", labels[i % 4]])
    dataset = load_dataset(path, BASIC)
    assert len(dataset.rows) == 100_000
    assert dataset.label_counts == {label: 25_000 for label in sorted(labels)}
    assert dataset.rows[12345].text == 'example, number 12345 with "quotes"'
    assert dataset.rows[-1].source_row == 100_001
    counts = Counter(r.split for r in dataset.rows)
    assert counts == {"train": 60_000, "dev": 20_000, "test": 20_000}
