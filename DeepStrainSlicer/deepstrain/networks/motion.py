"""Motion network: displacement from end-diastole (ED) to any frame on the heart-centred crop.

Grid and conventions
--------------------
* Input: the crop made by :mod:`deepstrain.preprocess` -- ``(Z, H, W)`` = slices x rows x
  columns, in-plane 1.25 mm (any ``H``, ``W``), all slices of the study (any slice spacing).
* Output of :func:`estimate_motion`: ``(T, 3, Z, H, W)`` float32 displacement in **mm**, with
  components along the **crop array axes** ``(slice, row, column)`` (not RAS). Mapping it to
  RAS world components is ``direction_crop @ u`` (columns of the crop's direction matrix); the
  caller (:mod:`deepstrain.inference`) does that and resamples to the input grid.
* Lagrangian, ED is the reference: ``u(X)`` moves the material point at ED voxel centre ``X``
  to ``X + u(X)`` at frame ``t``; hence ``frame_t(X + u(X)) ~ ED(X)``.
* Inside the network, displacement is in crop **voxel units** (slices, rows, columns); it is
  multiplied by the crop spacing to give mm. The network never sees the spacing, so one
  model serves every slice thickness.
* Intensities: whatever normalisation the caller used, :func:`estimate_motion` rescales ED and
  all frames with the same affine map that sends ED's 1st / 99th percentiles to 0 / 1
  (so the result does not depend on an affine change of intensities).

Architecture (:class:`MotionNet`): a light 3D U-Net that pools in-plane only (slices are
kept: ACDC has 6-18 slices of 5-10 mm). A stride-2 in-plane stem takes the pair to half
resolution, four U-Net levels work there, and the displacement predicted at half resolution
is upsampled (bilinear, in-plane x2; slices unchanged) to the full crop. With ``refine=True`` a full-resolution
stage adds a correction to that upsampled field, from the stem's full-resolution features, the
upsampled decoder features and the field itself (in-plane 3x3 convolutions); its output layer
starts at zero, so a refined network initialised from an unrefined one starts identical to it.
The correction resolves displacement gradients across the 1-2 cm myocardial wall that a
2.5 mm field blurs (radial thickening).
Every convolution is followed by instance normalisation (per pair) and a leaky ReLU.
No layer depends on the image size: any ``H``, ``W`` is replicate-padded to a multiple of 16
(at least 32) and the output cropped back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

from .precision import compute_precision

OUTPUT_SMOOTHING_MM = 0.0
"""In-plane Gaussian smoothing (sigma, mm) of the network's displacement in :func:`estimate_motion`
(0: none, the default for the shipped weights).

Chosen on TRAINING phantoms 1000-1005 (``python benchmarks/motion_accuracy.py --seeds 1000 1001
1002 1003 1004 1005 --cache runs/motion/phantoms --acdc 0 --no-baseline --smoothing S``), by the
smallest sum of mean |global ESS error| over radial, circumferential and longitudinal; the
evaluation phantoms 9000-9004 were not used. For the shipped weights (an average of two runs, see
the manifest) the sums were 8.42 points at 0 mm, 8.61 at 1, 8.81 at 1.5, 9.02 at 2. For the
weights shipped before them, which over-estimated radial strain (field roughness: Green strain is
quadratic in the displacement gradient), 2 mm had been chosen the same way."""

PAD_MULTIPLE = 16
"""``H`` and ``W`` are padded to a multiple of this (stem stride 2 x three in-plane poolings)."""


def _conv(cin: int, cout: int, kernel=(3, 3, 3), stride=(1, 1, 1)) -> nn.Sequential:
    """Convolution, instance normalisation (per pair), leaky ReLU; He initialisation."""
    pad = tuple(k // 2 for k in kernel)
    conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=pad)
    nn.init.kaiming_normal_(conv.weight, a=0.2, nonlinearity="leaky_relu")
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.2))


def _upsample_inplane(x: torch.Tensor, size_hw: Sequence[int]) -> torch.Tensor:
    """Bilinear in-plane resize of ``(N, C, Z, H, W)`` to ``(N, C, Z, *size_hw)`` (slices unchanged).

    The same as trilinear interpolation to ``(Z, *size_hw)`` (the slice weights are exactly 1),
    computed as 2D interpolation of ``(N, C*Z, H, W)``: about 2x faster in bfloat16.
    """
    n, c, z, h, w = x.shape
    y = F.interpolate(x.reshape(n, c * z, h, w), size=tuple(size_hw), mode="bilinear", align_corners=False)
    return y.reshape(n, c, z, *y.shape[-2:])


class MotionNet(nn.Module):
    """Pair ``[reference, moving]`` ``(N, 2, Z, H, W)`` -> displacement ``(N, 3, Z, H, W)`` in voxels.

    ``H`` and ``W`` must be multiples of :data:`PAD_MULTIPLE` (use :func:`predict_voxels`
    for any size). ``channels`` = (stem, level 1..4) feature widths; ``flow_scale`` is a fixed
    gain on the output convolution (voxels), so that training leaves zero motion quickly.
    """

    def __init__(self, channels: Sequence[int] = (16, 24, 40, 64, 96), flow_scale: float = 4.0,
                 refine: bool = False) -> None:
        super().__init__()
        c0, c1, c2, c3, c4 = (int(c) for c in channels)
        self.channels = (c0, c1, c2, c3, c4)
        self.flow_scale = float(flow_scale)
        self.refine = bool(refine)
        self.config = {"channels": list(self.channels), "flow_scale": self.flow_scale}
        if self.refine:
            self.config["refine"] = True
        self.stem = nn.Sequential(_conv(2, c0, (1, 3, 3)), _conv(c0, c1, (1, 3, 3), (1, 2, 2)))
        self.enc1 = nn.Sequential(_conv(c1, c1), _conv(c1, c1))
        self.down2 = _conv(c1, c2, (1, 3, 3), (1, 2, 2))
        self.enc2 = _conv(c2, c2)
        self.down3 = _conv(c2, c3, (1, 3, 3), (1, 2, 2))
        self.enc3 = _conv(c3, c3)
        self.down4 = _conv(c3, c4, (1, 3, 3), (1, 2, 2))
        self.enc4 = nn.Sequential(_conv(c4, c4), _conv(c4, c4))
        self.dec3 = _conv(c4 + c3, c3)
        self.dec2 = _conv(c3 + c2, c2)
        self.dec1 = nn.Sequential(_conv(c2 + c1, c1), _conv(c1, c1))
        self.head = nn.Conv3d(c1, 3, 3, padding=1)
        nn.init.normal_(self.head.weight, std=1e-2)
        nn.init.zeros_(self.head.bias)
        if self.refine:
            self.fine = nn.Sequential(_conv(c0 + c1 + 3, c0, (1, 3, 3)), _conv(c0, c0, (1, 3, 3)))
            self.fine_head = nn.Conv3d(c0, 3, (1, 3, 3), padding=(0, 1, 1))
            nn.init.zeros_(self.fine_head.weight)
            nn.init.zeros_(self.fine_head.bias)

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return _upsample_inplane(x, like.shape[-2:])

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        f0 = self.stem[0](pair)  # full resolution
        s1 = self.enc1(self.stem[1](f0))
        s2 = self.enc2(self.down2(s1))
        s3 = self.enc3(self.down3(s2))
        b = self.enc4(self.down4(s3))
        d = self.dec3(torch.cat([self._up(b, s3), s3], 1))
        d = self.dec2(torch.cat([self._up(d, s2), s2], 1))
        d = self.dec1(torch.cat([self._up(d, s1), s1], 1))
        flow = self.head(d) * self.flow_scale  # a fixed gain: displacements are several voxels
        flow = _upsample_inplane(flow, pair.shape[-2:])
        if not self.refine:
            return flow
        d = _upsample_inplane(d, pair.shape[-2:])
        r = self.fine(torch.cat([f0, d, flow / self.flow_scale], 1))
        return flow + self.fine_head(r) * self.flow_scale


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


# --------------------------------------------------------------------------- warping
def _sampling_grid(disp_vox: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` grid for sampling at ``X + u`` (``u`` in voxels, ``(N, 3, Z, H, W)``)."""
    n, _, z, h, w = disp_vox.shape
    dev, dt = disp_vox.device, disp_vox.dtype
    axes = [torch.arange(s, device=dev, dtype=dt) for s in (z, h, w)]
    kk, jj, ii = torch.meshgrid(*axes, indexing="ij")
    pos = torch.stack([kk, jj, ii], 0)[None] + disp_vox  # (N, 3, Z, H, W) in voxels
    scale = torch.tensor([2.0 / max(s - 1, 1) for s in (z, h, w)], device=dev, dtype=dt).view(1, 3, 1, 1, 1)
    norm = pos * scale - 1.0
    # grid_sample wants (x=W, y=H, z=Z) in the last dimension
    return norm[:, [2, 1, 0]].permute(0, 2, 3, 4, 1)


def warp(image: torch.Tensor, disp_vox: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``image`` ``(N, C, Z, H, W)`` at ``X + u(X)``; ``u`` ``(N, 3, Z, H, W)`` in voxels.

    With the Lagrangian displacement ED -> t, ``warp(frame_t, u)`` is frame ``t`` pulled
    back onto the ED grid (it should look like ED). Outside the volume: nearest border value.
    """
    return F.grid_sample(image, _sampling_grid(disp_vox), mode=mode, padding_mode="border", align_corners=True)


# --------------------------------------------------------------------------- inference
def normalise_pair(ed: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rescale ED and frames by the affine map sending ED's 1st/99th percentiles to 0/1."""
    lo, hi = np.percentile(ed, [1.0, 99.0])
    scale = 1.0 / max(float(hi - lo), 1e-6)
    return ((ed - lo) * scale).astype(np.float32), ((frames - lo) * scale).astype(np.float32)


def _pad_hw(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    # a multiple of the pooling, and at least two: the bottleneck's instance norm needs > 1 element
    ph, pw = max((-h) % multiple, 2 * multiple - h), max((-w) % multiple, 2 * multiple - w)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2, 0, 0), mode="replicate")
    return x, (ph, pw)


def predict_voxels(model: MotionNet, pairs: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on pairs of any ``H``, ``W`` (replicate-padded), displacement in voxels."""
    h, w = pairs.shape[-2:]
    padded, (ph, pw) = _pad_hw(pairs)
    out = model(padded)
    return out[..., ph // 2: ph // 2 + h, pw // 2: pw // 2 + w]


_CACHE: dict[str, MotionNet] = {}


def load_model(path: str | Path | None = None, *, weights_dir: Path | None = None) -> MotionNet:
    """The motion network in eval mode.

    ``path=None``: the shipped weights (``weights/motion.pt``), checked against the manifest's
    size and SHA-256 by :func:`deepstrain.weights.load_network` (kept in memory after the first
    load, until the file or the manifest changes on disk).
    A ``path`` loads a training export or checkpoint (``config``/``channels`` + ``state_dict``).
    """
    if path is None:
        from ..weights import cache_key, load_network

        key = cache_key("motion", weights_dir)
        if key not in _CACHE:
            _CACHE[key] = load_network("motion", MotionNet, weights_dir)
        return _CACHE[key]
    return model_from_blob(torch.load(Path(path), map_location="cpu", weights_only=True))


def model_from_blob(blob: dict) -> MotionNet:
    """The network (eval mode, float32) of a loaded training export or checkpoint dict."""
    config = blob.get("config") or {"channels": blob["channels"]}
    state = blob.get("state_dict") or blob["model"]
    model = MotionNet(**config)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def estimate_motion(
    ed: np.ndarray,
    frames: np.ndarray,
    spacing_crop: Sequence[float],
    *,
    batch: int = 2,
    model: MotionNet | None = None,
    smooth_mm: float = OUTPUT_SMOOTHING_MM,
    precision: str = "auto",
) -> np.ndarray:
    """Lagrangian displacement from ED to every frame, on the crop grid.

    ``ed`` ``(Z, H, W)`` and ``frames`` ``(T, Z, H, W)`` are crop intensities (any affine
    normalisation); ``spacing_crop`` is the crop spacing ``(slice, row, col)`` in mm.
    Returns ``(T, 3, Z, H, W)`` float32 in mm, components along ``(slice, row, col)``;
    ``frame_t(X + u(X)) ~ ED(X)``. Frames run ``batch`` at a time through the network (2: timed on
    2 CPU cores in bfloat16, 0.11-0.12 s per frame of 10 x 128 x 128 against 0.14-0.18 s with 4;
    smaller batches keep the feature maps in the caches).
    A frame identical to ``ed`` (the ED frame itself) gets exactly zero displacement. The field
    is smoothed in-plane with a Gaussian of ``smooth_mm`` (see :data:`OUTPUT_SMOOTHING_MM`; 0: none).
    ``precision``: see :mod:`deepstrain.networks.precision`.
    """
    ed = np.asarray(ed, dtype=np.float32)
    frames = np.asarray(frames, dtype=np.float32)
    if ed.ndim != 3 or frames.ndim != 4 or frames.shape[1:] != ed.shape:
        raise ValueError(f"need ed (Z,H,W) and frames (T,Z,H,W) of the same grid, got {ed.shape} and {frames.shape}")
    spacing = np.asarray(spacing_crop, dtype=np.float32).reshape(3)
    if model is None:
        model = load_model()
    model.eval()
    e, f = normalise_pair(ed, frames)
    out = np.zeros((frames.shape[0], 3) + ed.shape, dtype=np.float32)
    todo = [t for t in range(frames.shape[0]) if not np.array_equal(frames[t], ed)]  # ED itself: zero
    ref = torch.from_numpy(e)[None, None]
    with torch.no_grad():
        for start in range(0, len(todo), max(int(batch), 1)):
            idx = todo[start: start + batch]
            mov = torch.from_numpy(f[idx])[:, None]
            pairs = torch.cat([ref.expand(mov.shape[0], -1, -1, -1, -1), mov], 1)
            with compute_precision(precision):
                u = predict_voxels(model, pairs)
            out[idx] = u.float().numpy()
    out *= spacing.reshape(1, 3, 1, 1, 1)
    if smooth_mm > 0 and todo:
        sig = (0.0, float(smooth_mm) / float(spacing[1]), float(smooth_mm) / float(spacing[2]))
        for t in todo:
            out[t] = ndimage.gaussian_filter(out[t], sigma=(0.0,) + sig, mode="nearest")
    return out
