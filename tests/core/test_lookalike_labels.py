"""Look-alike labels are reported with rows and merged only on request; terminal output escapes control codes."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from pld_desktop.core.dataset import (
    ColumnMapping,
    SplitSettings,
    build_dataset,
    load_dataset,
)

LOOKALIKES = ["Pos", "POS", "pos", "neg", "caf\u00e9", "cafe\u0301", "z\u200bero", "zero", "\u202ertl", "rtl"]


def frame(labels: list[str], repeat: int = 3) -> pd.DataFrame:
    values = labels * repeat
    return pd.DataFrame({"text": [f"text number {i}" for i in range(len(values))], "label": values})


def test_lookalikes_are_reported_with_rows_and_kept_apart() -> None:
    ds = build_dataset(frame(LOOKALIKES), ColumnMapping(("text",), "label"), SplitSettings())
    assert len(ds.labels) == len(LOOKALIKES)  # nothing merged silently
    messages = [w.message for w in ds.warnings if "separate labels" in w.message]
    assert len(messages) == 4, messages
    case = next(m for m in messages if "'Pos'" in m)
    assert "'POS' (rows 3, 13 and 23)" in case and "letter case" in case and "--merge-labels casefold" in case
    nfd = next(m for m in messages if "caf" in m)
    assert "cafe\\u0301" in nfd and "--merge-labels nfc" in nfd and "rows 6, 16 and 26" in nfd
    assert any("z\\u200bero" in m for m in messages) and any("\\u202ertl" in m for m in messages)


def test_merging_is_applied_only_when_asked() -> None:
    nfc = build_dataset(frame(LOOKALIKES), ColumnMapping(("text",), "label", merge_labels="nfc"), SplitSettings())
    assert sorted(nfc.labels) == sorted(["Pos", "POS", "pos", "neg", "caf\u00e9", "zero", "rtl"])
    folded = build_dataset(frame(LOOKALIKES), ColumnMapping(("text",), "label", merge_labels="casefold"),
                           SplitSettings())
    assert sorted(folded.labels) == sorted(["POS", "neg", "caf\u00e9", "zero", "rtl"])  # ties: plainest, A-Z
    assert not [w for w in folded.warnings if "separate labels" in w.message]
    assert folded.label_counts["POS"] == 9
    # The choice is part of the mapping saved with the project.
    mapping = ColumnMapping(("text",), "label", merge_labels="casefold")
    assert ColumnMapping.from_json(mapping.to_json()) == mapping
    assert "merge_labels" not in ColumnMapping(("text",), "label").to_json()


def test_a_text_with_colour_codes_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ansi.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(12):
            w.writerow([f"\x1b[31mred\x1b[0m alert \x1b[1;32m{i}\x1b[0m", "ab"[i % 2]])
    ds = load_dataset(path, ColumnMapping(("text",), "label"))
    assert len(ds.rows) == 12 and "\x1b[31m" in ds.rows[0].text


def test_excel_sep_line_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_text("sep=;\ntext;label\n" + "".join(f"hello, world {i};{'ab'[i % 2]}\n" for i in range(12)),
                    encoding="utf-8")
    ds = load_dataset(path, ColumnMapping(("text",), "label"))
    assert sorted(ds.labels) == ["a", "b"] and ds.rows[0].text == "hello, world 0"
    assert ds.rows[0].source_row == 2  # as Excel shows it: the hint line is not a row


def test_cli_output_escapes_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pld_desktop import cli
    path = tmp_path / "l.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(12):
            w.writerow([f"text {i}", ["ok", "bad\x1b[2J\x1b[31m", "Ok", "\u202eevil"][i % 4]])
    assert cli.main(["init", str(tmp_path / "l.pld"), "--csv", str(path), "--text", "text", "--label",
                     "label"]) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err and "\u202e" not in out + err
    assert "bad\\x1b[2J\\x1b[31m" in out and "\\u202eevil" in out
    assert "'ok'" in err and "'Ok'" in err and "--merge-labels casefold" in err  # the look-alike warning
    assert cli.main(["init", str(tmp_path / "m.pld"), "--csv", str(path), "--text", "text", "--label", "label",
                     "--merge-labels", "casefold"]) == 0
    out, _ = capsys.readouterr()
    assert out.count("ok") + out.count("Ok") == 1 and "\\u202eevil" in out  # one label; others keep spelling
