"""Train the segmentation network on ACDC (``deepstrain train segmentation``).

Loss: cross-entropy + multi-class soft Dice (RV, myocardium, LV cavity). Adam, linear warm-up then
cosine decay of the learning rate. ``--bf16`` runs the forward pass in bfloat16 (autocast),
``--width`` sets the network's first-level channels, ``--snapshot-every`` keeps snapshots for
``--average``. The random batch of iteration ``i`` is drawn from
``numpy.random.default_rng([seed, i])``, so a run resumed from a checkpoint (with the same
``--width`` and ``--bf16``: checked) continues exactly as an uninterrupted one would. Progress
(loss, validation Dice) is printed; a checkpoint ``last.pt`` is written every
``--checkpoint-every`` iterations into ``--run-dir``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..networks.blocks import count_parameters
from ..networks.segmentation import CONFIG, N_CLASSES, build_segmentation_net, input_channels
from . import (DEFAULTS, add_training_arguments, check_counts, check_option_values, check_output_folder,
               mean_state_dict, option_value, resume_mismatch, save_atomically, uninterrupted_command)
from . import data as D

NAME = "segmentation"


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, n_classes: int, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (sums over the whole batch)."""
    p = torch.softmax(logits, dim=1)
    oh = F.one_hot(target, n_classes).permute(0, 3, 1, 2).float()
    inter = (p * oh).sum(dim=(0, 2, 3))[1:]
    den = (p + oh).sum(dim=(0, 2, 3))[1:]
    return 1.0 - ((2 * inter + eps) / (den + eps)).mean()


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> list[float]:
    """Hard Dice of classes 1..n-1 over all pixels of ``pred``/``target``."""
    out = []
    for k in range(1, n_classes):
        a, b = pred == k, target == k
        s = int(a.sum() + b.sum())
        out.append(float(2 * (a & b).sum() / s) if s else float("nan"))
    return out


def load_widening_input(net: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state`` into ``net``; a first convolution trained on fewer input channels is widened.

    A first convolution of fewer input channels (1: one slice, or 3) loaded into a C-channel one
    (the slice with more neighbours, :func:`deepstrain.networks.segmentation.context_slices`) goes
    to the centre channels and the new channels start at zero, so the widened network computes
    exactly what the old one did until training teaches it to use the further neighbours.
    Returns the widened keys.
    """
    own = net.state_dict()
    widened = []
    state = dict(state)
    for k, v in state.items():
        w = own.get(k)
        if w is not None and v.ndim == 4 and w.ndim == 4 and v.shape[1] < w.shape[1] and \
                v.shape[0] == w.shape[0] and v.shape[2:] == w.shape[2:]:
            new = torch.zeros_like(w)
            lo = (w.shape[1] - v.shape[1]) // 2
            new[:, lo : lo + v.shape[1]] = v
            state[k] = new
            widened.append(k)
    net.load_state_dict(state)
    return widened


class _BatchSequence(torch.utils.data.Dataset):
    """Batch ``k`` = ``batch_fn(data, default_rng([seed, start + k]), batch)``: one item per iteration."""

    def __init__(self, batch_fn: Callable, data: list[dict], seed: int, start: int, stop: int, batch: int):
        self.batch_fn, self.data, self.seed, self.start, self.stop, self.batch = batch_fn, data, seed, start, stop, batch

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __getitem__(self, k: int):
        return self.batch_fn(self.data, np.random.default_rng([self.seed, self.start + k]), self.batch)


def _batches(batch_fn: Callable, data: list[dict], seed: int, start: int, stop: int, batch: int, workers: int):
    """Iterator over the training batches of iterations ``start .. stop-1``, in order; drawn in
    ``workers`` background processes when ``workers`` > 0 (same batches either way)."""
    seq = _BatchSequence(batch_fn, data, seed, start, stop, batch)
    if workers <= 0 or len(seq) == 0:  # no worker processes for nothing to draw (--average, --ensemble)
        return (seq[k] for k in range(len(seq)))
    loader = torch.utils.data.DataLoader(seq, batch_size=None, shuffle=False, num_workers=workers,
                                         prefetch_factor=4, pin_memory=torch.cuda.is_available(),
                                         multiprocessing_context="fork")
    return iter(loader)


def warmup_iterations(total: int) -> int:
    """Iterations of the linear learning-rate warm-up: 100, or the first fifth of a run shorter than 500
    (so a short run reaches its peak rate; runs of 500 iterations and more, those of the shipped weights
    among them, keep the 100)."""
    return max(1, min(100, total // 5))


def learning_rate(i: int, total: int, base: float, warmup: int | None = None) -> float:
    """Learning rate of iteration ``i`` of ``total``: linear warm-up to ``base`` over ``warmup``
    iterations (default :func:`warmup_iterations`), then cosine decay to zero at ``total``."""
    warmup = warmup_iterations(total) if warmup is None else warmup
    if i < warmup:
        return base * (i + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warmup) / max(1, total - warmup))))


@torch.no_grad()
def evaluate(net: nn.Module, img: torch.Tensor, lab: torch.Tensor, n_classes: int, chunk: int = 64) -> list[float]:
    """Hard Dice of classes 1..n-1 of ``net`` on ``(N, C, H, W)`` inputs (:func:`deepstrain.training.data.validation_slices`)."""
    net.eval()
    dev = next(net.parameters()).device
    pred = torch.cat([net(img[s : s + chunk].to(dev)).argmax(1).cpu() for s in range(0, img.shape[0], chunk)])
    net.train()
    return dice_per_class(pred, lab, n_classes)


RUN_FILES = ("last.pt", "summary.json", "snapshot_*.pt")
"""What a run writes into its folder (a fresh run refuses a folder holding any of it, unless --overwrite)."""


def check_run_options(args: argparse.Namespace, name: str) -> None:
    """Refuse (:class:`InputError`), before anything is read or written: counts that cannot work, an
    output folder under a file, a run folder that holds a run when this is not a ``--resume`` (nor
    ``--overwrite``), and an export folder already holding this network's weights (without ``--overwrite``)."""
    from ..weights import check_export_target

    check_option_values(args)
    check_counts(args, ("iterations", "batch", "crop", "val_every", "checkpoint_every"),
                 ("snapshot_every", "stop_after", "patients", "workers"))
    if name != "segmentation":  # options of the segmentation network's training, which this one would ignore
        for option in ("context", "phantoms", "lowres_share"):
            if getattr(args, option, 0):
                raise InputError("--" + option.replace("_", "-"), f"is for the segmentation network, not {name}")
    run = Path(args.run_dir or Path("runs") / name)
    check_output_folder(run, "run folder")
    check_output_folder(args.cache, "cache")
    held = sorted(f.name for pattern in RUN_FILES for f in run.glob(pattern)) if run.is_dir() else []
    if held and not args.resume and not getattr(args, "overwrite", False):
        raise InputError(run, f"holds a run ({', '.join(held[:3])}{' ...' if len(held) > 3 else ''}): continue "
                              "it with --resume, or give --overwrite to start afresh (its files are deleted)")
    if args.export:
        check_export_target(name, args.export_dir, getattr(args, "overwrite", False))


def read_checkpoint(path: Path, missing: str, keys: tuple[str, ...] = ("model",)) -> dict:
    """A checkpoint of the 2D training (``last.pt`` or a snapshot); :class:`InputError` with ``missing``
    when there is no such file, or when it is unreadable or not such a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, missing)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated, garbage, or not a torch file
        raise InputError(path, "cannot be read as a checkpoint (truncated or corrupt file?): "
                               + str(exc).split(". ")[0]) from exc
    if not isinstance(blob, dict) or any(k not in blob for k in keys):
        motion = isinstance(blob, dict) and ("step" in blob or "state_dict" in blob)
        raise InputError(path, "a file of the motion network, not of the centring or segmentation network" if motion
                         else "not a checkpoint of the centring or segmentation training (last.pt or a snapshot)")
    return blob


def _another_network(blob: dict, name: str, config: dict) -> str | None:
    """Why checkpoint ``blob`` is of another network than ``name`` (None when it may be of this one)."""
    other = blob.get("network")
    if other is None and isinstance(blob.get("config"), dict) and "n_classes" in blob["config"]:
        n = blob["config"]["n_classes"]
        if n != config.get("n_classes"):
            other = {2: "centring", N_CLASSES: "segmentation"}.get(n, f"a {n}-class")
    if other is not None and other != name:
        return f"a checkpoint of the {other} network, not of the {name} network"
    return None


def result_settings(args: argparse.Namespace) -> dict:
    """The options that decide a 2D network's weights (a resumed run must be given the same ones):
    all but where things are read and written, how often, the device, threads and workers, and the
    stop/resume flags."""
    ignore = {"data", "cache", "run_dir", "phantom_dir", "resume", "stop_after", "export", "export_dir", "val_every",
              "checkpoint_every", "snapshot_every", "threads", "workers", "device", "command_line", "network",
              "func", "command", "context", "overwrite"}  # --context is in the configuration, which resuming checks
    return {k: option_value(v) for k, v in sorted(vars(args).items()) if k not in ignore and not callable(v)}


def train_loop(args: argparse.Namespace, *, name: str, build: Callable[..., nn.Module], config: dict,
               batch_fn: Callable, val_fn: Callable, loss_fn: Callable, log: Callable[[str], None] = print) -> dict:
    """Shared training loop of the 2D networks; returns the summary written to ``run-dir/summary.json``.

    ``build(**config)`` makes the network; ``--width`` replaces the configuration's ``base``."""
    check_run_options(args, name)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run = Path(args.run_dir or Path("runs") / name)
    train_patients = D.TRAINING_PATIENTS[: args.patients] if args.patients else D.TRAINING_PATIENTS
    val_patients = D.VALIDATION_PATIENTS[: max(1, args.patients // 4)] if args.patients else D.VALIDATION_PATIENTS
    D.build_cache(args.data, args.cache, train_patients + val_patients, log=log)
    train = D.load_cache(args.cache, train_patients)
    val = D.load_cache(args.cache, val_patients)
    if name == "centring" and "cen_img" not in train[0]:
        raise InputError(args.cache, "a compact cache (segmentation arrays only, write_compact_cache): train the "
                                     "centring network from the full cache")
    if getattr(args, "width", 0):
        config = {**config, "base": args.width}
    bf16 = bool(getattr(args, "bf16", False))
    device = torch.device(getattr(args, "device", "cpu") or "cpu")  # checked by check_run_options
    start, history, wall, combined_from, recent = 0, [], 0.0, None, []
    command = uninterrupted_command(getattr(args, "command_line", "")
                                    or " ".join(["python -m deepstrain.training." + name] + sys.argv[1:]))
    settings = result_settings(args)
    ckpt = run / "last.pt"
    combine = getattr(args, "average", None) or getattr(args, "ensemble", None)
    if getattr(args, "average", None) and getattr(args, "ensemble", None):
        raise InputError(args.ensemble[0], "--average and --ensemble are two different ways to combine runs: give one")
    if getattr(args, "ensemble", None):
        if name != "segmentation":
            raise InputError(args.ensemble[0], f"--ensemble is for the segmentation network, not {name}")
        if len(args.ensemble) < 2:
            raise InputError(args.ensemble[0], "--ensemble needs at least two checkpoints")
        config = {**config, "members": len(args.ensemble)}
    net = build(**config).to(device)  # on its device before the optimizer: a resumed optimizer state follows it
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    if combine:
        if args.resume or getattr(args, "init", None) is not None:
            raise InputError(combine[0], "--average and --ensemble do not train: they cannot be combined with "
                                         "--resume or --init")
        member_config = {k: v for k, v in config.items() if k != "members"}
        blobs = [read_checkpoint(p, "no checkpoint to combine", ("model", "iteration", "wall_s")) for p in combine]
        for p, b in zip(combine, blobs):
            if problem := _another_network(b, name, config):
                raise InputError(p, problem + ": cannot combine")
            if b.get("config") != member_config:
                raise InputError(p, f"checkpoint configuration {b.get('config')} differs from {member_config}: "
                                    "cannot combine")
        if getattr(args, "ensemble", None):
            for m, b in zip(net.members, blobs):
                m.load_state_dict(b["model"])
        else:
            net.load_state_dict(mean_state_dict([b["model"] for b in blobs]))
        start = args.iterations = max(int(b["iteration"]) for b in blobs)
        runs: dict = {}  # snapshots of one run share its wall time: count each run once, at its longest
        for b in blobs:
            key = (b.get("seed"), b.get("command"))
            runs[key] = max(runs.get(key, 0.0), float(b["wall_s"]))
        wall = sum(runs.values())
        # Provenance of what is combined (its seed, length and command, not this command's defaults).
        combined_from = [{"checkpoint": str(p), "command": b.get("command"), "seed": b.get("seed"),
                          "iterations": int(b["iteration"]), "wall_s": round(float(b["wall_s"]), 1),
                          **({"combined_from": b["combined_from"]} if b.get("combined_from") else {})}
                         for p, b in zip(combine, blobs)]
        log(f"{'ensemble of' if getattr(args, 'ensemble', None) else 'averaged'} {len(blobs)} checkpoints: "
            f"{', '.join(map(str, combine))}")
    elif args.resume:
        state = read_checkpoint(ckpt, "no checkpoint to resume from",
                                ("model", "optimizer", "iteration", "history", "wall_s"))
        if problem := _another_network(state, name, config):
            raise InputError(ckpt, problem + ": cannot resume")
        if state.get("config") != config:
            raise InputError(ckpt, f"checkpoint configuration {state.get('config')} differs from {config} "
                                   "(a different --width?): cannot resume")
        if bool(state.get("bf16", False)) != bf16:
            raise InputError(ckpt, f"the run was trained with{'' if state.get('bf16') else 'out'} --bf16: "
                                   "resume it the same way")
        then = state.get("settings")
        if then is None:
            raise InputError(ckpt, "a checkpoint of an older version (its options are not stored): resume it with "
                                   "the deepstrain version that wrote it, or start the run again")
        if problem := resume_mismatch(then, settings):
            raise InputError(ckpt, problem)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history, wall = state["iteration"], state["history"], state["wall_s"]
        recent = list(state.get("recent_losses", []))  # the losses the printed and recorded means go on from
        history = [h for h in history if not h.get("stop")]  # the entry made at the stop: not of the uninterrupted run
        command = state.get("command", command)
        log(f"resumed {name} at iteration {start}")
    elif getattr(args, "init", None) is not None:
        blob = read_checkpoint(args.init, "no checkpoint to start from")
        if problem := _another_network(blob, name, config):
            raise InputError(args.init, problem + ": cannot start from it")
        try:
            widened = load_widening_input(net, blob["model"])
        except RuntimeError as exc:  # other layers or sizes: another network or configuration
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise InputError(args.init, f"its weights do not fit the {name} network ({first}): a checkpoint of "
                                        "another network or configuration (--width, --context)") from None
        log(f"initialised {name} from {args.init}" + (f" (input widened: {', '.join(widened)})" if widened else ""))
    log(f"{name}: {count_parameters(net)} parameters, {len(train)} training / {len(val)} validation patients"
        + (f", on {device}" if device.type != "cpu" else ""))
    if not args.resume and getattr(args, "overwrite", False):
        # --overwrite: the old run's files (and a temporary file a killed save left) go: they never mix with this run
        for pattern in RUN_FILES + ("*.tmp.pt",):
            for f in run.glob(pattern):
                f.unlink()
    batches = _batches(batch_fn, train, args.seed, start, args.iterations, args.batch, int(getattr(args, "workers", 0)))
    net.train()
    t0, last_t, losses = time.time(), time.time(), recent
    done = last_i = start

    def save(path: Path = ckpt, optimizer: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)  # made with the first file: bad input leaves no folder
        tmp = path.with_name(path.stem + ".tmp.pt")
        blob = {"model": {k: v.cpu() for k, v in net.state_dict().items()}, "iteration": done, "history": history,
                "wall_s": wall + time.time() - t0, "config": config, "seed": args.seed, "command": command,
                "bf16": bf16, "settings": settings, "network": name}
        if combined_from:  # like the summary: the seeds are the members', not this command's default
            blob.update(seed=None, combined_from=combined_from)
        if optimizer:
            blob["optimizer"] = opt.state_dict()
            blob["recent_losses"] = losses[-50:]  # a resumed run's printed and recorded means go on from them
        save_atomically(blob, path, tmp)

    snapshot_every = int(getattr(args, "snapshot_every", 0) or 0)

    for i in range(start, args.iterations):
        if args.stop_after and i >= args.stop_after:
            break
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = learning_rate(i, args.iterations, args.lr)
        if bf16:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = net(x)
            logits = logits.float()
        else:
            logits = net(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        done = i + 1
        if done % 20 == 0 or done == args.iterations:
            now = time.time()
            log(f"{name} it {done}/{args.iterations} loss {np.mean(losses[-20:]):.4f} "
                f"lr {opt.param_groups[0]['lr']:.2e} {(done - last_i) / max(now - last_t, 1e-9):.2f} it/s")
            last_t, last_i = now, done
        if done % args.val_every == 0 or done == args.iterations:
            metrics = val_fn(net, val)
            history.append({"iteration": done, "loss": float(np.mean(losses[-50:])), **metrics})
            log(f"{name} validation at {done}: {json.dumps(metrics)}")
        if done % args.checkpoint_every == 0 or done == args.iterations:
            save()
        if snapshot_every and done % snapshot_every == 0:
            save(run / f"snapshot_{done:06d}.pt", optimizer=False)
    if combine:  # no training: validate the average or ensemble and store it
        key = "ensemble_of" if getattr(args, "ensemble", None) else "averaged_from"
        history.append({"iteration": done, key: [str(p) for p in combine], **val_fn(net, val)})
        log(f"{name} validation of the {'ensemble' if key == 'ensemble_of' else 'average'}: {json.dumps(history[-1])}")
        save()
    if done < args.iterations:  # stopped early (--stop-after): checkpoint and validate where it stands
        log(f"{name}: stopped after iteration {done} of {args.iterations} (--stop-after)")
        if not history or history[-1]["iteration"] != done:
            history.append({"iteration": done, "loss": float(np.mean(losses[-50:])) if losses else float("nan"),
                            **val_fn(net, val), "stop": True})
        save()
    summary = {"name": name, "iterations": done, "iterations_planned": args.iterations, "batch": args.batch,
               "crop": args.crop, "lr": args.lr, "seed": args.seed,
               "wall_s": wall + time.time() - t0, "history": history, "config": config,
               "parameters": count_parameters(net), "training_patients": list(train_patients),
               "validation_patients": list(val_patients), "command": command,
               "threads": args.threads, "bf16": bf16}
    if combined_from:  # nothing was trained here: the training figures are the members'
        summary.update(batch=None, crop=None, lr=None, seed=None, threads=None, combined_from=combined_from)
    if getattr(args, "init", None) is not None:
        summary["initialised_from"] = str(args.init)
    if getattr(args, "average", None):
        summary["averaged_from"] = [str(p) for p in args.average]
    if getattr(args, "ensemble", None):
        summary["ensemble_of"] = [str(p) for p in args.ensemble]
    if getattr(args, "phantoms", 0):
        summary["synthetic_phantoms"] = {"count": args.phantoms, "share": args.phantom_share}
    if getattr(args, "lowres_share", 0.0):
        summary["lowres_share"] = args.lowres_share
    if done < args.iterations:
        summary["stopped_at"] = done
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    if args.export:
        from ..weights import export_weights

        this = getattr(args, "command_line", "") or " ".join(["python -m deepstrain.training." + name] + sys.argv[1:])
        extra = {"export_command": this} if this != command else None
        path = export_weights(name, net.cpu(), config, summary, command=command, out_dir=args.export_dir, extra=extra,
                              overwrite=getattr(args, "overwrite", False))
        log(f"exported {path}")
    return summary


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y) + soft_dice_loss(logits, y, N_CLASSES)


def _val(net: nn.Module, val: list[dict]) -> dict:
    img, lab, _ = D.validation_slices(val, channels=input_channels(net))
    d = evaluate(net, img, lab, N_CLASSES)
    return {"val_dice_rv": d[0], "val_dice_myo": d[1], "val_dice_lv": d[2]}


def main(args: argparse.Namespace) -> dict:
    """Train (or resume) the segmentation network with the options of :func:`deepstrain.training.add_training_arguments`.

    ``--phantoms N`` mixes slices of N synthetic phantoms (share ``--phantom-share``) into the
    ACDC batches, so that the network also knows the phantom's appearance (the demo). The
    validation figures stay ACDC-only.
    """
    check_run_options(args, NAME)
    phantoms = None
    if getattr(args, "phantoms", 0):
        phantoms = D.load_phantom_cache(args.phantom_dir, args.cache, args.phantoms)
    config = dict(CONFIG)
    if getattr(args, "context", 0):
        config["in_channels"] = args.context
    return train_loop(args, name=NAME, build=build_segmentation_net, config=config,
                      batch_fn=lambda data, rng, b: D.segmentation_batch(
                          data, rng, b, size=args.crop, phantoms=phantoms,
                          phantom_share=args.phantom_share if phantoms else 0.0, channels=config["in_channels"],
                          lowres_share=getattr(args, "lowres_share", 0.0)),
                      val_fn=_val, loss_fn=_loss)


if __name__ == "__main__":  # pragma: no cover
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_arguments(ap, **DEFAULTS[NAME])
    main(ap.parse_args())
