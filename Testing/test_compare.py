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
    cols = ["id", "status", "group", "lv_ef_percent", "aha_radial_3_percent"]
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
    assert set(m) == {"lv_ef_percent", "aha_radial_3_percent"}
    assert round(m["lv_ef_percent"]["bias"], 1) == -2.1 and round(m["lv_ef_percent"]["sd_diff"], 1) == 38.8
    assert m["aha_radial_3_percent"]["bias"] == pytest.approx(np.mean([k % 3 for k in range(17)]))
    import csv

    with open(tmp_path / "cmp" / "agreement.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["metric"] for r in table] == ["lv_ef_percent", "aha_radial_3_percent"]
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

    cols = ["id", "status", "lv_ef_percent", "aha_radial_1_percent"]
    rows_a = [["s1", "ok", 50, 20], ["s2", "ok", 55, "NA"], ["s3", "ok", 60, 25], ["s4", "ok", 45, "N/A"],
              ["s5", "ok", 52, 30]]
    rows_b = [["s1", "ok", 51, 21], ["s2", "ok", "bad", 24], ["s3", "ok", 61, 27], ["s4", "ok", 47, 22],
              ["s5", "ok", 50, 31]]
    _write_table(tmp_path / "a.csv", rows_a, cols)
    _write_table(tmp_path / "b.csv", rows_b, cols)
    with pytest.warns(DeepStrainWarning, match="b.csv: column 'lv_ef_percent' left out: not a finite number in s2 \\('bad'\\)"):
        res = compare_tables(tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "cmp")
    m = {x["metric"]: x for x in res["metrics"]}
    assert set(m) == {"aha_radial_1_percent"} and m["aha_radial_1_percent"]["n"] == 3  # the NA and N/A pairs dropped
    assert m["aha_radial_1_percent"]["bias"] == pytest.approx(np.mean([1, 2, 1]))
    assert "lv_ef_percent" in res["skipped_columns"]


def test_tables_that_do_not_match_are_named_in_warnings_and_errors(tmp_path, capsys) -> None:
    """The file at fault is named: a text cell in A, an inf cell in B, a column in one table only, a
    table without rows (exit 2, nothing written)."""
    from deepstrain import cli
    from deepstrain.compare import compare_tables
    from deepstrain.io import DeepStrainWarning

    cols = ["id", "lv_ef_percent", "lv_mass_g", "rv_edv_ml", "ess_radial_percent"]
    rows = [[f"s{i}", 50 + i, 100 + 3 * i, 150 - i, 20 + i] for i in range(5)]
    _write_table(tmp_path / "a.csv", [r if r[0] != "s1" else [r[0], "abc"] + r[2:] for r in rows], cols)
    _write_table(tmp_path / "b.csv", [r[:2] + ["inf" if r[0] == "s2" else r[2], r[3]] for r in rows], cols[:4])
    with pytest.warns(DeepStrainWarning) as caught:
        res = compare_tables(tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "cmp")
    text = [str(w.message) for w in caught]
    assert any(t.startswith(str(tmp_path / "a.csv")) and "'lv_ef_percent'" in t and "'abc'" in t for t in text)
    assert any(t.startswith(str(tmp_path / "b.csv")) and "'lv_mass_g'" in t and "'inf'" in t for t in text)
    assert any(t.startswith(str(tmp_path / "a.csv")) and "not compared: ess_radial_percent" in t for t in text)
    assert res["columns_only_in_a"] == ["ess_radial_percent"] and res["columns_only_in_b"] == []
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


def test_a_table_with_the_legacy_column_names_pairs_with_a_new_one(tmp_path) -> None:
    """A summary.csv written before the unit suffixes (ess_radial, srs_radial, sre_radial,
    aha_radial_3, ...) is read under today's names: every column pairs with a new batch table's."""
    import csv
    from pathlib import Path

    import batch_fakes
    from deepstrain import batch
    from deepstrain.compare import LEGACY_COLUMNS, compare_tables

    old_name = {new: old for old, new in LEGACY_COLUMNS.items()}
    assert set(old_name) == set(batch.PEAK_KEYS + batch.AHA_KEYS)  # one legacy name per renamed column
    assert old_name["ess_radial_percent"] == "ess_radial" and old_name["srs_circumferential_per_s"] == "srs_circumferential"
    assert old_name["sre_longitudinal_per_s"] == "sre_longitudinal" and old_name["aha_radial_3_percent"] == "aha_radial_3"
    rows = []
    for k in range(6):
        study = batch.Study(id=f"p{k}", path=Path(f"p{k}"), kind="nifti")
        rows.append(batch.summary_row(study, batch_fakes.fake_report(f"p{k}"), status="ok", seconds=1.0))
    batch.write_summary(rows, tmp_path / "new.csv")
    legacy_cols = [old_name.get(c, c) for c in batch.SUMMARY_COLUMNS]
    assert "ess_radial" in legacy_cols and "aha_circumferential_17" in legacy_cols
    with open(tmp_path / "old.csv", "w", newline="") as f:  # the same numbers, ESS radial 1 point lower
        w = csv.writer(f, lineterminator="\n")
        w.writerow(legacy_cols)
        for r in rows:
            w.writerow([repr(float(r[c]) - 1) if c == "ess_radial_percent" else r[c] for c in batch.SUMMARY_COLUMNS])
    for a, b in (("old.csv", "new.csv"), ("new.csv", "old.csv")):
        res = compare_tables(tmp_path / a, tmp_path / b, tmp_path / f"cmp_{a}")
        assert res["columns_only_in_a"] == [] and res["columns_only_in_b"] == []
        m = {x["metric"]: x for x in res["metrics"]}
        assert {"ess_radial_percent", "srs_radial_per_s", "sre_longitudinal_per_s", "aha_radial_3_percent",
                "aha_circumferential_16_percent"} <= set(m)
        assert not set(m) & set(LEGACY_COLUMNS)
        assert m["ess_radial_percent"]["n"] == 6
        assert m["ess_radial_percent"]["bias"] == pytest.approx(1.0 if a == "old.csv" else -1.0)
        assert m["srs_radial_per_s"]["bias"] == pytest.approx(0.0)
        renamed = res["renamed_columns"]["a" if a == "old.csv" else "b"]
        assert renamed == {old: new for old, new in LEGACY_COLUMNS.items()}
        assert res["renamed_columns"]["b" if a == "old.csv" else "a"] == {}
        for png in ("bland_altman_aha_radial.png", "bland_altman_aha_circumferential.png"):
            assert (tmp_path / f"cmp_{a}" / png).is_file()
    # a table holding both names keeps the legacy one as it is: only the new name pairs
    cols = ["id", "ess_radial", "ess_radial_percent"]
    _write_table(tmp_path / "both.csv", [[f"s{i}", 100 + i, 20 + i] for i in range(3)], cols)
    _write_table(tmp_path / "plain.csv", [[f"s{i}", 21 + i] for i in range(3)], ["id", "ess_radial_percent"])
    from deepstrain.io import DeepStrainWarning

    with pytest.warns(DeepStrainWarning, match="not compared: ess_radial"):
        res = compare_tables(tmp_path / "both.csv", tmp_path / "plain.csv", tmp_path / "cmp_both")
    assert res["renamed_columns"] == {"a": {}, "b": {}} and res["columns_only_in_a"] == ["ess_radial"]
    assert [m["metric"] for m in res["metrics"]] == ["ess_radial_percent"] and res["metrics"][0]["bias"] == 1.0


def test_a_column_never_filled_in_both_tables_is_listed_and_warned(tmp_path) -> None:
    """A heart rate given for one run only: its column is in both tables, never paired; it is not
    silently dropped but listed (unpaired_columns) and warned about; one empty in both is listed only."""
    from deepstrain.compare import compare_tables
    from deepstrain.io import DeepStrainWarning

    cols = ["id", "lv_ef_percent", "heart_rate_bpm", "srs_radial_per_s"]
    _write_table(tmp_path / "a.csv", [[f"s{i}", 50 + i, 60 + i, ""] for i in range(4)], cols)
    _write_table(tmp_path / "b.csv", [[f"s{i}", 51 + i, "", ""] for i in range(4)], cols)
    with pytest.warns(DeepStrainWarning) as caught:
        res = compare_tables(tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "cmp")
    assert [m["metric"] for m in res["metrics"]] == ["lv_ef_percent"]
    assert res["unpaired_columns"] == {
        "heart_rate_bpm": "no study with a value in both tables (values: 4 in A, 0 in B)",
        "srs_radial_per_s": "no study with a value in both tables (values: 0 in A, 0 in B)"}
    said = [str(w.message) for w in caught if "not compared" in str(w.message)]
    assert len(said) == 1 and "'heart_rate_bpm'" in said[0]
