"""Shipped network weights: the manifest, checksum-verified loading and export after training.

``deepstrain/weights/manifest.json`` lists every weight file under ``models``: file name, sha256,
size in bytes, architecture configuration, parameter count, training data and its licence and
citation, the patient split, the training command, date, seed, iterations, wall time and the
validation metrics. Weight files hold ``{"config": dict, "state_dict": float16 tensors}``.
Loading refuses a file that is missing, or whose size or sha256 differs from the manifest,
with an :class:`~deepstrain.errors.InputError` naming the file.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .errors import InputError
from .outputs import write_atomically

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"
LICENCE = "CC BY-NC-SA 4.0"
CITATION = (
    "O. Bernard, A. Lalande, C. Zotti, F. Cervenansky, et al. 'Deep Learning Techniques for Automatic MRI "
    "Cardiac Multi-structures Segmentation and Diagnosis: Is the Problem Solved?' IEEE Transactions on "
    "Medical Imaging, 37(11):2514-2525, 2018. doi:10.1109/TMI.2018.2837502"
)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(weights_dir: Path | None = None) -> dict:
    """The manifest of ``weights_dir`` (default: the package's weights); InputError if absent or unreadable."""
    path = Path(weights_dir or WEIGHTS_DIR) / MANIFEST
    if not path.is_file():
        raise InputError(path, "weights manifest not found")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"weights manifest is not valid JSON ({exc})") from exc


def verified_path(name: str, weights_dir: Path | None = None) -> Path:
    """Path of model ``name``'s weight file after checking it exists and matches the manifest's size/sha256."""
    wdir = Path(weights_dir or WEIGHTS_DIR)
    entry = read_manifest(wdir).get("models", {}).get(name)
    if entry is None:
        raise InputError(wdir / MANIFEST, f"no weights named '{name}' in the manifest")
    path = wdir / entry["file"]
    if not path.is_file():
        raise InputError(path, f"weight file of '{name}' is missing")
    size = path.stat().st_size
    if size != entry["size_bytes"]:
        raise InputError(path, f"weight file is corrupt: {size} bytes, manifest says {entry['size_bytes']}")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise InputError(path, f"weight file is corrupt: sha256 {digest} differs from the manifest's {entry['sha256']}")
    return path


NETWORKS = ("centring", "segmentation", "motion")
"""The shipped networks, in the order the pipeline runs them."""


def cache_key(name: str, weights_dir: Path | None = None) -> tuple:
    """Key for keeping a loaded network in memory: the folder and the size and modification time of
    its manifest and of ``name``'s file, so that a file changed on disk is loaded (and verified) again."""
    wdir = Path(weights_dir or WEIGHTS_DIR).resolve()

    def stamp(path: Path) -> tuple[int, int]:
        try:
            st = path.stat()
        except OSError:
            return (-1, -1)
        return (st.st_size, st.st_mtime_ns)

    try:
        file = read_manifest(wdir)["models"][name]["file"]
    except (InputError, KeyError, TypeError):
        file = f"{name}.pt"  # loading will then report the problem
    return (name, str(wdir), stamp(wdir / MANIFEST), stamp(wdir / file))


def provenance(names: tuple[str, ...], weights_dir: Path | None = None) -> dict:
    """Which weights produced a result: the weights folder ("package" for the shipped ones) and, per
    network in ``names``, its file, sha256 and training date from the manifest (for report.json)."""
    models = read_manifest(weights_dir).get("models", {})
    out: dict = {"weights_dir": "package" if weights_dir is None else str(Path(weights_dir).resolve())}
    for name in names:
        entry = models.get(name, {})
        out[name] = {"file": entry.get("file"), "sha256": entry.get("sha256"), "date": entry.get("date")}
    return out


def load_network(name: str, build: Callable[..., nn.Module], weights_dir: Path | None = None) -> nn.Module:
    """Build network ``name`` with its stored configuration, load its verified weights, in eval mode (float32)."""
    path = verified_path(name, weights_dir)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = build(**blob["config"])
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    except InputError:
        raise
    except Exception as exc:  # a file that matches its checksum but not the code
        raise InputError(path, f"cannot load weights of '{name}': {exc}") from exc
    return net.float().eval()


def check_export_target(name: str, out_dir: Path | None, overwrite: bool = False) -> None:
    """Refuse (:class:`InputError`) to export network ``name`` into ``out_dir`` when that folder is a file
    or lies under one, or already holds ``name``'s weight file or manifest entry and ``overwrite`` is
    not given. ``out_dir`` None (the package's weights) is replaced on request: exporting there is the
    way to ship new weights. Called before training, so a run is not lost to a refused export."""
    if out_dir is None:
        return
    from .outputs import check_folder_can_be_made

    wdir = Path(out_dir)
    check_folder_can_be_made(wdir)
    if overwrite:
        return
    held = [f for f in (wdir / f"{name}.pt",) if f.exists()]
    if (wdir / MANIFEST).is_file() and name in (read_manifest(wdir).get("models") or {}):
        held.append(wdir / MANIFEST)
    if held:
        raise InputError(wdir, f"already holds exported '{name}' weights ({', '.join(f.name for f in held)}): "
                               "give another folder, or --overwrite to replace them")


def export_weights(name: str, net: nn.Module, config: dict, summary: dict, *, command: str,
                   out_dir: Path | None = None, extra: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``<name>.pt`` (float16) into ``out_dir`` (default: the package's weights) and its manifest
    entry; an ``out_dir`` already holding ``name``'s weights is refused unless ``overwrite``
    (:func:`check_export_target`)."""
    from .training.data import DATA_DESCRIPTION, VALIDATION_PATIENTS

    check_export_target(name, out_dir, overwrite)
    wdir = Path(out_dir or WEIGHTS_DIR)
    wdir.mkdir(parents=True, exist_ok=True)
    path = wdir / f"{name}.pt"
    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).clone() for k, v in net.state_dict().items()}
    write_atomically(path, path.with_suffix(".pt.tmp"),
                     lambda tmp: torch.save({"config": dict(config), "state_dict": state}, tmp))
    history = summary.get("history") or [{}]
    entry = {
        "file": path.name,
        "sha256": sha256_of(path),
        "size_bytes": path.stat().st_size,
        "dtype": "float16",
        "config": dict(config),
        "parameters": summary.get("parameters"),
        "training_data": DATA_DESCRIPTION,
        "licence": LICENCE,
        "citation": CITATION,
        "split": {
            "rule": "validation = ACDC patients whose number is a multiple of 5 (4 per group); training = the other 80",
            "validation_patients": list(VALIDATION_PATIENTS),
            "training_patients_used": len(summary.get("training_patients", [])),
            # the patients the validation_metrics below come from (fewer with --patients N)
            "validation_patients_evaluated": list(summary.get("validation_patients") or VALIDATION_PATIENTS),
        },
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "seed": summary.get("seed"),
        "iterations": summary.get("iterations"),
        "iterations_planned": summary.get("iterations_planned"),
        "batch": summary.get("batch"),
        "training_crop_pixels": summary.get("crop"),
        "threads": summary.get("threads"),
        "training_wall_s": round(float(summary.get("wall_s", 0.0)), 1),
        "validation_metrics": {k: v for k, v in history[-1].items() if k.startswith("val_")},
        **({"combined_from": summary["combined_from"]} if summary.get("combined_from") else {}),
        **(extra or {}),
    }
    update_manifest(name, entry, wdir)
    return path


def update_manifest(name: str, entry: dict, weights_dir: Path | None = None, *, merge: bool = False) -> None:
    """Set (or, with ``merge``, update the keys of) model ``name``'s manifest entry, atomically."""
    wdir = Path(weights_dir or WEIGHTS_DIR)
    mpath = wdir / MANIFEST
    manifest = read_manifest(wdir) if mpath.is_file() else {
        "about": "Weights of the DeepStrainSlicer networks, trained for this project (not the original DeepStrain "
                 "weights). Trained on ACDC: " + LICENCE + "; cite " + CITATION,
        "models": {},
    }
    models = manifest.setdefault("models", {})
    models[name] = {**models.get(name, {}), **entry} if merge else entry
    write_atomically(mpath, mpath.with_suffix(".json.tmp"),
                     lambda tmp: tmp.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n"))
