"""AHA polar map geometry: layout, picking."""
from __future__ import annotations

import numpy as np
import pytest

from DeepStrainSlicerLib import polarmap


def test_every_segment_centre_picks_its_segment():
    for s in range(1, 18):
        assert polarmap.segment_at(*polarmap.segment_centre(s)) == s


def test_standard_orientation():
    # anterior at 12 o'clock, septum on the left, inferior at 6, lateral at 3 o'clock
    assert polarmap.segment_at(0.0, 3.5) == 1 and polarmap.segment_at(0.0, 2.5) == 7 and polarmap.segment_at(0.0, 1.5) == 13
    assert polarmap.segment_at(-3.5, 0.5) == 2 and polarmap.segment_at(-3.5, -0.5) == 3
    assert polarmap.segment_at(0.0, -3.5) == 4 and polarmap.segment_at(0.0, -1.5) == 15
    assert polarmap.segment_at(-1.5, 0.0) == 14 and polarmap.segment_at(1.5, 0.0) == 16
    assert polarmap.segment_at(3.5, -0.5) == 5 and polarmap.segment_at(3.5, 0.5) == 6
    assert polarmap.segment_at(0.2, 0.1) == 17
    assert polarmap.segment_at(4.2, 0.0) is None


def test_polydata_carries_values_and_nan():
    pd = polarmap.bullseye_polydata({1: -20.0, "2": 5.5, 17: None})
    assert pd.GetNumberOfCells() == 17
    ids = [int(pd.GetCellData().GetArray("SegmentId").GetValue(i)) for i in range(17)]
    assert sorted(ids) == list(range(1, 18))
    strain = pd.GetCellData().GetArray("Strain")
    by_seg = {ids[i]: strain.GetValue(i) for i in range(17)}
    assert by_seg[1] == -20.0 and by_seg[2] == 5.5 and np.isnan(by_seg[17]) and np.isnan(by_seg[3])


@pytest.mark.parametrize("vals, expect", [({1: -17.2}, (-20.0, 20.0)), ({1: 3.0, 2: None}, (-5.0, 5.0)), ({}, (-5.0, 5.0))])
def test_symmetric_range(vals, expect):
    assert polarmap.symmetric_range(vals) == expect


def test_diverging_colours():
    assert polarmap.diverging_rgb(0.0)[2] > 0.7 and polarmap.diverging_rgb(1.0)[0] > 0.7
    assert min(polarmap.diverging_rgb(0.5)) > 0.9
