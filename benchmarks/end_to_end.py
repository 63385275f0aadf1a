"""End-to-end speed and memory of ``deepstrain analyze``, against networks of the paper's size.

Run:  python benchmarks/end_to_end.py [--frames 30] [--size 192] [--slices 10] [--paper-frames 2] [--no-refine-motion]

1. Writes a phantom study (30 frames, 192 x 192 x 10 by default) as a 4D NIfTI (not timed).
2. Runs ``deepstrain analyze cine.nii.gz --out ...`` in a fresh process (2 CPU threads, as on
   a laptop) and prints its wall time and peak memory (max RSS of the child process).
3. Runs it a second time and checks that every output file is byte-identical (determinism).
4. Times networks of the paper's size on the same work, with random weights: DeepStrain's
   CarSON (~57 M parameters) and CarMEN (~112 M) stand-ins, built here as 3D U-Nets of those
   parameter counts on the paper's 128 x 128 x 16 input (segmentation of every frame, motion
   of every ED -> frame pair). They are timed on ``--paper-frames`` frames and scaled to the
   study's frame count (the per-frame cost is constant); the script says so when it prints.
   Two ratios are printed: (a) paper-size network time / OUR NETWORK time for the same work
   (centring, segmentation of every frame, motion of every frame, including the resampling to
   and from the crop; timed in this process after one warm-up run, as the paper-size networks
   are), and (b) paper-size network time / the WHOLE ``deepstrain analyze`` wall time (process
   start, imports, reading, strain, writing included): a conservative bound.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from deepstrain.networks.precision import PRECISIONS


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _analyze(cine: Path, out: Path, threads: int, precision: str = "auto",
             extra: tuple[str, ...] = ()) -> tuple[float, float, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), DEEPSTRAIN_THREADS=str(threads))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "deepstrain.cli", "analyze", str(cine), "--out", str(out), "--quiet",
                           "--precision", precision, *extra],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"analyze failed:\n{proc.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024.0, proc.stdout.strip()


class _Block3d(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
                         nn.Conv3d(cout, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class PaperSizeUNet3d(nn.Module):
    """A 3D U-Net (4 poolings) whose width is chosen to match a parameter count."""

    def __init__(self, cin: int, cout: int, base: int) -> None:
        super().__init__()
        ch = [base * 2**k for k in range(5)]
        self.down = nn.ModuleList([_Block3d(cin, ch[0])] + [_Block3d(ch[k - 1], ch[k]) for k in range(1, 5)])
        self.up = nn.ModuleList([nn.ConvTranspose3d(ch[k + 1], ch[k], 2, stride=2) for k in range(4)])
        self.dec = nn.ModuleList([_Block3d(2 * ch[k], ch[k]) for k in range(4)])
        self.head = nn.Conv3d(ch[0], cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else nn.functional.max_pool3d(x, 2))
            skips.append(x)
        x = skips.pop()
        for k in reversed(range(4)):
            x = self.dec[k](torch.cat([skips[k], self.up[k](x)], dim=1))
        return self.head(x)


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _width_for(target: float, cin: int, cout: int) -> int:
    return min(range(8, 80), key=lambda b: abs(_n_params(PaperSizeUNet3d(cin, cout, b)) - target))


def _time_our_nets(cine_path: Path, precision: str) -> float:
    """Seconds of :func:`deepstrain.inference.predict` (all networks) on the study, after a warm-up run."""
    from deepstrain import io
    from deepstrain.inference import predict

    cine = io.load_cine(cine_path)
    predict(cine, precision=precision)  # warm-up: weights loaded and verified, kernels primed
    t0 = time.perf_counter()
    predict(cine, precision=precision)
    return time.perf_counter() - t0


@torch.no_grad()
def _time_paper_nets(frames: int, timed_frames: int, precision: str = "auto") -> tuple[float, dict]:
    from deepstrain.networks.precision import compute_precision

    torch.manual_seed(0)
    info = {}
    total = 0.0
    for name, target, cin, cout in (("CarSON-size segmentation", 57e6, 1, 4), ("CarMEN-size motion", 112e6, 2, 3)):
        net = PaperSizeUNet3d(cin, cout, _width_for(target, cin, cout)).eval()
        x = torch.randn(1, cin, 16, 128, 128)
        with compute_precision(precision):  # the same arithmetic as deepstrain analyze
            net(x)  # warm-up
            t0 = time.perf_counter()
            for _ in range(timed_frames):
                net(x)
        per_frame = (time.perf_counter() - t0) / timed_frames
        info[name] = (_n_params(net), per_frame)
        total += per_frame * frames
    return total, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--slices", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paper-frames", type=int, default=2, help="frames timed for the paper-size networks")
    ap.add_argument("--no-refine-motion", action="store_true",
                    help="time deepstrain analyze --no-refine-motion (the motion network's field as it is)")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="network arithmetic, for deepstrain analyze and the paper-size networks alike")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from deepstrain import phantom

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params = phantom.PhantomParams(n_frames=args.frames, matrix_size=args.size, n_slices=args.slices, seed=7)
        phantom.write_phantom(phantom.generate_phantom(params), tmp / "study")
        cine = tmp / "study" / "cine.nii.gz"
        extra = ("--no-refine-motion",) if args.no_refine_motion else ()
        wall1, rss1, summary = _analyze(cine, tmp / "run1", args.threads, args.precision, extra)
        wall2, rss2, _ = _analyze(cine, tmp / "run2", args.threads, args.precision, extra)
        identical = _digest(tmp / "run1") == _digest(tmp / "run2")
        ours_nets = _time_our_nets(cine, args.precision)

        from deepstrain.networks.precision import resolve

        print(f"study: phantom {args.frames} frames x {args.slices} slices x {args.size} x {args.size}, "
              f"{args.threads} CPU threads, networks in {resolve(args.precision)}")
        print(f"deepstrain analyze{' --no-refine-motion' if args.no_refine_motion else ''} wall time: {wall1:.1f} s (second run {wall2:.1f} s); "
              f"peak memory {max(rss1, rss2) / 1024:.2f} GB (max RSS)")
        print(f"same input twice -> identical output files: {identical}")
        print(f"  {summary.splitlines()[0] if summary else ''}")

    ours = min(wall1, wall2)
    paper_total, info = _time_paper_nets(args.frames, args.paper_frames, args.precision)
    for name, (n, per_frame) in info.items():
        print(f"{name}: {n / 1e6:.1f} M parameters, {per_frame:.2f} s per frame (timed on {args.paper_frames} "
              f"frames, scaled to {args.frames})")
    print(f"paper-size networks for the study: {paper_total:.1f} s (network time only)")
    print(f"our networks for the study: {ours_nets:.1f} s (centring + segmentation + motion, with resampling "
          "to and from the crop)")
    print(f"(a) speed-up, networks vs paper-size networks, same work: {paper_total / ours_nets:.1f}x")
    print(f"(b) speed-up, whole deepstrain analyze (incl. start-up and I/O) vs paper-size networks alone: "
          f"{paper_total / ours:.1f}x")


if __name__ == "__main__":
    main()
