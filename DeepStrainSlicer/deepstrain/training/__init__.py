"""Training of the networks on ACDC (``deepstrain train centring|segmentation|motion``).

The data set is read from an ACDC ``training`` folder given on the command line; nothing of it
is stored in the package. Shared pieces (data cache, split, augmentation) are in :mod:`.data`.
This module imports no torch, so the command line stays quick to start.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..outputs import write_atomically

DEFAULTS = {
    "segmentation": {"iterations": 3000, "batch": 12, "lr": 2e-3, "crop": 96},
    "centring": {"iterations": 500, "batch": 16, "lr": 2e-3, "crop": 128},
}
"""Default schedule of each 2D network (the one used for the shipped weights)."""


def option_value(value):
    """An option's value as stored in a checkpoint (paths as text, sequences as lists)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [option_value(v) for v in value]
    return value


def resume_mismatch(then: dict, now: dict) -> str | None:
    """Why a run started with options ``then`` cannot be resumed with ``now`` (None when they agree)."""
    changed = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
    if not changed:
        return None
    return ("the run was started with other options ("
            + ", ".join(f"{k}: {then.get(k)!r} then, {now.get(k)!r} now" for k in changed)
            + "): resume it with the same options")


def uninterrupted_command(command: str) -> str:
    """``command`` without ``--resume`` and ``--stop-after N``: the command whose uninterrupted run gives
    the same weights (a stopped and resumed run continues it exactly), as the manifest records it."""
    words, out, skip = command.split(), [], False
    for w in words:
        if skip:
            skip = False
        elif w == "--stop-after":
            skip = True
        elif w != "--resume" and not w.startswith("--stop-after="):
            out.append(w)
    return " ".join(out)


def check_counts(args: argparse.Namespace, positive: tuple[str, ...], non_negative: tuple[str, ...] = ()) -> None:
    """Refuse (:class:`InputError` naming the option) counts that cannot work: the options ``positive``
    (e.g. ``val_every``: a modulus) must be at least 1, those of ``non_negative`` at least 0."""
    from ..errors import InputError

    for names, low in ((positive, 1), (non_negative, 0)):
        for k in names:
            v = getattr(args, k, None)
            if v is not None and v < low:
                raise InputError("--" + k.replace("_", "-"), f"must be at least {low}, got {v}")


SEED_LIMIT = 2**63
"""Seeds are 0 .. SEED_LIMIT - 1 (numpy's generators take no negative seed, torch none above 2**64 - 1)."""


def check_option_values(args: argparse.Namespace) -> None:
    """Refuse (:class:`InputError` naming the option), before anything is read or written, the values of
    the options common to the trainers that cannot work: ``--lr`` not a positive finite number,
    ``--seed`` outside 0 .. 2**63 - 1, ``--threads`` below 1, a ``--device`` torch does not know (or
    ``cuda`` where torch sees none), a share (``--phantom-share``, ``--lowres-share``) outside 0..1,
    ``--channels`` not all at least 1, ``--minutes`` and loss weights (``--w-*``) negative or not finite.
    Options ``args`` lacks are not checked."""
    import math

    from ..errors import InputError

    def option(k: str) -> str:
        return "--" + k.replace("_", "-")

    def given(k: str):
        return getattr(args, k, None)

    if given("lr") is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise InputError("--lr", f"must be a positive number, got {args.lr}")
    if given("seed") is not None and not 0 <= args.seed < SEED_LIMIT:
        raise InputError("--seed", f"must be between 0 and {SEED_LIMIT - 1}, got {args.seed}")
    check_counts(args, ("threads",))
    for k in ("phantom_share", "lowres_share"):
        v = given(k)
        if v is not None and not 0.0 <= v <= 1.0:  # also refuses nan
            raise InputError(option(k), f"must be a share between 0 and 1, got {v}")
    for k in ("minutes", "w_sim", "w_dice", "w_smooth", "w_epe", "w_grad"):
        v = given(k)
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise InputError(option(k), f"must be a number of at least 0, got {v}")
    channels = given("channels")
    if channels is not None and any(c < 1 for c in channels):
        raise InputError("--channels", f"must all be at least 1, got {' '.join(map(str, channels))}")
    device = given("device")
    if device:
        import torch

        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise InputError("--device", f"must be cpu or cuda[:N], got {device!r}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError("--device", f"{device} was given, but torch sees no CUDA device")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError("--device", f"{device} was given, but torch sees {torch.cuda.device_count()} CUDA "
                                         "device(s), numbered from 0")
        if dev.type not in ("cpu", "cuda"):
            raise InputError("--device", f"must be cpu or cuda[:N], got {device!r}")


def check_output_folder(path: Path, what: str) -> None:
    """Refuse (:class:`InputError`) an output folder that is a file, lies under one or cannot be
    written, before anything is written (:func:`deepstrain.outputs.check_folder_can_be_made`);
    ``what`` names it in the message (e.g. "cache")."""
    from ..errors import InputError
    from ..outputs import check_folder_can_be_made

    try:
        check_folder_can_be_made(path)
    except InputError as exc:
        raise InputError(exc.path, f"{what}: {exc.problem}") from None


def save_atomically(obj, path: Path, tmp: Path | None = None) -> None:
    """``torch.save(obj)`` to ``path`` through ``tmp`` (default ``path`` with suffix ``.tmp``,
    :func:`write_atomically`)."""
    import torch

    path = Path(path)
    write_atomically(path, path.with_suffix(".tmp") if tmp is None else tmp, lambda t: torch.save(obj, t))


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` (made by this run) when it holds nothing: a failed run leaves no empty folder."""
    try:
        folder.rmdir()
    except OSError:  # not empty, or already gone
        pass


def mean_state_dict(states: list[dict]) -> dict:
    """Parameter-wise mean of state dicts of one architecture (floating tensors averaged in float64
    and cast back; integer buffers, e.g. batch-norm counters, taken from the first)."""
    return {k: (sum(st[k].double() for st in states) / len(states)).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}


def add_training_arguments(p: argparse.ArgumentParser, iterations: int, batch: int, lr: float, crop: int) -> None:
    """Options of ``deepstrain train centring|segmentation``."""
    p.add_argument("--data", type=Path, required=True, help="ACDC 'training' folder (patientNNN sub-folders)")
    p.add_argument("--run-dir", type=Path, default=None, help="checkpoints and logs (default runs/<network>)")
    p.add_argument("--cache", type=Path, default=Path("runs") / "cache", help="folder of the derived data cache")
    p.add_argument("--iterations", type=int, default=iterations, help=f"total iterations (default {iterations})")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--crop", type=int, default=crop,
                   help=f"side (pixels) of the training crops (default {crop}; the networks accept any size)")
    p.add_argument("--lr", type=float, default=lr,
                   help="peak learning rate (Adam; linear warm-up over 100 iterations, or over the first fifth "
                        "of a run shorter than 500 iterations, then cosine decay)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu",
                   help="where the network trains: cpu (default) or cuda[:N]; batches are always drawn on the "
                        "CPU with the same generator, so a CUDA run sees the batches a CPU run sees")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that prepare batches ahead of the training step (0: in the training process); "
                        "batch i depends only on (seed, i), so the result does not depend on this number")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--patients", type=int, default=0, help="use only the first N training patients (tests)")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop (with a checkpoint) after this iteration, as if interrupted; 0: run to the end")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run folder that holds a run (its last.pt, summary.json and snapshots "
                        "are deleted), and replace this network's weights and manifest entry in --export-dir; "
                        "without it such a run folder or export is refused (a run folder holding a run is "
                        "continued with --resume)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from the weights of this checkpoint (last.pt of another run): fine-tuning")
    p.add_argument("--phantoms", type=int, default=0,
                   help="segmentation: also train on this many synthetic phantoms (training seeds of the motion network)")
    p.add_argument("--phantom-share", type=float, default=0.15, help="share of slices drawn from the phantoms")
    p.add_argument("--lowres-share", type=float, default=0.0,
                   help="segmentation: share of training slices made coarser (1.25-2.6 mm pixels, then back to "
                        "1.25 mm), as acquired at lower resolution (0: off, as for the weights shipped until 2026-11-22)")
    p.add_argument("--context", type=int, default=0, choices=(0, 1, 3, 5, 7),
                   help="segmentation: slices the network reads at once, the slice in the middle and its "
                        "neighbours above and below (0: the shipped configuration's, 3)")
    p.add_argument("--phantom-dir", type=Path, default=Path("runs") / "motion" / "phantoms",
                   help="stored training phantoms (generated there when missing)")
    p.add_argument("--average", type=Path, nargs="+", default=None, metavar="CHECKPOINT",
                   help="no training: average the parameters of these checkpoints (last.pt of runs of one "
                        "configuration fine-tuned from one starting point), validate the average and write it "
                        "to <run-dir>/last.pt (with --export, export it)")
    p.add_argument("--ensemble", type=Path, nargs="+", default=None, metavar="CHECKPOINT",
                   help="segmentation, no training: join these checkpoints (last.pt of runs of one configuration, "
                        "e.g. averages) into one ensemble network whose class probabilities are their mean; "
                        "validate it and write it to <run-dir>/last.pt (with --export, export it). Inference "
                        "costs one network's time per member")
    p.add_argument("--width", type=int, default=0,
                   help="channels of the network's first level (0: the shipped configuration's); wider costs "
                        "inference time, roughly in proportion to the square")
    p.add_argument("--bf16", action="store_true",
                   help="run the forward pass in bfloat16 (autocast; loss and weights stay float32): about 1.6x "
                        "faster on CPUs with AVX512-BF16, not bit-identical to a float32 run")
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="also keep the weights every N iterations as snapshot_NNNNNN.pt in the run folder (for "
                        "--average over one run's late snapshots); 0: off")
    p.add_argument("--export", action="store_true", help="after training, export the weights and manifest entry")
    p.add_argument("--export-dir", type=Path, default=None,
                   help="where to export (default: the package's weights, which --export replaces); a folder "
                        "that already holds this network's weights is refused unless --overwrite is given")
