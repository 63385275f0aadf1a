"""deepstrain.qc: the one-page quality-control picture (``deepstrain analyze --qc``)."""
from __future__ import annotations

import numpy as np
from PIL import Image

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
