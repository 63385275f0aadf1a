"""compare: two study tables paired by id, agreement per metric, table and plots."""
from __future__ import annotations

import numpy as np
import pytest

from deepstrain import stats
from test_stats import MINI, WRIGHT

def _write_table(path, rows, cols) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)


def test_compare_tables_on_the_lancet_data(tmp_path) -> None:
    from deepstrain import cli
    from deepstrain.compare import compare_tables

    ids = [f"s{i:02d}" for i in range(17)]
    cols = ["id", "status", "group", "lv_ef_percent", "aha_radial_3"]
    # A = mini Wright, B = Wright; an extra failed row in B and an id only in A are not paired
    rows_a = [[i, "ok", "X", m, 10 + k] for k, (i, m) in enumerate(zip(ids, MINI))] + [["only_a", "ok", "X", 1, 1]]
    rows_b = [[i, "ok", "X", w, 10 + k + (k % 3)] for k, (i, w) in enumerate(zip(ids, WRIGHT))]
    rows_b.append(["s00x", "failed", "X", "", ""])
    _write_table(tmp_path / "a.csv", rows_a, cols)
    _write_table(tmp_path / "b.csv", rows_b, cols)
    from deepstrain.io import DeepStrainWarning

    with pytest.warns(DeepStrainWarning, match="a.csv: 1 study id\\(s\\) not in the other table, left out: only_a"):
        res = compare_tables(tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "cmp")
    assert res["n_pairs"] == 17 and res["only_in_a"] == ["only_a"]
    m = {x["metric"]: x for x in res["metrics"]}
    assert set(m) == {"lv_ef_percent", "aha_radial_3"}
    assert round(m["lv_ef_percent"]["bias"], 1) == -2.1 and round(m["lv_ef_percent"]["sd_diff"], 1) == 38.8
    assert m["aha_radial_3"]["bias"] == pytest.approx(np.mean([k % 3 for k in range(17)]))
    import csv

    with open(tmp_path / "cmp" / "agreement.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["metric"] for r in table] == ["lv_ef_percent", "aha_radial_3"]
    assert float(table[0]["icc"]) == pytest.approx(stats.icc_a1(np.stack([MINI, WRIGHT], 1)).icc, abs=1e-6)
    for png in ("bland_altman_global.png", "bland_altman_aha_radial.png"):
        assert (tmp_path / "cmp" / png).is_file()
    # the output folder is not overwritten silently; bad input -> exit 2
    assert cli.main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(tmp_path / "cmp")]) == 2
    _write_table(tmp_path / "c.csv", [["zz", "ok", "X", 1, 1]], cols)
    assert cli.main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "c.csv"), "--out", str(tmp_path / "c2")]) == 2
    assert not (tmp_path / "c2").exists()


def test_missing_value_marks_are_dropped_pairwise_and_a_column_with_text_is_reported(tmp_path) -> None:
    from deepstrain.compare import compare_tables
    from deepstrain.io import DeepStrainWarning

    cols = ["id", "status", "lv_ef_percent", "aha_radial_1"]
    rows_a = [["s1", "ok", 50, 20], ["s2", "ok", 55, "NA"], ["s3", "ok", 60, 25], ["s4", "ok", 45, "N/A"],
              ["s5", "ok", 52, 30]]
    rows_b = [["s1", "ok", 51, 21], ["s2", "ok", "bad", 24], ["s3", "ok", 61, 27], ["s4", "ok", 47, 22],
              ["s5", "ok", 50, 31]]
    _write_table(tmp_path / "a.csv", rows_a, cols)
    _write_table(tmp_path / "b.csv", rows_b, cols)
    with pytest.warns(DeepStrainWarning, match="b.csv: column 'lv_ef_percent' left out: not a finite number in s2 \\('bad'\\)"):
        res = compare_tables(tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "cmp")
    m = {x["metric"]: x for x in res["metrics"]}
    assert set(m) == {"aha_radial_1"} and m["aha_radial_1"]["n"] == 3  # the NA and N/A pairs dropped
    assert m["aha_radial_1"]["bias"] == pytest.approx(np.mean([1, 2, 1]))
    assert "lv_ef_percent" in res["skipped_columns"]


def test_tables_that_do_not_match_are_named_in_warnings_and_errors(tmp_path, capsys) -> None:
    """The file at fault is named: a text cell in A, an inf cell in B, a column in one table only, a
    table without rows (exit 2, nothing written)."""
    from deepstrain import cli
    from deepstrain.compare import compare_tables
    from deepstrain.io import DeepStrainWarning

    cols = ["id", "lv_ef_percent", "lv_mass_g", "rv_edv_ml", "ess_radial"]
    rows = [[f"s{i}", 50 + i, 100 + 3 * i, 150 - i, 20 + i] for i in range(5)]
    _write_table(tmp_path / "a.csv", [r if r[0] != "s1" else [r[0], "abc"] + r[2:] for r in rows], cols)
    _write_table(tmp_path / "b.csv", [r[:2] + ["inf" if r[0] == "s2" else r[2], r[3]] for r in rows], cols[:4])
    with pytest.warns(DeepStrainWarning) as caught:
        res = compare_tables(tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "cmp")
    text = [str(w.message) for w in caught]
    assert any(t.startswith(str(tmp_path / "a.csv")) and "'lv_ef_percent'" in t and "'abc'" in t for t in text)
    assert any(t.startswith(str(tmp_path / "b.csv")) and "'lv_mass_g'" in t and "'inf'" in t for t in text)
    assert any(t.startswith(str(tmp_path / "a.csv")) and "not compared: ess_radial" in t for t in text)
    assert res["columns_only_in_a"] == ["ess_radial"] and res["columns_only_in_b"] == []
    assert set(res["skipped_columns"]) == {"lv_ef_percent", "lv_mass_g"}
    assert [m["metric"] for m in res["metrics"]] == ["rv_edv_ml"]
    _write_table(tmp_path / "empty.csv", [], cols)
    capsys.readouterr()
    assert cli.main(["compare", str(tmp_path / "empty.csv"), str(tmp_path / "b.csv"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "empty.csv" in err and "no rows" in err
    assert not (tmp_path / "e").exists()


def test_every_common_column_left_out_names_the_table_at_fault(tmp_path, capsys) -> None:
    from deepstrain import cli

    cols = ["id", "lv_ef_percent"]
    _write_table(tmp_path / "a.csv", [["s1", 50], ["s2", "inf"], ["s3", 60]], cols)
    _write_table(tmp_path / "b.csv", [["s1", 51], ["s2", 55], ["s3", 61]], cols)
    assert cli.main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'a.csv'}: every column in common with the other table was left out" in err
    assert not (tmp_path / "o").exists()
    # B's name starts with A's: B is still the one named
    _write_table(tmp_path / "a.csv", [["s1", 50], ["s2", 52], ["s3", 60]], cols)
    _write_table(tmp_path / "a.csv.new", [["s1", 51], ["s2", "inf"], ["s3", 61]], cols)
    assert cli.main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "a.csv.new"), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'a.csv.new'}: every column in common" in capsys.readouterr().err
