"""Time and peak memory of ``pipeline.compute`` (strain + AHA + volumes) on a 30-frame 256x256x10 study.

The study is synthetic (an analytic LV/RV in a 1.4 x 1.4 x 8 mm grid with a smooth contraction
field); the figures are the wall time of ``compute`` (best and median of the repeats) and the
peak memory it allocates on top of its inputs (``tracemalloc``, which numpy reports to).

    python benchmarks/strain_speed.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from _heart import Heart, rotation  # noqa: E402

from deepstrain.cine import Cine, Geometry  # noqa: E402
from deepstrain.pipeline import compute  # noqa: E402


def make_study(n_frames: int = 30, shape=(10, 256, 256), spacing=(8.0, 1.4, 1.4)):
    heart = Heart(rotation=rotation([0.3, 1.0, 0.5], 40.0), centre=np.zeros(3))
    direction = heart.rotation @ np.array([[0, 0, 1], [0, -1, 0], [1, 0, 0]], dtype=np.float64).T
    origin = heart.centre + direction @ np.array([-4.0, -spacing[1] * shape[1] / 2, -spacing[2] * shape[2] / 2])
    geo = Geometry(spacing=spacing, origin=origin, direction=direction)
    h = heart.to_heart(geo.world_points(shape))
    t = np.arange(n_frames)
    profile = np.sin(np.pi * np.clip(t / (0.7 * n_frames), 0, 1)) ** 2
    labels = np.empty((n_frames,) + shape, dtype=np.uint8)
    disp = np.empty((n_frames, 3) + shape, dtype=np.float32)
    rho2 = h[..., 0] ** 2 + h[..., 1] ** 2
    for f, p in enumerate(profile):
        labels[f] = Heart(heart.rotation, heart.centre, a_in=heart.a_in * (1 - 0.25 * p)).labels(h)
        # in-plane contraction that decays away from the axis, plus longitudinal shortening
        s = -0.2 * p * 400.0 / (400.0 + rho2)
        u_h = np.stack([s * h[..., 0], s * h[..., 1], -0.1 * p * h[..., 2]], -1)
        disp[f] = np.moveaxis(u_h @ heart.rotation.T, -1, 0)
    times = t * 30.0
    cine = Cine(data=np.zeros(labels.shape, dtype=np.float32), geometry=geo, times_ms=times, name="speed", ed=0, es=None)
    return cine, labels, disp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cine, labels, disp = make_study()
    n_myo = int(np.count_nonzero(labels[0] == 2))
    print(f"study: {labels.shape[0]} frames x {labels.shape[1:]} voxels, {n_myo} ED myocardium voxels, "
          f"displacement {disp.nbytes / 2**20:.0f} MiB float32")
    compute(cine, labels, disp)  # warm-up (imports, caches)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        a = compute(cine, labels, disp)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    compute(cine, labels, disp)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"pipeline.compute: best {min(times):.3f} s, median {float(np.median(times)):.3f} s over {args.repeats} runs "
          f"(target < 2 s)")
    print(f"peak memory allocated during compute (tracemalloc): {peak / 2**20:.1f} MiB")
    print(f"ED {a.ed}, ES {a.es}; ESS radial {a.report['ess']['radial']:.2f} %, circumferential "
          f"{a.report['ess']['circumferential']:.2f} %, longitudinal {a.report['ess']['longitudinal']:.2f} %")


if __name__ == "__main__":
    main()
