"""Tests of deepstrain.inference with the shipped weights on real ACDC validation patients."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from deepstrain import io
from deepstrain.cine import Cine, Geometry
from deepstrain.errors import InputError
from deepstrain.inference import largest_components, predict
from deepstrain.training.data import VALIDATION_PATIENTS

PATIENT = "patient065"  # a validation patient (NOR group): never seen in training
assert PATIENT in VALIDATION_PATIENTS


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def cine(shared_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return io.load_cine(shared_data / "acdc" / "training" / PATIENT)


def test_largest_components_keeps_the_biggest_blob_per_class():
    lab = np.zeros((1, 2, 20, 20), np.uint8)
    lab[0, :, 2:10, 2:10] = 3
    lab[0, 0, 15:17, 15:17] = 3
    lab[0, 1, 15:18, 1:3] = 1
    out = largest_components(lab)
    assert (out == 3).sum() == 2 * 64 and out[0, 0, 15, 15] == 0
    assert (out == 1).sum() == 6
    # a ring on the next slice, shifted in-plane so that it touches only diagonally, stays
    lab = np.zeros((1, 2, 20, 20), np.uint8)
    lab[0, 0, 2:10, 2:10] = 2
    lab[0, 1, 10:13, 10:13] = 2
    lab[0, 1, 17:19, 0:2] = 2  # not touching at all: removed
    out = largest_components(lab)
    assert (out[0, 1] == 2).sum() == 9



def test_largest_components_on_the_foreground_box_equals_the_whole_grid():
    """The filter works on the foreground's bounding box; the result must be that of the whole grid."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    lab = np.zeros((3, 4, 40, 50), np.uint8)
    lab[:, :, 8:30, 12:41] = rng.integers(0, 4, size=(3, 4, 22, 29))  # many small blobs per class
    lab = np.where(rng.random(lab.shape) < 0.6, 0, lab).astype(np.uint8)
    expected = lab.copy()
    for f in expected:
        for k in (1, 2, 3):
            comp, n = ndimage.label(f == k, structure=np.ones((3, 3, 3), bool))
            if n > 1:
                sizes = ndimage.sum_labels(f == k, comp, index=np.arange(1, n + 1))
                f[(f == k) & (comp != 1 + int(np.argmax(sizes)))] = 0
    out = largest_components(lab)
    assert np.array_equal(out, expected) and (out != lab).any()
    assert np.array_equal(largest_components(np.zeros((2, 3, 5, 5), np.uint8)), np.zeros((2, 3, 5, 5), np.uint8))


def test_segments_a_validation_patient(cine):
    pred = predict(cine, with_motion=False)
    assert pred.labels.shape == cine.data.shape and pred.labels.dtype == np.uint8
    assert pred.displacement is None and pred.ed == cine.ed
    ed = cine.labels[cine.ed]
    assert _dice(pred.labels[cine.ed] == 3, ed == 3) > 0.85
    assert _dice(pred.labels[cine.ed] == 2, ed == 2) > 0.7
    assert _dice(pred.labels[cine.ed] == 1, ed == 1) > 0.7
    # centred on the LV (manual centroid within 5 mm)
    _, r, c = np.nonzero((ed == 2) | (ed == 3))
    err = np.hypot((pred.lv_centre_voxel[0] - r.mean()) * cine.geometry.spacing[1],
                   (pred.lv_centre_voxel[1] - c.mean()) * cine.geometry.spacing[2])
    assert err < 5.0


def test_off_centre_heart_and_flipped_axis(cine):
    # cut the image so the LV sits near a corner of the field of view
    ed = cine.labels[cine.ed]
    _, r, c = np.nonzero((ed == 2) | (ed == 3))
    r0, c0 = max(int(r.mean()) - 45, 0), max(int(c.mean()) - 45, 0)
    g = cine.geometry
    origin = g.origin + g.direction @ (g.spacing * np.array([0, r0, c0]))
    data = cine.data[cine.ed : cine.ed + 1, :, r0:, c0:][:, :, :, ::-1]  # ED only; flip the column axis too
    direction = g.direction.copy()
    origin = origin + direction[:, 2] * g.spacing[2] * (data.shape[3] - 1)
    direction[:, 2] *= -1
    moved = Cine(data=np.ascontiguousarray(data), geometry=Geometry(g.spacing, origin, direction),
                 times_ms=np.full(1, np.nan), ed=0)
    pred = predict(moved, with_motion=False)
    truth = ed[:, r0:, c0:][:, :, ::-1]
    assert _dice(pred.labels[0] == 3, truth == 3) > 0.85


def test_no_heart_is_a_clear_error():
    blank = Cine(data=np.zeros((2, 4, 64, 64), np.float32), geometry=Geometry((8.0, 1.5, 1.5)),
                 times_ms=np.full(2, np.nan), source="blank.nii.gz")
    with pytest.raises(InputError, match="blank.nii.gz.*no left ventricle") as info:
        predict(blank, with_motion=False)
    assert "--spacing" not in str(info.value)


def test_a_lost_voxel_size_is_named_when_no_heart_is_found(cine):
    """A real study whose header lost its spacing (1 x 1 x 1 mm): the heart looks 1.5 times too large
    to the networks. When they then find no LV, the error says the spacing is the likely cause."""
    lost = Cine(data=cine.data[:1].copy(), geometry=Geometry((1.0, 1.0, 1.0)), times_ms=np.full(1, np.nan),
                source="lost.nii.gz")
    with pytest.raises(InputError, match=r"lost.nii.gz: no left ventricle.*1 x 1 x 1 mm.*--spacing"):
        predict(lost, with_motion=False)


def _reversed_slices(cine: Cine) -> Cine:
    """The same study stored with the slice axis reversed (the affine adjusted: same anatomy)."""
    g = cine.geometry
    direction = g.direction.copy()
    origin = g.origin + direction[:, 0] * g.spacing[0] * (cine.data.shape[1] - 1)
    direction[:, 0] *= -1
    return Cine(data=np.ascontiguousarray(cine.data[:, ::-1]), geometry=Geometry(g.spacing, origin, direction),
                times_ms=cine.times_ms, ed=cine.ed, es=cine.es)


def test_results_do_not_depend_on_the_stored_slice_order(cine):
    """ACDC stores the base first; the same study stored apex first (as 3D Slicer's reader may give
    it) gets the same segmentation and motion in the world: the networks see the slice axis as
    stored, so such a stack is analysed base first and turned back. The raw network field kept
    for Recompute turns back with it."""
    a = predict(cine, with_motion=True, keep_network_motion=True, refine_motion=True)
    steps = []
    b = predict(_reversed_slices(cine), with_motion=True, keep_network_motion=True, refine_motion=True,
                progress=lambda f, m: steps.append(f))
    assert steps == sorted(steps) and steps[-1] <= 1.0  # the second pass does not set the progress back
    assert (a.motion_slice_order, b.motion_slice_order) == ("as stored", "reversed")
    np.testing.assert_array_equal(b.labels[:, ::-1], a.labels)
    ub = b.displacement[:, :, ::-1]  # back to the stored order of ``cine``; components are RAS mm
    assert np.abs(a.displacement).max() > 2.0  # the heart moves
    np.testing.assert_allclose(ub, a.displacement, atol=1e-4)
    assert a.lv_centre_voxel == b.lv_centre_voxel and np.allclose(a.lv_centre, b.lv_centre)
    from deepstrain.refinement import motion_for_labels

    again = motion_for_labels(b.network_motion, b.labels, refine=True)  # Recompute's refinement, in b's order
    np.testing.assert_allclose(again[:, :, ::-1], a.displacement, atol=0.01)  # refined again: rounding, at the stack ends


@pytest.fixture(scope="module")
def six_frames(tmp_path_factory):
    from deepstrain import phantom

    ph = phantom.generate_phantom(phantom.PhantomParams(
        n_frames=6, matrix_size=96, pv_samples=1, seed=4321, heart_rate_bpm=75))
    out = tmp_path_factory.mktemp("six") / "ph"
    phantom.write_phantom(ph, out)
    return io.load_cine(out / "cine.nii.gz")


def test_ed_and_es_frames_get_test_time_flips(six_frames):
    """The default flips the frames of largest and smallest LV cavity (of the final labels) and no
    other; those frames are labelled as with flips on every frame, the rest as without flips."""
    cine = six_frames
    assert cine.ed is None and cine.es is None
    key = predict(cine, with_motion=False)
    every = predict(cine, with_motion=False, tta="all")
    none = predict(cine, with_motion=False, tta="off")
    assert every.flipped_frames == tuple(range(6)) and none.flipped_frames == ()
    lv = (key.labels == 3).reshape(6, -1).sum(axis=1)
    ed, es = int(np.argmax(lv)), int(np.argmin(lv))
    assert key.ed == ed and {ed, es} <= set(key.flipped_frames) and len(key.flipped_frames) < 6

    def differ(a, b):  # voxels labelled differently
        return int((a != b).sum())

    changed = 0
    for f in range(6):
        same_as, other = (every, none) if f in key.flipped_frames else (none, every)
        assert differ(key.labels[f], same_as.labels[f]) <= 2  # batch composition: float rounding at most
        changed += differ(key.labels[f], other.labels[f])
    assert changed > 20  # the flips change the labels: the comparison above can fail
    # the frames of an earlier run, given explicitly, repeat it exactly
    np.testing.assert_array_equal(predict(cine, with_motion=False, tta=key.flipped_frames).labels, key.labels)
    # given ED and ES are the frames flipped
    import dataclasses

    given = predict(dataclasses.replace(cine, ed=1, es=4), with_motion=False)
    assert given.flipped_frames == (1, 4) and given.ed == 1


def test_given_labels_decide_the_frames_flipped_and_the_motion_reference(six_frames):
    """With a given segmentation (refined with), ED and ES are its frames of largest / smallest LV
    cavity, as the analysis takes them: those are flipped, and the motion starts from that ED."""
    from pathlib import Path

    labels = io.load_labels(Path(six_frames.source).parent / "labels.nii.gz", six_frames)
    lv = (labels == 3).reshape(6, -1).sum(axis=1)
    ed, es = int(np.argmax(lv)), int(np.argmin(lv))
    other_es = next(f for f in range(6) if f not in (ed, es))
    moved = labels.copy()
    cavity = np.argwhere(moved[other_es] == 3)
    gone = cavity[: int(0.8 * len(cavity))]  # most of its cavity relabelled myocardium: now the smallest
    moved[other_es][tuple(gone.T)] = 2
    assert int(np.argmin((moved == 3).reshape(6, -1).sum(axis=1))) == other_es
    pred = predict(six_frames, with_motion=True, refine_with=moved, refine_motion=True)
    assert pred.flipped_frames == tuple(sorted({ed, other_es})) and pred.ed == ed


@pytest.mark.parametrize("tta", [True, "some", (0, 9)])
def test_unknown_test_time_flips_are_refused(six_frames, tta):
    with pytest.raises(ValueError, match="tta must be|outside the study"):
        predict(six_frames, with_motion=False, tta=tta)
