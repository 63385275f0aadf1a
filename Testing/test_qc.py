"""deepstrain.qc: the one-page quality-control picture (``deepstrain analyze --qc``)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deepstrain import qc
from deepstrain.pipeline import compute
from deepstrain.qc import CONTOURS, qc_figure, qc_slices
from test_pipeline import _cine, _study


def _analysis(flip: bool = False):
    heart, geo, labels, disp = _study(flip=(flip, False, False))
    return compute(_cine(geo, labels), labels, disp)


def _slice_position(analysis, z: int) -> float:
    """Position (mm) of slice ``z`` along the long axis (base -> apex)."""
    g = analysis.cine.geometry
    return float(analysis.frame.long_axis @ (g.origin + g.direction[:, 0] * g.spacing[0] * z))


def test_slices_go_from_base_to_apex_whatever_the_storage_order():
    a, b = _analysis(), _analysis(flip=True)
    for analysis in (a, b):
        names = [n for n, _ in qc_slices(analysis)]
        pos = [_slice_position(analysis, z) for _, z in qc_slices(analysis)]
        assert names == ["basal", "mid", "apical"] and pos[0] < pos[1] < pos[2]
        myo = np.nonzero((analysis.labels[analysis.ed] == 2).any(axis=(1, 2)))[0]
        assert {qc_slices(analysis)[0][1], qc_slices(analysis)[2][1]} == {int(myo[0]), int(myo[-1])}
    # the same physical slices, by name
    for (na, za), (nb, zb) in zip(qc_slices(a), qc_slices(b)):
        assert na == nb and abs(_slice_position(a, za) - _slice_position(b, zb)) < 1.0


def test_picture_is_complete_and_deterministic(tmp_path):
    analysis = _analysis()
    p1 = qc_figure(analysis, tmp_path / "a.png")
    p2 = qc_figure(analysis, tmp_path / "b.png")
    assert p1.read_bytes() == p2.read_bytes()
    rgb = np.asarray(Image.open(p1).convert("RGB"), dtype=float)
    assert rgb.shape == (900, 1500, 3)
    for _, colour, name in CONTOURS:  # every contour colour is drawn (lines and legend)
        near = np.abs(rgb - 255 * np.array(colour)).max(axis=-1) < 40
        assert near.sum() > 150, name
    # the polar maps: both ends of the diverging colour map (thickening red, shortening blue)
    assert ((rgb[..., 0] > 150) & (rgb[..., 2] < 100)).sum() > 500
    assert ((rgb[..., 2] > 150) & (rgb[..., 0] < 100)).sum() > 500


def test_volumes_only_study_still_gets_a_picture(tmp_path):
    """No displacement (labels only): no strain curves or polar values, the images and volumes stay."""
    heart, geo, labels, disp = _study()
    analysis = compute(_cine(geo, labels), labels, None)
    path = qc_figure(analysis, tmp_path / "qc.png")
    assert Image.open(path).size == (1500, 900)


@pytest.mark.parametrize("rows_dir, cols_dir, expected", [
    ((0, -1, 0), (-1, 0, 0), (False, False, False)),  # rows towards posterior, columns to the patient's left
    ((0, 1, 0), (-1, 0, 0), (False, True, False)),    # rows towards anterior: upside down
    ((0, -1, 0), (1, 0, 0), (False, False, True)),    # columns to the patient's right: mirrored
    ((-1, 0, 0), (0, -1, 0), (True, False, False)),   # rows and columns swapped
])
def test_display_view_of_simple_grids(rows_dir, cols_dir, expected):
    direction = np.column_stack([np.cross(rows_dir, cols_dir), rows_dir, cols_dir]).astype(float)
    assert qc.display_view(direction) == expected


@pytest.mark.parametrize("seed", range(4))
def test_displayed_slices_have_the_patient_left_right_and_anterior_up(seed):
    """Oblique short-axis-like grids, stored in any of the 8 orders: the picture's right column lies
    more to the patient's left than its left column, its top row more anterior than its bottom row."""
    rng = np.random.default_rng(seed)
    base = _short_axis_orientation(rng)
    for transpose in (False, True):
        for fr in (1, -1):
            for fc in (1, -1):
                e_row, e_col = (base[:, 2], base[:, 1]) if transpose else (base[:, 1], base[:, 2])
                direction = np.column_stack([base[:, 0], fr * e_row, fc * e_col])
                k_row, k_col = np.mgrid[:9, :7]
                world = k_row[..., None] * direction[:, 1] + k_col[..., None] * direction[:, 2]
                shown = qc.to_display(world, qc.display_view(direction))
                assert (shown[:, -1] @ np.array([-1.0, 0, 0])).mean() > (shown[:, 0] @ np.array([-1.0, 0, 0])).mean()
                assert (shown[0] @ np.array([0, 1.0, 0])).mean() > (shown[-1] @ np.array([0, 1.0, 0])).mean()


def _short_axis_orientation(rng) -> np.ndarray:
    """A short-axis-like orientation: slice normal near the LV long axis (left, anterior, inferior), jittered."""
    n = np.array([-0.6, 0.5, -0.6]) + 0.15 * rng.standard_normal(3)
    n /= np.linalg.norm(n)
    a = np.cross(n, [0.0, 0.0, 1.0])
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    return np.column_stack([n, a, b])
