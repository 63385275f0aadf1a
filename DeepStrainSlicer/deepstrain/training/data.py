"""ACDC training data: the fixed patient split, a compact cache, and batch augmentation.

Split (fixed, by patient): the validation patients are those whose number is a multiple of 5
(005, 010, ..., 100): 20 patients, 4 per ACDC group (DCM, HCM, MINF, NOR, RV). The other 80
are for training. Nothing about the validation patients is used in training, with one indirect
exception: the phantoms' intensity targets (:mod:`deepstrain.phantom`, calibration block) are means
over the 10 ``acdc_cine_crop`` cines, patient030 among them (pooled statistics; without it the
means move by at most 0.026; README, "Data, training and licences").

Cache (one ``patientNNN.npz`` per patient under the cache folder; derived data, never committed):

* ``seg_img`` / ``seg_lab``: ED and ES frames ``(2, Z, 176, 176)``: each frame normalised with
  :func:`deepstrain.preprocess.normalize_intensity`, then resampled to 1.25 mm and cropped
  around the manual LV centre (ED centroid of labels 2+3); labels by one-hot interpolation.
  176 > 128 leaves room for rotations and shifts before the 128 x 128 network crop.
* ``cen_img`` / ``cen_mask``: the whole field of view at 2.5 mm (sides a multiple of 16) and
  the LV mask (labels 2+3) for the centring network.

A compact copy of a cache (:func:`write_compact_cache`: the segmentation arrays only, so not for
the centring network; images as uint8 = round(255 x value)) is read the same way:
:func:`load_cache` turns uint8 images back into [0, 1]. It is what travels to a GPU machine
(45 MB for the 100 patients); the rounding (at most 0.002) is far below the noise added in
augmentation.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..cine import Geometry
from ..errors import InputError
from ..io import _load_nifti, nifti_affine, read_info_cfg
from ..networks.centring import CENTRING_SPACING_MM
from ..networks.segmentation import context_slices
from ..preprocess import crop_image, crop_labels, crop_transform, full_view_transform, normalize_intensity
from ..outputs import write_atomically
from . import check_output_folder

VALIDATION_PATIENTS: tuple[str, ...] = tuple(f"patient{n:03d}" for n in range(5, 101, 5))
"""The 20 validation patients (number % 5 == 0; 4 per group)."""
ALL_PATIENTS: tuple[str, ...] = tuple(f"patient{n:03d}" for n in range(1, 101))
TRAINING_PATIENTS: tuple[str, ...] = tuple(p for p in ALL_PATIENTS if p not in VALIDATION_PATIENTS)
SEG_CACHE_SIZE = 176
# How cache entries are made; changed whenever that changes (2026-11-23: intensity percentiles over
# the non-zero voxels, see :func:`deepstrain.preprocess.normalize_intensity`).
CACHE_RECIPE = "percentiles over non-zero voxels"
DATA_DESCRIPTION = (
    "ACDC training set (Bernard et al., 'Deep Learning Techniques for Automatic MRI Cardiac Multi-structures "
    "Segmentation and Diagnosis: Is the Problem Solved?', IEEE TMI 37(11):2514-2525, 2018), ED and ES frames "
    "with manual labels; licence CC BY-NC-SA 4.0"
)


def read_info(patient_dir: Path) -> dict[str, str]:
    """``Info.cfg`` of an ACDC patient folder as a dict of strings."""
    cfg = Path(patient_dir) / "Info.cfg"
    if not cfg.is_file():
        raise InputError(cfg, "missing ACDC Info.cfg")
    return read_info_cfg(cfg)


def load_acdc_volume(path: Path) -> tuple[np.ndarray, Geometry]:
    """An ACDC 3D NIfTI as ``(Z, Y, X)`` and its geometry (spacing from pixdim: the ACDC sform quirk);
    a missing or unreadable file is an :class:`InputError` naming it."""
    img, data = _load_nifti(Path(path))
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D volume, got shape {data.shape}")
    geom = Geometry.from_nifti_affine(nifti_affine(img)[0], tuple(float(z) for z in img.header.get_zooms()[:3]))
    return np.transpose(data, (2, 1, 0)), geom


def acdc_frames(patient_dir: Path) -> list[tuple[str, int]]:
    """``[("ED", frame number), ("ES", frame number)]`` (1-based ACDC frame numbers); an ``Info.cfg``
    without them is an :class:`InputError`."""
    info = read_info(patient_dir)
    out = []
    for key in ("ED", "ES"):
        try:
            frame = int(info[key])
        except KeyError:
            raise InputError(Path(patient_dir) / "Info.cfg", f"no {key} frame number (a line '{key}: N')") from None
        except ValueError:
            raise InputError(Path(patient_dir) / "Info.cfg", f"{key} is not a frame number: {info[key]!r}") from None
        if frame < 1:
            raise InputError(Path(patient_dir) / "Info.cfg", f"{key} must be a 1-based frame number, got {frame}")
        out.append((key, frame))
    return out


def check_patient_folder(patient_dir: Path) -> None:
    """Refuse (:class:`InputError`) an ACDC patient folder that is missing, lacks the ED/ES numbers in
    its ``Info.cfg`` or one of their image and ``_gt`` files, before anything is read or written."""
    patient_dir = Path(patient_dir)
    if not patient_dir.is_dir():
        raise InputError(patient_dir, "ACDC patient folder not found")
    for _, fr in acdc_frames(patient_dir):
        for suffix in ("", "_gt"):
            f = patient_dir / f"{patient_dir.name}_frame{fr:02d}{suffix}.nii.gz"
            if not f.is_file():
                raise InputError(f, "missing ACDC " + ("label file (manual segmentation)" if suffix else "image file"))


def source_key(patient_dir: Path) -> str:
    """What a cache entry was made from: the ``Info.cfg`` text, the names and sizes of the ED/ES
    files and :data:`CACHE_RECIPE`, hashed (so a cache made from other data, or by an older recipe,
    is not taken for this one)."""
    patient_dir = Path(patient_dir)
    h = hashlib.sha256(CACHE_RECIPE.encode())
    h.update((patient_dir / "Info.cfg").read_bytes())
    for _, fr in acdc_frames(patient_dir):
        for suffix in ("", "_gt"):
            f = patient_dir / f"{patient_dir.name}_frame{fr:02d}{suffix}.nii.gz"
            h.update(f"{f.name}:{f.stat().st_size};".encode())
    return h.hexdigest()


def lv_centre_voxel(labels: np.ndarray) -> tuple[float, float]:
    """Row/column (voxels) of the centroid of labels 2+3 over all slices."""
    m = (labels == 2) | (labels == 3)
    if not m.any():
        raise ValueError("no LV labels")
    _, r, c = np.nonzero(m)
    return float(r.mean()), float(c.mean())


def cache_patient(patient_dir: Path, out_file: Path) -> None:
    """Write the cache ``.npz`` of one ACDC patient (see the module docstring)."""
    name = patient_dir.name
    imgs, labs, geoms = [], [], []
    for _, fr in acdc_frames(patient_dir):
        img, g = load_acdc_volume(patient_dir / f"{name}_frame{fr:02d}.nii.gz")
        lab, _ = load_acdc_volume(patient_dir / f"{name}_frame{fr:02d}_gt.nii.gz")
        imgs.append(normalize_intensity(img.astype(np.float32)))
        labs.append(lab.astype(np.uint8))
        geoms.append(g)
    centre = lv_centre_voxel(labs[0])
    t = crop_transform(imgs[0].shape, geoms[0].spacing, centre, SEG_CACHE_SIZE)
    tf = full_view_transform(imgs[0].shape, geoms[0].spacing, CENTRING_SPACING_MM)
    seg_img = np.stack([crop_image(i, t) for i in imgs]).astype(np.float16)
    seg_lab = np.stack([crop_labels(lb, t) for lb in labs])
    cen_img = np.stack([crop_image(i, tf) for i in imgs]).astype(np.float16)
    cen_lab = np.stack([crop_labels(lb, tf) for lb in labs])
    cen_mask = ((cen_lab == 2) | (cen_lab == 3)).astype(np.uint8)
    info = read_info(patient_dir)
    write_atomically(out_file, out_file.with_suffix(".tmp.npz"), lambda tmp: np.savez_compressed(
        tmp, seg_img=seg_img, seg_lab=seg_lab, cen_img=cen_img, cen_mask=cen_mask,
        centre=np.array(centre), spacing=geoms[0].spacing, group=np.array(info.get("Group", "")),
        source=np.array(source_key(patient_dir)),
    ))


def _cached_source(npz: Path) -> str | None:
    """The :func:`source_key` a cache entry was made from ("compact" for a compact copy, None for an
    entry written before the key was stored); an unreadable entry is an :class:`InputError`."""
    try:
        with np.load(npz) as z:
            if "source" in z.files:
                return str(z["source"])
            return "compact" if z["seg_img"].dtype == np.uint8 else None
    except Exception as exc:  # truncated or foreign file
        raise InputError(npz, f"unreadable cache file ({exc}): delete it to cache the patient again") from exc


def build_cache(acdc_dir: Path, cache_dir: Path, patients: tuple[str, ...] = ALL_PATIENTS, log=print) -> None:
    """Cache every patient of ``patients`` not cached yet, or cached from other data (another
    :func:`source_key`: the entry is made again).

    ``acdc_dir`` must hold every patient of ``patients`` (checked before anything is written), except
    where all of them are in a compact cache (:func:`write_compact_cache`, the copy that travels to a
    machine without the data set). A cache folder this call created is removed again when caching fails.
    """
    acdc_dir, cache_dir = Path(acdc_dir), Path(cache_dir)
    entries = {p: cache_dir / f"{p}.npz" for p in patients}
    compact = all(f.is_file() and _cached_source(f) == "compact" for f in entries.values())
    if compact and not acdc_dir.is_dir():
        log(f"{acdc_dir} not found: training from the compact cache {cache_dir}")
        return
    if not acdc_dir.is_dir():
        raise InputError(acdc_dir, "ACDC training folder not found")
    for p in patients:
        check_patient_folder(acdc_dir / p)
    todo = [p for p, f in entries.items()
            if not f.is_file() or _cached_source(f) not in (None, "compact", source_key(acdc_dir / p))]
    check_output_folder(cache_dir, "cache")
    created = not cache_dir.exists()
    if todo:
        cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        for p in todo:
            stale = entries[p].is_file()
            cache_patient(acdc_dir / p, entries[p])
            log(f"cached {p}" + (" again (the cache held another data set's)" if stale else ""))
    except BaseException:
        if created and not any(cache_dir.iterdir()):
            cache_dir.rmdir()
        raise


PHANTOM_SEG_FRAMES = 4
"""Frames of each synthetic phantom used for segmentation training: ED, ES and two others, evenly spread."""


def cache_phantom_for_segmentation(phantom_npz: Path, out_file: Path) -> None:
    """Segmentation cache entry (``seg_img``/``seg_lab`` as for a patient) of a training phantom.

    ``phantom_npz`` is a phantom stored by :func:`deepstrain.training.motion.cache_phantom`
    (images and labels of every frame). :data:`PHANTOM_SEG_FRAMES` frames (ED, ES and frames
    spread over the cycle) are normalised and cropped like the ACDC frames, around the ED LV
    centre of the phantom's labels.
    """
    with np.load(phantom_npz) as z:
        images, labels, spacing = z["images"].astype(np.float32), z["labels"], np.asarray(z["spacing"], float)
        ed, es = int(z["ed"]), int(z["es"])
    n = images.shape[0]
    others = [f for f in np.linspace(0, n, PHANTOM_SEG_FRAMES, endpoint=False).astype(int)[1:] if f not in (ed, es)]
    frames = [ed, es] + others[: PHANTOM_SEG_FRAMES - 2]
    t = crop_transform(images.shape[-3:], spacing, lv_centre_voxel(labels[ed]), SEG_CACHE_SIZE)
    seg_img = np.stack([crop_image(normalize_intensity(images[f]), t) for f in frames]).astype(np.float16)
    seg_lab = np.stack([crop_labels(labels[f], t) for f in frames])
    write_atomically(out_file, out_file.with_suffix(".tmp.npz"), lambda tmp: np.savez_compressed(
        tmp, seg_img=seg_img, seg_lab=seg_lab, spacing=spacing, group=np.array("PHANTOM")))


def load_phantom_cache(phantom_dir: Path, cache_dir: Path, n: int, log=print) -> list[dict[str, np.ndarray]]:
    """Segmentation entries of the first ``n`` training phantoms (seeds of
    :data:`deepstrain.training.motion.PHANTOM_TRAIN_SEEDS`), generating phantoms and cache files as needed."""
    from .motion import PHANTOM_TRAIN_SEEDS, cache_phantom, training_phantom_params

    phantom_dir, cache_dir = Path(phantom_dir), Path(cache_dir)
    out = []
    for seed in list(PHANTOM_TRAIN_SEEDS)[:n]:
        src = phantom_dir / f"phantom{seed}.npz"
        if not src.exists():
            phantom_dir.mkdir(parents=True, exist_ok=True)
            cache_phantom(training_phantom_params(seed), src)
            log(f"generated {src}")
        dst = cache_dir / f"phantom{seed}_seg.npz"
        if not dst.exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            cache_phantom_for_segmentation(src, dst)
        with np.load(dst) as z:
            d = {k: z[k] for k in z.files}
        d["name"] = f"phantom{seed}"
        out.append(d)
    return out


def load_cache(cache_dir: Path, patients: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    """The cached arrays of ``patients`` (dicts with the keys of the module docstring, plus ``name``);
    uint8 images of a compact cache come back as float16 in [0, 1]."""
    out = []
    for p in patients:
        try:
            with np.load(Path(cache_dir) / f"{p}.npz") as z:
                d = {k: z[k] for k in z.files}
        except Exception as exc:  # truncated or foreign file
            raise InputError(Path(cache_dir) / f"{p}.npz",
                             f"unreadable cache file ({exc}): delete it to cache the patient again") from exc
        if d["seg_img"].dtype == np.uint8:
            d["seg_img"] = (d["seg_img"].astype(np.float32) / 255.0).astype(np.float16)
        d["name"] = p
        out.append(d)
    return out


def write_compact_cache(cache_dir: Path, out_dir: Path, patients: tuple[str, ...] = ALL_PATIENTS) -> None:
    """Copy the segmentation arrays of ``patients`` from ``cache_dir`` to ``out_dir`` with the images
    stored as uint8 (round(255 x value)); see the module docstring."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in patients:
        with np.load(Path(cache_dir) / f"{p}.npz") as z:
            img = np.round(z["seg_img"].astype(np.float32) * 255.0).astype(np.uint8)
            extra = {k: z[k] for k in ("spacing", "group", "centre") if k in z.files}
            lab = z["seg_lab"]
        write_atomically(out_dir / f"{p}.npz", out_dir / f"{p}.tmp.npz",
                         lambda tmp: np.savez_compressed(tmp, seg_img=img, seg_lab=lab, **extra))


def _affine_theta(n: int, rng: np.random.Generator, rot: float, scale: tuple[float, float], shift: float,
                  flip: bool, out_over_in: float) -> torch.Tensor:
    """Random affine matrices for ``F.affine_grid`` (normalised coordinates).

    ``shift`` is a fraction of the input half-width; ``out_over_in`` the output/input field ratio.
    """
    th = np.zeros((n, 2, 3), np.float32)
    for k in range(n):
        a = rng.uniform(-rot, rot)
        s = rng.uniform(*scale)
        fx = -1.0 if (flip and rng.random() < 0.5) else 1.0
        m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) / s
        m = m @ np.diag([fx, 1.0]) * out_over_in
        th[k, :, :2] = m
        th[k, :, 2] = rng.uniform(-shift, shift, size=2)
    return torch.from_numpy(th)


def augment_intensity(x: torch.Tensor, rng: np.random.Generator, gamma: float = 0.4, noise: float = 0.03) -> torch.Tensor:
    """Per-sample gamma (exp(U(-gamma, gamma))), contrast scaling and Gaussian noise on [0, 1] images."""
    n = x.shape[0]
    g = torch.from_numpy(np.exp(rng.uniform(-gamma, gamma, n)).astype(np.float32)).view(n, 1, 1, 1)
    c = torch.from_numpy(rng.uniform(0.85, 1.15, n).astype(np.float32)).view(n, 1, 1, 1)
    sd = torch.from_numpy(rng.uniform(0, noise, n).astype(np.float32)).view(n, 1, 1, 1)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    x = x.clamp(0, 1) ** g * c
    return x + sd * torch.randn(x.shape, generator=gen)


def degrade_resolution(x: torch.Tensor, rng: np.random.Generator, share: float,
                       pixel_mm: tuple[float, float] = (1.25, 2.6), grid_mm: float = 1.25) -> torch.Tensor:
    """Simulate coarser acquisitions: with probability ``share`` per sample, area-average ``(N, C, H, W)``
    images from ``grid_mm`` pixels to a pixel size drawn from ``pixel_mm`` (uniform, mm), then
    interpolate them back to ``H x W`` (bilinear). Labels are left alone.

    Studies acquired at about 2 mm in plane (UK Biobank: 2.06 mm) look blurrier on the 1.25 mm
    crop than most of ACDC. On the ACDC validation images blurred to 2.06 mm pixels, the network
    trained without this over-estimated LV mass by 7.7 g (0.7 g on the original images).
    """
    out = x.clone()
    h, w = x.shape[-2:]
    for i in range(x.shape[0]):
        if rng.random() >= share:
            continue
        f = float(rng.uniform(*pixel_mm)) / grid_mm
        small = F.interpolate(x[i : i + 1], size=(max(round(h / f), 1), max(round(w / f), 1)), mode="area")
        out[i : i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def warp_batch(img: torch.Tensor, lab: torch.Tensor, theta: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample images (linear, zeros outside) and labels (nearest) with affine ``theta`` to ``size``^2."""
    grid = F.affine_grid(theta, [img.shape[0], 1, size, size], align_corners=False)
    xi = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    xl = F.grid_sample(lab[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return xi, xl[:, 0].long()


def segmentation_batch(data: list[dict], rng: np.random.Generator, batch: int, size: int = 128,
                       augment: bool = True, phantoms: list[dict] | None = None,
                       phantom_share: float = 0.0, channels: int = 1,
                       lowres_share: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of augmented ``(batch, channels, size, size)`` slices and ``(batch, size, size)`` labels.

    ``channels`` > 1: each slice with its neighbours, as the network reads it
    (:func:`deepstrain.networks.segmentation.context_slices`).
    Augmentation: rotation (any angle), scaling 0.85-1.15, shifts up to +-16 mm, left-right flip,
    gamma, contrast and noise; with neighbours, their order is reversed with probability 0.5
    (stacks run base-to-apex or apex-to-base). Without ``augment``: the central ``size`` crop.
    With ``phantoms`` (entries of :func:`load_phantom_cache`), each slice comes from a phantom
    with probability ``phantom_share``. ``lowres_share``: share of slices made coarser with
    :func:`degrade_resolution` (after the affine warp, before the intensity changes).
    """
    imgs, labs = [], []
    for _ in range(batch):
        if phantoms and rng.random() < phantom_share:
            d = phantoms[int(rng.integers(len(phantoms)))]
        else:
            d = data[int(rng.integers(len(data)))]
        f = int(rng.integers(d["seg_img"].shape[0]))
        z = int(rng.integers(d["seg_img"].shape[1]))
        lo = max(z - channels // 2, 0)  # only the slices this one's neighbours come from
        x = context_slices(torch.from_numpy(d["seg_img"][f : f + 1, lo : z + channels // 2 + 1]), channels)[z - lo].float()
        if augment and channels > 1 and rng.random() < 0.5:
            x = x.flip(0)
        imgs.append(x)
        labs.append(d["seg_lab"][f, z])
    img = torch.stack(imgs)
    lab = torch.from_numpy(np.stack(labs).astype(np.int64))
    ratio = size / SEG_CACHE_SIZE
    if augment:
        theta = _affine_theta(batch, rng, math.pi, (0.85, 1.15), 16.0 / (SEG_CACHE_SIZE * 1.25 / 2), True, ratio)
    else:
        theta = torch.tensor([[[ratio, 0, 0], [0, ratio, 0]]], dtype=torch.float32).repeat(batch, 1, 1)
    img, lab = warp_batch(img, lab, theta, size)
    if augment and lowres_share > 0:
        img = degrade_resolution(img, rng, lowres_share)
    if augment:
        img = augment_intensity(img, rng)
    return img, lab


def validation_slices(data: list[dict], size: int = 128, channels: int = 1
                      ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, int]]]:
    """All slices (ED and ES) of ``data``, centre-cropped to ``size`` (``(N, channels, size, size)``,
    with neighbours as in :func:`segmentation_batch`); and (name, frame) of each slice."""
    lo = (SEG_CACHE_SIZE - size) // 2
    imgs, labs, ids = [], [], []
    for d in data:
        for f in range(2):
            vol = torch.from_numpy(np.ascontiguousarray(d["seg_img"][f : f + 1, :, lo : lo + size, lo : lo + size]))
            imgs.append(context_slices(vol, channels).float())
            labs.append(d["seg_lab"][f, :, lo : lo + size, lo : lo + size])
            ids += [(d["name"], f)] * d["seg_img"].shape[1]
    return torch.cat(imgs), torch.from_numpy(np.concatenate(labs).astype(np.int64)), ids


def centring_batch(data: list[dict], rng: np.random.Generator, batch: int, size: int = 128,
                   augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Random whole-field-of-view slices at 2.5 mm, warped into ``size``^2 with large shifts (off-centre hearts).

    Shifts are up to 40 % of the field of view; rotations any angle; scaling 0.8-1.25; flips; gamma/noise.
    """
    imgs, labs = [], []
    if data and "cen_img" not in data[0]:
        raise ValueError(f"the cache of {data[0].get('name')} holds no centring arrays (a compact cache, "
                         "write_compact_cache): train the centring network from the full cache")
    for _ in range(batch):
        d = data[int(rng.integers(len(data)))]
        f = int(rng.integers(2))
        z = int(rng.integers(d["cen_img"].shape[1]))
        im = torch.from_numpy(d["cen_img"][f, z].astype(np.float32))[None, None]
        lb = torch.from_numpy(d["cen_mask"][f, z].astype(np.int64))[None]
        h, w = im.shape[-2:]
        if augment:
            theta = _affine_theta(1, rng, math.pi, (0.8, 1.25), 0.4, True, 1.0)
            theta[0, 0, :2] *= size / w
            theta[0, 1, :2] *= size / h
        else:
            theta = torch.tensor([[[size / w, 0, 0], [0, size / h, 0]]], dtype=torch.float32)
        a, b = warp_batch(im, lb, theta, size)
        imgs.append(a)
        labs.append(b)
    img, lab = torch.cat(imgs), torch.cat(labs)
    if augment:
        img = augment_intensity(img, rng)
    return img, lab
