"""Classical demons baseline: known shifts are recovered, layout and orientation follow cine.py."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("SimpleITK")

from deepstrain.cine import Geometry  # noqa: E402
from deepstrain.registration import register_cine, register_pair  # noqa: E402

SPACING = np.array([8.0, 1.5, 1.5])


def _texture(shape=(8, 80, 80), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape).astype(np.float32), (0.7, 3, 3))
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def _moved(img: np.ndarray, shift_mm: np.ndarray) -> np.ndarray:
    """Frame whose material point X of ``img`` sits at X + shift: moving(Y) = img(Y - shift)."""
    return ndimage.shift(img, shift_mm / SPACING, order=3, mode="nearest").astype(np.float32)


INNER = (slice(2, -2), slice(20, -20), slice(20, -20))


def test_recovers_known_in_plane_shift():
    fixed = _texture()
    shift = np.array([0.0, 2.4, -1.8])
    u = register_pair(fixed, _moved(fixed, shift), SPACING)
    assert u.shape == (3,) + fixed.shape and u.dtype == np.float32
    med = np.array([np.median(u[i][INNER]) for i in range(3)])
    assert np.allclose(med, shift, atol=0.3), med
    # and not the opposite direction (the Lagrangian sign)
    assert not np.allclose(med, -shift, atol=0.3)


def test_register_cine_layout_zero_at_ed_and_ras_rotation():
    fixed = _texture(seed=1)
    shift = np.array([0.0, -2.0, 1.5])  # array-axis mm (slice, row, col)
    images = np.stack([fixed, _moved(fixed, shift)])
    # array axes -> RAS: slice along +S, row along -A (posterior), column along +R
    direction = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    geo = Geometry(spacing=SPACING, direction=direction)
    d = register_cine(images, geo, ed=0)
    assert d.shape == (2, 3) + fixed.shape and d.dtype == np.float32
    assert np.all(d[0] == 0)
    med = np.array([np.median(d[1, i][INNER]) for i in range(3)])
    assert np.allclose(med, direction @ shift, atol=0.3), med


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        register_pair(np.zeros((4, 8, 8)), np.zeros((4, 8, 9)), SPACING)
    with pytest.raises(ValueError):
        register_cine(np.zeros((2, 4, 8, 8)), Geometry(SPACING), ed=5)
