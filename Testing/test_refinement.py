"""deepstrain.refinement: the segmentation-consistent correction of the motion field."""
from __future__ import annotations

import numpy as np
import pytest

from deepstrain.refinement import CLASSES, refine_displacement


def _rings(t: int = 3, z: int = 2, n: int = 48, inner=(12.0, 9.0, 7.0), outer=(17.0, 16.0, 15.5)) -> np.ndarray:
    """Soft probabilities (T, 4, Z, n, n) of an LV cavity (class 3) in a myocardial ring (class 2)
    that thickens from frame to frame (the cavity shrinks more than the outside)."""
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2.0
    r = np.hypot(yy, xx)
    p = np.zeros((t, 4, z, n, n), np.float32)
    for f in range(t):
        cav = 1 / (1 + np.exp((r - inner[f]) / 0.7))
        epi = 1 / (1 + np.exp((r - outer[f]) / 0.7))
        p[f, 3] = cav
        p[f, 2] = epi - cav
        p[f, 0] = 1 - epi
    return p


def _pulled_dice(u: np.ndarray, p: np.ndarray, ed: int) -> float:
    """Soft Dice (the matched classes) of every frame's probabilities sampled at X + u(X) against ED's
    (scipy's trilinear interpolation: an independent check of the module's own sampling)."""
    from scipy import ndimage

    grid = np.indices(p.shape[2:]).astype(np.float64)
    inter = total = 0.0
    for f in range(u.shape[0]):
        if f == ed:
            continue
        for k in CLASSES:
            pulled = ndimage.map_coordinates(p[f, k], grid + u[f], order=1, mode="nearest")
            inter += float((pulled * p[ed, k]).sum())
            total += float((pulled + p[ed, k]).sum())
    return 2 * inter / total


def _exact_field(p_shape, inner, outer) -> np.ndarray:
    """The radial displacement (T, 3, Z, n, n), voxels, that maps the ED ring of :func:`_rings` onto each frame's."""
    t, _, z, n, _ = p_shape
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2.0
    r = np.hypot(yy, xx) + 1e-9
    u = np.zeros((t, 3, z, n, n), np.float32)
    for f in range(t):
        dr = np.interp(r, [0, inner[0], outer[0], 100], [0, inner[f], outer[f], 100 + outer[f] - outer[0]]) - r
        u[f, 1], u[f, 2] = dr * yy / r, dr * xx / r
    return u


def test_refinement_moves_an_under_estimated_thickening_towards_the_segmentation():
    inner, outer = (12.0, 10.5, 9.0), (17.0, 16.5, 16.0)
    p = _rings(inner=inner, outer=outer)
    exact = _exact_field(p.shape, inner, outer)
    u0 = 0.6 * exact  # a motion estimate that misses 40 % of the motion
    u1 = refine_displacement(u0, p, ed=0)
    assert u1.shape == u0.shape and u1.dtype == np.float32
    assert not u1[0].any()  # ED stays zero
    np.testing.assert_array_equal(u1[:, 0], u0[:, 0])  # the through-plane part is the network's
    d0, d1, best = _pulled_dice(u0, p, 0), _pulled_dice(u1, p, 0), _pulled_dice(exact, p, 0)
    assert d1 > d0 + 0.5 * (best - d0)  # at least half of the achievable agreement is recovered
    c = (p.shape[-1] - 1) // 2
    for radius in (12, 17):  # endocardium and epicardium at ED, last frame, column component
        e0 = abs(u0[2, 2, 0, c, c + radius] - exact[2, 2, 0, c, c + radius])
        e1 = abs(u1[2, 2, 0, c, c + radius] - exact[2, 2, 0, c, c + radius])
        assert e1 < e0 - 0.15, (radius, e0, e1)
    # a field that is already right stays close to right
    u2 = refine_displacement(exact, p, ed=0)
    assert np.abs(u2[2, 2, 0, c, c + 12] - exact[2, 2, 0, c, c + 12]) < 0.3
    np.testing.assert_array_equal(u1, refine_displacement(u0, p, ed=0))  # deterministic


def test_refinement_checks_shapes_and_does_nothing_for_one_frame():
    p = _rings()
    with pytest.raises(ValueError, match="do not match"):
        refine_displacement(np.zeros((3, 2) + p.shape[2:], np.float32), p, ed=0)
    one = np.zeros((1, 3) + p.shape[2:], np.float32)
    np.testing.assert_array_equal(refine_displacement(one, p[:1], ed=0), one)


@pytest.fixture(scope="module")
def predicted():
    """A small phantom through the networks, keeping the network's motion (as the Slicer module does)."""
    from deepstrain import phantom
    from deepstrain.inference import predict

    ph = phantom.generate_phantom(phantom.PhantomParams(n_frames=6, matrix_size=96, pv_samples=1, seed=4321))
    cine = ph.cine
    return cine, predict(cine, refine_motion=True, keep_network_motion=True)


def test_motion_for_the_networks_labels_is_what_predict_returned(predicted):
    from deepstrain.preprocess import displacement_to_input
    from deepstrain.refinement import motion_for_labels

    cine, pred = predicted
    state = pred.network_motion
    assert state.edited_frames(pred.labels) == [] and state.ed == pred.ed
    np.testing.assert_array_equal(motion_for_labels(state, pred.labels), pred.displacement)
    raw = motion_for_labels(state, pred.labels, refine=False)
    np.testing.assert_array_equal(raw, displacement_to_input(state.displacement_vox, state.crop, state.geometry))
    assert not np.array_equal(raw, pred.displacement)
    with pytest.raises(ValueError, match="do not match"):
        state.edited_frames(pred.labels[:2])


def test_a_thicker_es_wall_drawn_by_hand_gives_more_radial_strain(predicted):
    """Edit the ES frame's myocardium one voxel into the cavity: refined with the edit, the motion
    thickens the wall more, so global radial strain at ES rises (measured: 53.3 -> 65.3 % with the shipped ensemble); the
    other frames' motion does not move."""
    from scipy import ndimage

    from deepstrain.pipeline import compute
    from deepstrain.refinement import motion_for_labels

    cine, pred = predicted
    state = pred.network_motion
    before = compute(cine, pred.labels, pred.displacement, ed=pred.ed)
    es = before.es
    edited = pred.labels.copy()
    grow = ndimage.binary_dilation(edited[es] == 2, structure=np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]],
                                                                        [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                                                                        [[0, 0, 0], [0, 1, 0], [0, 0, 0]]]))
    edited[es][grow & (edited[es] == 3)] = 2
    assert state.edited_frames(edited) == [es]
    disp = motion_for_labels(state, edited)
    after = compute(cine, edited, disp, ed=pred.ed, es=es)
    rad0 = before.report["ess"]["radial"]
    rad1 = after.report["ess"]["radial"]
    assert rad1 > rad0 + 2.0, (rad0, rad1)
    myo = pred.labels[pred.ed] == 2
    change = np.linalg.norm(disp - pred.displacement, axis=1)[:, myo].mean(axis=1)  # mm, per frame
    # each frame is refined on its own: only the edited frame's motion changes
    assert change[es] > 0.2 and all(change[f] < 1e-6 for f in range(len(change)) if f != es), change
