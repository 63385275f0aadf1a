"""Tests of the training code: data split, augmentation, a short run that resumes exactly."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from deepstrain.training import DEFAULTS, add_training_arguments
from deepstrain.training import data as D
from deepstrain.training import centring, segmentation
from deepstrain.errors import InputError


def test_split_is_fixed_and_balanced():
    assert len(D.VALIDATION_PATIENTS) == 20 and len(D.TRAINING_PATIENTS) == 80
    assert not set(D.VALIDATION_PATIENTS) & set(D.TRAINING_PATIENTS)
    groups = [(int(p[-3:]) - 1) // 20 for p in D.VALIDATION_PATIENTS]
    assert np.bincount(groups).tolist() == [4, 4, 4, 4, 4]


def test_soft_dice_loss_is_zero_for_a_perfect_prediction():
    y = torch.randint(0, 4, (2, 16, 16))
    logits = 50.0 * torch.nn.functional.one_hot(y, 4).permute(0, 3, 1, 2).float()
    assert float(segmentation.soft_dice_loss(logits, y, 4)) < 1e-3
    assert segmentation.dice_per_class(y, y, 4)[0] == 1.0


@pytest.fixture(scope="module")
def cache(tmp_path_factory, shared_data):
    c = tmp_path_factory.mktemp("cache")
    D.build_cache(shared_data / "acdc" / "training", c, ("patient001", "patient005"))
    return c


def _args(tmp_path, shared_data, cache, name, **kw):
    p = argparse.ArgumentParser()
    add_training_arguments(p, **DEFAULTS[name])
    a = p.parse_args(["--data", str(shared_data / "acdc" / "training"), "--run-dir", str(tmp_path / name),
                      "--cache", str(cache), "--patients", "1", "--batch", "2", "--crop", "64",
                      "--checkpoint-every", "1", "--val-every", "1000"])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_augmented_batches_keep_labels_on_the_anatomy(cache):
    data = D.load_cache(cache, ("patient001",))
    x, y = D.segmentation_batch(data, np.random.default_rng(0), 32, size=96)
    assert x.shape == (32, 1, 96, 96) and y.shape == (32, 96, 96)
    # the LV cavity is bright blood, the myocardium dark, also after augmentation
    assert float(x[:, 0][y == 3].mean()) > float(x[:, 0][y == 2].mean()) + 0.15
    xc, yc = D.centring_batch(data, np.random.default_rng(0), 8, size=64)
    assert xc.shape == (8, 1, 64, 64) and set(torch.unique(yc).tolist()) <= {0, 1}


def test_batches_with_neighbouring_slices(cache):
    data = D.load_cache(cache, ("patient001",))
    x, y = D.segmentation_batch(data, np.random.default_rng(0), 32, size=96, channels=3)
    assert x.shape == (32, 3, 96, 96) and y.shape == (32, 96, 96)
    assert float(x[:, 1][y == 3].mean()) > float(x[:, 1][y == 2].mean()) + 0.15  # the labels go with channel 1
    img, lab, ids = D.validation_slices(data, size=96, channels=3)
    z = data[0]["seg_img"].shape[1]
    assert img.shape == (2 * z, 3, 96, 96) and lab.shape == (2 * z, 96, 96) and len(ids) == 2 * z
    assert torch.equal(img[1, 0], img[0, 1]) and torch.equal(img[0, 2], img[1, 1])
    assert not img[z, 0].any()  # the ES stack starts afresh: no neighbour from the ED frame


def test_a_five_slice_context_run_trains_a_five_channel_network(tmp_path, shared_data, cache):
    data = D.load_cache(cache, ("patient001",))
    x, y = D.segmentation_batch(data, np.random.default_rng(0), 32, size=96, channels=5)
    assert x.shape == (32, 5, 96, 96)
    assert float(x[:, 2][y == 3].mean()) > float(x[:, 2][y == 2].mean()) + 0.15  # the labels go with channel 2
    out = segmentation.main(_args(tmp_path, shared_data, cache, segmentation.NAME, iterations=2, context=5))
    assert out["config"]["in_channels"] == 5
    first = next(v for v in torch.load(tmp_path / segmentation.NAME / "last.pt", weights_only=False)["model"].values()
                 if v.ndim == 4)
    assert first.shape[1] == 5
    with pytest.raises(InputError, match="cannot resume"):  # resumed with the shipped three-slice configuration
        segmentation.main(_args(tmp_path, shared_data, cache, segmentation.NAME, iterations=4, resume=True))


def test_degrade_resolution_blurs_only_the_chosen_slices():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((6, 3, 64, 64)).astype(np.float32))
    assert torch.equal(D.degrade_resolution(x, np.random.default_rng(1), 0.0), x)
    y = D.degrade_resolution(x, np.random.default_rng(1), 1.0, pixel_mm=(2.5, 2.5))
    assert y.shape == x.shape and not torch.equal(y, x)
    # half the resolution: pixel-to-pixel noise is averaged away, the mean brightness stays
    assert float(y.diff(dim=-1).abs().mean()) < 0.5 * float(x.diff(dim=-1).abs().mean())
    assert abs(float(y.mean()) - float(x.mean())) < 0.01
    assert torch.equal(D.degrade_resolution(x, np.random.default_rng(1), 0.5),
                       D.degrade_resolution(x, np.random.default_rng(1), 0.5))  # seeded: reproducible
    z = D.degrade_resolution(x, np.random.default_rng(1), 0.5)
    changed = [not torch.equal(z[i], x[i]) for i in range(6)]
    assert any(changed) and not all(changed)


def test_lowres_share_reaches_the_batches(cache, monkeypatch):
    monkeypatch.setattr(D, "augment_intensity", lambda x, rng: x)  # compare the geometry-augmented images only
    data = D.load_cache(cache, ("patient001",))
    a, ya = D.segmentation_batch(data, np.random.default_rng(0), 8, size=64, channels=3)
    b, yb = D.segmentation_batch(data, np.random.default_rng(0), 8, size=64, channels=3, lowres_share=1.0)
    assert torch.equal(ya, yb)  # same slices, same labels
    assert float(b.diff(dim=-1).abs().mean()) < 0.9 * float(a.diff(dim=-1).abs().mean())  # coarser images


@pytest.mark.parametrize("module", [segmentation, centring])
def test_two_iterations_then_resume_equals_an_uninterrupted_run(tmp_path, shared_data, cache, module):
    name = module.NAME
    straight = module.main(_args(tmp_path / "a", shared_data, cache, name, iterations=3))
    stopped = module.main(_args(tmp_path / "b", shared_data, cache, name, iterations=3, stop_after=2))
    assert stopped["stopped_at"] == 2
    ck = torch.load(tmp_path / "b" / name / "last.pt", weights_only=False)
    assert ck["iteration"] == 2
    resumed = module.main(_args(tmp_path / "b", shared_data, cache, name, iterations=3, resume=True))
    assert resumed["history"][-1]["iteration"] == 3
    a = torch.load(tmp_path / "a" / name / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / name / "last.pt", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    val = {k: v for k, v in straight["history"][-1].items() if k.startswith("val_")}
    assert val == pytest.approx({k: resumed["history"][-1][k] for k in val})


def test_average_of_two_runs_is_their_parameter_mean_and_is_validated(tmp_path, shared_data, cache):
    for seed in (0, 1):
        segmentation.main(_args(tmp_path / f"s{seed}", shared_data, cache, segmentation.NAME, iterations=2, seed=seed))
    ck = [tmp_path / f"s{seed}" / segmentation.NAME / "last.pt" for seed in (0, 1)]
    out = segmentation.main(_args(tmp_path / "avg", shared_data, cache, segmentation.NAME, iterations=2, average=ck))
    assert out["averaged_from"] == [str(p) for p in ck] and "val_dice_lv" in out["history"][-1]
    a, b = (torch.load(p, weights_only=False)["model"] for p in ck)
    m = torch.load(tmp_path / "avg" / segmentation.NAME / "last.pt", weights_only=False)["model"]
    for k, v in m.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (a[k] + b[k]) / 2)
    other = torch.load(ck[1], weights_only=False)
    other["config"] = {**other["config"], "base": 8}
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(InputError, match="cannot combine"):
        segmentation.main(_args(tmp_path / "bad", shared_data, cache, segmentation.NAME, iterations=2,
                                average=[ck[0], tmp_path / "other.pt"]))


def test_wider_bf16_run_keeps_snapshots_and_refuses_a_mismatched_resume(tmp_path, shared_data, cache):
    out = segmentation.main(_args(tmp_path, shared_data, cache, segmentation.NAME, iterations=4, width=8,
                                  bf16=True, snapshot_every=2))
    assert out["config"]["base"] == 8 and out["bf16"] is True
    run = tmp_path / segmentation.NAME
    snaps = sorted(p.name for p in run.glob("snapshot_*.pt"))
    assert snaps == ["snapshot_000002.pt", "snapshot_000004.pt"]
    s2, s4 = (torch.load(run / n, weights_only=False) for n in snaps)
    assert "optimizer" not in s2 and s2["iteration"] == 2 and s2["config"]["base"] == 8
    last = torch.load(run / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(last[k], s4["model"][k]) for k in last)
    assert not all(torch.equal(s2["model"][k], s4["model"][k]) for k in last)  # it trained in between
    conv = next(v for k, v in last.items() if v.ndim == 4)
    assert conv.shape[0] == 8 and conv.dtype == torch.float32  # bf16 autocast keeps float32 weights
    avg = segmentation.main(_args(tmp_path / "avg", shared_data, cache, segmentation.NAME, iterations=4, width=8,
                                  average=[run / n for n in snaps]))  # snapshots (no optimizer state) average
    assert len(avg["averaged_from"]) == 2 and avg["config"]["base"] == 8
    with pytest.raises(InputError, match="cannot resume"):  # the default width differs from the checkpoint's
        segmentation.main(_args(tmp_path, shared_data, cache, segmentation.NAME, iterations=6, resume=True))
    with pytest.raises(InputError, match="resume it the same way"):  # bfloat16 run resumed in float32
        segmentation.main(_args(tmp_path, shared_data, cache, segmentation.NAME, iterations=6, width=8, resume=True))


def test_phantom_slices_join_segmentation_batches(tmp_path, cache):
    # a stored training phantom (format of deepstrain.training.motion.cache_phantom): a bright disc
    # (LV cavity) in a dark ring (myocardium) on 6 frames
    t, z, n = 6, 4, 100
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - 50, xx - 50)
    lab = np.where(r < 12, 3, np.where(r < 18, 2, 0)).astype(np.uint8)
    labels = np.broadcast_to(lab, (t, z, n, n)).copy()
    images = np.where(labels == 3, 1000.0, np.where(labels == 2, 300.0, 100.0)).astype(np.float32)
    src = tmp_path / "phantoms"
    src.mkdir()
    np.savez(src / "phantom1000.npz", images=images, labels=labels, spacing=np.array([8.0, 1.5, 1.5]),
             ed=0, es=2)
    ph = D.load_phantom_cache(src, tmp_path / "cache", 1)
    assert ph[0]["seg_img"].shape == (D.PHANTOM_SEG_FRAMES, z, D.SEG_CACHE_SIZE, D.SEG_CACHE_SIZE)
    assert set(np.unique(ph[0]["seg_lab"]).tolist()) == {0, 2, 3}
    data = D.load_cache(cache, ("patient001",))
    x, y = D.segmentation_batch(data, np.random.default_rng(0), 16, size=64, phantoms=ph, phantom_share=1.0)
    assert not (y == 1).any()  # no RV in the phantom: every slice came from it
    x, y = D.segmentation_batch(data, np.random.default_rng(0), 16, size=64, phantoms=ph, phantom_share=0.0)
    assert (y == 1).any()  # patient001 has an RV


def test_batches_from_worker_processes_are_the_batches_drawn_in_process(tmp_path, shared_data, cache):
    a = segmentation.main(_args(tmp_path / "a", shared_data, cache, segmentation.NAME, iterations=3))
    b = segmentation.main(_args(tmp_path / "b", shared_data, cache, segmentation.NAME, iterations=3, workers=2))
    ma = torch.load(tmp_path / "a" / segmentation.NAME / "last.pt", weights_only=False)["model"]
    mb = torch.load(tmp_path / "b" / segmentation.NAME / "last.pt", weights_only=False)["model"]
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    assert a["history"][-1]["val_dice_lv"] == b["history"][-1]["val_dice_lv"]


def test_compact_cache_reads_back_within_rounding_and_trains_without_the_acdc_folder(tmp_path, shared_data, cache):
    D.write_compact_cache(cache, tmp_path / "compact", ("patient001", "patient005"))
    full = D.load_cache(cache, ("patient001",))[0]
    small = D.load_cache(tmp_path / "compact", ("patient001",))[0]
    assert small["seg_img"].dtype == np.float16 and np.array_equal(small["seg_lab"], full["seg_lab"])
    err = np.abs(small["seg_img"].astype(np.float32) - full["seg_img"].astype(np.float32)).max()
    assert 0 < err <= 0.5 / 255 + 1e-3  # rounded to 1/255 steps (plus float16 storage)
    args = _args(tmp_path, shared_data, tmp_path / "compact", segmentation.NAME, iterations=1)
    args.data = tmp_path / "no_such_folder"
    assert segmentation.main(args)["iterations"] == 1
    with pytest.raises(InputError, match="ACDC training folder not found"):
        D.build_cache(tmp_path / "no_such_folder", tmp_path / "compact", ("patient002",))
    with pytest.raises(ValueError, match="no centring arrays"):
        D.centring_batch([small], np.random.default_rng(0), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_checkpoints_on_the_cpu_and_resumes(tmp_path, shared_data, cache):
    segmentation.main(_args(tmp_path, shared_data, cache, segmentation.NAME, iterations=3, stop_after=2, device="cuda"))
    ck = torch.load(tmp_path / segmentation.NAME / "last.pt", weights_only=False)
    assert ck["iteration"] == 2 and all(v.device.type == "cpu" for v in ck["model"].values())
    out = segmentation.main(_args(tmp_path, shared_data, cache, segmentation.NAME, iterations=3, resume=True,
                                  device="cuda", workers=2))
    assert out["history"][-1]["iteration"] == 3


def test_cuda_without_a_cuda_device_is_a_clear_error(tmp_path, shared_data, cache, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no CUDA device"):
        segmentation.main(_args(tmp_path, shared_data, cache, segmentation.NAME, iterations=1, device="cuda"))


def test_ensemble_of_two_runs_holds_both_unchanged_and_is_validated(tmp_path, shared_data, cache):
    for seed in (0, 1):
        segmentation.main(_args(tmp_path / f"s{seed}", shared_data, cache, segmentation.NAME, iterations=2, seed=seed))
    ck = [tmp_path / f"s{seed}" / segmentation.NAME / "last.pt" for seed in (0, 1)]
    out = segmentation.main(_args(tmp_path / "ens", shared_data, cache, segmentation.NAME, iterations=2, ensemble=ck))
    assert out["ensemble_of"] == [str(p) for p in ck] and out["config"]["members"] == 2
    # the provenance is the members' (seeds 0 and 1), not the combining command's own defaults
    assert [m["seed"] for m in out["combined_from"]] == [0, 1] and out["seed"] is None and out["batch"] is None
    assert torch.load(tmp_path / "ens" / segmentation.NAME / "last.pt", weights_only=False)["combined_from"][1]["seed"] == 1
    assert "val_dice_lv" in out["history"][-1]
    m = torch.load(tmp_path / "ens" / segmentation.NAME / "last.pt", weights_only=False)["model"]
    for i, p in enumerate(ck):
        for k, v in torch.load(p, weights_only=False)["model"].items():
            assert torch.equal(m[f"members.{i}.{k}"], v), k
    with pytest.raises(InputError, match="two different ways"):
        segmentation.main(_args(tmp_path / "bad", shared_data, cache, segmentation.NAME, iterations=2,
                                ensemble=ck, average=ck))
    with pytest.raises(InputError, match="at least two"):
        segmentation.main(_args(tmp_path / "bad", shared_data, cache, segmentation.NAME, iterations=2, ensemble=ck[:1]))
    with pytest.raises(InputError, match="for the segmentation network"):
        centring.main(_args(tmp_path / "bad", shared_data, cache, centring.NAME, iterations=2, ensemble=ck))


def test_resume_refuses_other_options_and_records_the_uninterrupted_command(tmp_path, shared_data, cache):
    name = segmentation.NAME
    straight = segmentation.main(_args(tmp_path / "a", shared_data, cache, name, iterations=3,
                                       command_line="deepstrain train segmentation --iterations 3"))
    segmentation.main(_args(tmp_path / "b", shared_data, cache, name, iterations=3, stop_after=2,
                            command_line="deepstrain train segmentation --iterations 3 --stop-after 2"))
    with pytest.raises(InputError, match=r"batch: 2 then, 4 now.*resume it with the same options"):
        segmentation.main(_args(tmp_path / "b", shared_data, cache, name, iterations=3, batch=4, resume=True))
    with pytest.raises(InputError, match=r"seed: 0 then, 1 now"):
        segmentation.main(_args(tmp_path / "b", shared_data, cache, name, iterations=3, seed=1, resume=True))
    resumed = segmentation.main(_args(tmp_path / "b", shared_data, cache, name, iterations=3, resume=True,
                                      command_line="deepstrain train segmentation --iterations 3 --resume"))
    assert resumed["command"] == straight["command"] == "deepstrain train segmentation --iterations 3"
    assert [h["iteration"] for h in resumed["history"]] == [h["iteration"] for h in straight["history"]]


def test_motion_training_resumes_exactly(tmp_path, shared_data):
    """Stopped at step 3 and resumed, the motion run gives the weights of the uninterrupted run (the
    checkpoint keeps the random generators); other options or no checkpoint are refused."""
    from deepstrain.training import motion

    def run(out, *extra):
        p = argparse.ArgumentParser()
        motion.add_arguments(p)
        a = p.parse_args(["--data", str(shared_data), "--out", str(tmp_path / out), "--phantoms", "2", "--patients", "4",
                          "--phantom-dir", str(tmp_path / "phantoms"), "--steps", "5", "--save-every", "2",
                          "--val-every", "1000", "--seed", "4", "--threads", "1", *extra])
        return motion.main(a)

    with pytest.raises(InputError, match="no checkpoint to resume from"):
        run("nothing", "--resume")
    run("straight")
    run("stopped", "--stop-after", "3")
    assert torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)["step"] == 3
    with pytest.raises(InputError, match=r"lr: 0.001 then, 0.002 now"):
        run("stopped", "--resume", "--lr", "0.002")
    run("stopped", "--resume")
    a = torch.load(tmp_path / "straight" / "motion_final.pt", weights_only=False)
    b = torch.load(tmp_path / "stopped" / "motion_final.pt", weights_only=False)
    sa, sb = (x.get("state_dict") or x["model"] for x in (a, b))
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------- bad input, existing runs
def _patient_copy(tmp_path, shared_data, name="patient001"):
    """An ACDC folder with ``name`` as links to the real files (to break one) and patient005 linked."""
    data = tmp_path / "acdc"
    (data / name).mkdir(parents=True)
    for f in (shared_data / "acdc" / "training" / name).iterdir():
        (data / name / f.name).symlink_to(f)
    (data / "patient005").symlink_to(shared_data / "acdc" / "training" / "patient005")
    return data / name


def _truncate(f):
    raw = f.read_bytes()
    f.unlink()
    f.write_bytes(raw[: len(raw) // 2])


def _garbage(f):
    f.unlink()
    f.write_text("not an image\n")


def _no_ed(f):
    text = f.read_text()
    f.unlink()
    f.write_text("".join(line + "\n" for line in text.splitlines() if not line.startswith("ED")))


@pytest.mark.parametrize("breaks, file, problem", [
    (_truncate, "patient001_frame01.nii.gz", "cannot be read as NIfTI"),
    (_garbage, "patient001_frame01.nii.gz", "cannot be read as NIfTI"),
    (_no_ed, "Info.cfg", "no ED frame number"),
    (lambda f: f.unlink(), "patient001_frame01_gt.nii.gz", "missing ACDC label file"),
])
def test_bad_acdc_files_are_named_and_leave_no_run_folder(tmp_path, shared_data, breaks, file, problem):
    patient = _patient_copy(tmp_path, shared_data)
    breaks(patient / file)
    args = _args(tmp_path, shared_data, tmp_path / "cache", segmentation.NAME, iterations=1, data=patient.parent)
    with pytest.raises(InputError, match=problem) as exc:
        segmentation.main(args)
    assert exc.value.path == str(patient / file)
    assert not (tmp_path / segmentation.NAME).exists() and not (tmp_path / "cache").exists()


def test_options_and_folders_that_cannot_work_are_refused_before_anything_is_written(tmp_path, shared_data, cache):
    with pytest.raises(InputError, match="--val-every: must be at least 1, got 0"):
        segmentation.main(_args(tmp_path, shared_data, cache, segmentation.NAME, iterations=1, val_every=0))
    (tmp_path / "afile").write_text("x")
    for where in ("run_dir", "cache", "export_dir"):
        a = _args(tmp_path, shared_data, cache, segmentation.NAME, iterations=1, export=True)
        setattr(a, where, tmp_path / "afile" / "sub")
        with pytest.raises(InputError, match="afile is a file, not a folder"):
            segmentation.main(a)
    assert not (tmp_path / segmentation.NAME).exists()
    for option, value in (("context", 5), ("phantoms", 2), ("lowres_share", 0.2)):  # not the centring's options
        with pytest.raises(InputError, match=f"--{option.replace('_', '-')}: is for the segmentation network, not centring"):
            centring.main(_args(tmp_path, shared_data, cache, centring.NAME, iterations=1, **{option: value}))
    assert not (tmp_path / centring.NAME).exists()
    args = _args(tmp_path, shared_data, cache, segmentation.NAME, iterations=1)
    args.data = tmp_path / "no_such_folder"  # a full cache is no excuse for a wrong --data
    with pytest.raises(InputError, match="ACDC training folder not found"):
        segmentation.main(args)


def test_a_cache_of_other_data_is_made_again(tmp_path, shared_data, cache):
    import shutil

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(cache / "patient005.npz", foreign / "patient001.npz")  # another patient under this name
    lines = []
    D.build_cache(shared_data / "acdc" / "training", foreign, ("patient001",), log=lines.append)
    assert lines == ["cached patient001 again (the cache held another data set's)"]
    with np.load(foreign / "patient001.npz") as z, np.load(cache / "patient001.npz") as y:
        assert np.array_equal(z["seg_lab"], y["seg_lab"])


def test_a_fresh_run_refuses_a_folder_holding_a_run_and_an_export_unless_overwrite(tmp_path, shared_data, cache):
    name = segmentation.NAME
    run = tmp_path / name
    segmentation.main(_args(tmp_path, shared_data, cache, name, iterations=2, snapshot_every=1))
    before = (run / "last.pt").read_bytes()
    with pytest.raises(InputError, match="holds a run.*--resume.*--overwrite"):
        segmentation.main(_args(tmp_path, shared_data, cache, name, iterations=1))
    assert (run / "last.pt").read_bytes() == before
    segmentation.main(_args(tmp_path, shared_data, cache, name, iterations=1, overwrite=True))
    assert sorted(p.name for p in run.iterdir()) == ["last.pt", "summary.json"]  # the old snapshots went too
    exp = tmp_path / "exp"
    segmentation.main(_args(tmp_path / "e1", shared_data, cache, name, iterations=1, export=True, export_dir=exp))
    weights = (exp / "segmentation.pt").read_bytes()
    with pytest.raises(InputError, match="already holds exported 'segmentation' weights"):
        segmentation.main(_args(tmp_path / "e2", shared_data, cache, name, iterations=1, export=True, export_dir=exp))
    assert (exp / "segmentation.pt").read_bytes() == weights and not (tmp_path / "e2").exists()
    centring.main(_args(tmp_path / "e3", shared_data, cache, centring.NAME, iterations=1, export=True, export_dir=exp))
    segmentation.main(_args(tmp_path / "e4", shared_data, cache, name, iterations=1, export=True, export_dir=exp,
                            overwrite=True, seed=1))
    assert (exp / "segmentation.pt").read_bytes() != weights  # another seed's weights replaced them


def test_unreadable_and_foreign_checkpoints_are_named(tmp_path, shared_data, cache):
    name = segmentation.NAME
    centring.main(_args(tmp_path / "c", shared_data, cache, centring.NAME, iterations=1))
    other = tmp_path / "c" / centring.NAME / "last.pt"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(other.read_bytes()[:1000])
    run = tmp_path / "r" / name
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(bad.read_bytes())
    with pytest.raises(InputError, match="cannot be read as a checkpoint"):
        segmentation.main(_args(tmp_path / "r", shared_data, cache, name, iterations=1, resume=True))
    for kw, problem in (({"init": other}, "a checkpoint of the centring network.*cannot start from it"),
                        ({"init": bad}, "cannot be read as a checkpoint"),
                        ({"average": [other, other]}, "centring network.*cannot combine"),
                        ({"average": [tmp_path / "none.pt"]}, "no checkpoint to combine")):
        with pytest.raises(InputError, match=problem):
            segmentation.main(_args(tmp_path / "x", shared_data, cache, name, iterations=1, **kw))
    assert not (tmp_path / "x").exists()


def test_a_resumed_run_records_and_prints_the_losses_of_the_uninterrupted_run(tmp_path, shared_data, cache, capsys):
    def losses(out):
        printed = [line.split(" lr ")[0] for line in capsys.readouterr().out.splitlines() if " it 3/3 " in line]
        return [h["loss"] for h in out["history"]], printed

    name = segmentation.NAME
    straight = losses(segmentation.main(_args(tmp_path / "a", shared_data, cache, name, iterations=3, val_every=1)))
    segmentation.main(_args(tmp_path / "b", shared_data, cache, name, iterations=3, val_every=1, stop_after=2))
    capsys.readouterr()
    resumed = losses(segmentation.main(_args(tmp_path / "b", shared_data, cache, name, iterations=3, val_every=1,
                                             resume=True)))
    assert len(straight[0]) == 3 and len(straight[1]) == 1
    assert resumed == straight


def test_short_runs_end_their_warm_up_and_long_runs_keep_the_shipped_schedule():
    lr = segmentation.learning_rate
    assert lr(9, 50, 1.0) == 1.0 and lr(49, 50, 1.0) < 0.01  # 50 iterations: 10 of warm-up, then the decay
    assert lr(0, 1, 1.0) == 1.0
    for total in (500, 3000, 9500, 10000):  # the shipped weights' lengths: warm-up over 100 as before
        old = [(i + 1) / 100 if i < 100 else 0.5 * (1 + np.cos(np.pi * min(1.0, (i - 100) / (total - 100))))
               for i in range(total)]
        assert [lr(i, total, 1.0) for i in range(total)] == pytest.approx(old, rel=1e-12)


def test_the_command_line_names_the_problem_and_the_kept_checkpoint(tmp_path, shared_data, cache, monkeypatch, capsys):
    from deepstrain import cli

    common = ["train", "segmentation", "--data", str(shared_data / "acdc" / "training"), "--cache", str(cache),
              "--run-dir", str(tmp_path / "run"), "--patients", "1", "--iterations", "1", "--crop", "64"]
    assert cli.main(common + ["--val-every", "0"]) == 2
    assert capsys.readouterr().err.strip() == "deepstrain: error: --val-every: must be at least 1, got 0"

    def interrupted(args):
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "last.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(segmentation, "main", interrupted)
    assert cli.main(common) == 130
    assert capsys.readouterr().err.strip() == (f"deepstrain: interrupted; the last checkpoint is kept in "
                                               f"{tmp_path / 'run'}: resume with --resume")


def _motion_args(tmp_path, data, out, *extra):
    from deepstrain.training import motion

    p = argparse.ArgumentParser()
    motion.add_arguments(p)
    return p.parse_args(["--data", str(data), "--out", str(tmp_path / out), "--phantoms", "1", "--patients", "4",
                         "--phantom-dir", str(tmp_path / "phantoms"), "--steps", "2", "--val-every", "1000",
                         "--channels", "4", "4", "4", "4", "4", "--threads", "1", *extra])


def test_motion_training_refuses_bad_input_before_writing(tmp_path, shared_data):
    from deepstrain.training import motion

    data = tmp_path / "data"
    (data / "acdc" / "training").mkdir(parents=True)
    for p in (shared_data / "acdc" / "training").glob("patient*"):
        if p.name != "patient002":  # a training patient of the fixed split is missing
            (data / "acdc" / "training" / p.name).symlink_to(p)
    with pytest.raises(InputError, match="patient002: ACDC patient folder not found"):
        motion.main(_motion_args(tmp_path, data, "out"))
    (data / "acdc" / "training" / "patient002").symlink_to(shared_data / "acdc" / "training" / "patient002")
    with pytest.raises(InputError, match="crops.json: missing"):
        motion.main(_motion_args(tmp_path, data, "out"))
    with pytest.raises(InputError, match="--save-every: must be at least 1"):
        motion.main(_motion_args(tmp_path, shared_data, "out", "--save-every", "0"))
    with pytest.raises(InputError, match="no weights to average"):
        motion.main(_motion_args(tmp_path, shared_data, "out", "--average", str(tmp_path / "none.pt")))
    assert not (tmp_path / "out").exists()
    out = tmp_path / "old"
    out.mkdir()
    torch.save({"model": {}, "iteration": 2, "network": "segmentation"}, out / "checkpoint.pt")
    with pytest.raises(InputError, match="holds a motion run.*--resume.*--overwrite"):
        motion.main(_motion_args(tmp_path, shared_data, "old"))
    with pytest.raises(InputError, match="checkpoint of the segmentation network, not of the motion network"):
        motion.main(_motion_args(tmp_path, shared_data, "old", "--resume"))
    (out / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot be read as a checkpoint"):
        motion.main(_motion_args(tmp_path, shared_data, "old", "--resume"))
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # no train.log either
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(InputError, match="bad.nii.gz: cannot be read as NIfTI"):
        motion._read_nifti(tmp_path / "bad.nii.gz")


_BAD_OPTIONS = [  # (option words, message) refused by every trainer before anything is written
    (["--lr", "-1"], "--lr: must be a positive number, got -1.0"),
    (["--lr", "0"], "--lr: must be a positive number, got 0.0"),
    (["--lr", "nan"], "--lr: must be a positive number, got nan"),
    (["--lr", "inf"], "--lr: must be a positive number, got inf"),
    (["--threads", "0"], "--threads: must be at least 1, got 0"),
    (["--seed", "-1"], "--seed: must be between 0 and 9223372036854775807, got -1"),
    (["--seed", str(2**63)], "--seed: must be between 0 and 9223372036854775807, got 9223372036854775808"),
    (["--phantom-share", "1.5"], "--phantom-share: must be a share between 0 and 1, got 1.5"),
    (["--phantom-share", "-0.1"], "--phantom-share: must be a share between 0 and 1, got -0.1"),
    (["--phantom-share", "nan"], "--phantom-share: must be a share between 0 and 1, got nan"),
]
_BAD_2D_OPTIONS = [  # only the centring and segmentation trainers have these options
    (["--device", "foo"], "--device: must be cpu or cuda[:N], got 'foo'"),
    (["--device", "meta"], "--device: must be cpu or cuda[:N], got 'meta'"),
    (["--lowres-share", "2"], "--lowres-share: must be a share between 0 and 1, got 2.0"),
]
_BAD_MOTION_OPTIONS = [
    (["--channels", "0", "0", "0", "0", "0"], "--channels: must all be at least 1, got 0 0 0 0 0"),
    (["--channels", "4", "4", "-4", "4", "4"], "--channels: must all be at least 1, got 4 4 -4 4 4"),
    (["--minutes", "-1"], "--minutes: must be a number of at least 0, got -1.0"),
    (["--w-dice", "nan"], "--w-dice: must be a number of at least 0, got nan"),
]


@pytest.mark.parametrize("network", ["segmentation", "centring"])
@pytest.mark.parametrize("words, message", _BAD_OPTIONS + _BAD_2D_OPTIONS)
def test_bad_option_values_of_the_2d_trainers_are_refused_before_anything_is_written(tmp_path, network, words,
                                                                                     message, capsys):
    from deepstrain import cli

    data = tmp_path / "data"  # refused before the data are read: no data needed
    argv = ["train", network, "--data", str(data), "--cache", str(tmp_path / "cache"), "--run-dir",
            str(tmp_path / "run"), "--patients", "4", "--iterations", "1", "--threads", "1", *words]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"deepstrain: error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no cache, no run folder


@pytest.mark.parametrize("words, message", _BAD_OPTIONS + _BAD_MOTION_OPTIONS)
def test_bad_option_values_of_the_motion_trainer_are_refused_before_anything_is_written(tmp_path, words, message,
                                                                                       capsys):
    from deepstrain import cli

    argv = ["train", "motion", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--patients", "4",
            "--phantoms", "1", "--steps", "1", "--threads", "1", *words]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"deepstrain: error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no out folder, no phantoms


def test_a_cuda_device_torch_does_not_have_is_refused(tmp_path, monkeypatch):
    from deepstrain.training import check_option_values

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_option_values(argparse.Namespace(device="cuda:0"))
    with pytest.raises(InputError, match=r"--device: cuda:1 was given, but torch sees 1 CUDA device\(s\)"):
        check_option_values(argparse.Namespace(device="cuda:1"))


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_an_interrupted_or_failed_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch, failure):
    from deepstrain.training import save_atomically

    target = tmp_path / "last.pt"
    save_atomically({"a": 1}, target, tmp_path / "last.tmp.pt")
    before = target.read_bytes()

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise failure("stopped while writing")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(failure):
        save_atomically({"a": 2}, target, tmp_path / "last.tmp.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"] and target.read_bytes() == before


def test_a_checkpoint_save_interrupted_in_a_2d_run_leaves_no_temporary_file(tmp_path, shared_data, cache,
                                                                             monkeypatch):
    real_save = torch.save

    def interrupted(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)  # the file is written, then Ctrl-C before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        segmentation.main(_args(tmp_path, shared_data, cache, segmentation.NAME, iterations=1))
    assert list((tmp_path / segmentation.NAME).iterdir()) == []


def test_a_motion_run_failing_before_its_first_checkpoint_does_not_block_its_re_run(tmp_path, shared_data,
                                                                                    monkeypatch):
    from deepstrain.training import motion

    def fails(*a, **kw):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(motion, "pair_loss", fails)
    phantom = tmp_path / "phantoms" / "phantom1000.npz"  # a stored phantom: no generation needed
    phantom.parent.mkdir()
    real_cache = motion.cache_phantom
    monkeypatch.setattr(motion, "cache_phantom", lambda params, f: real_cache(
        motion.training_phantom_params(1000), f))
    with pytest.raises(RuntimeError, match="out of memory"):
        motion.main(_motion_args(tmp_path, shared_data, "out"))
    assert not (tmp_path / "out").exists()  # no train.log that a re-run would have to --overwrite
    with pytest.raises(RuntimeError, match="out of memory"):  # the re-run is not refused as "holds a motion run"
        motion.main(_motion_args(tmp_path, shared_data, "out"))


def test_motion_validation_names_the_patients_it_used(tmp_path, shared_data, capsys):
    from deepstrain.training import motion

    motion.main(_motion_args(tmp_path, shared_data, "out", "--steps", "1", "--val-every", "1"))
    lines = [line for line in capsys.readouterr().out.splitlines() if "validation (" in line and " step 1:" in line]
    assert len(lines) == 1 and "validation (1 patient) step 1:" in lines[0]  # --patients 4: 1 validation patient
