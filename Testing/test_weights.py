"""Tests of the weights manifest: checksum-verified loading, clear errors, shipped weights."""
from __future__ import annotations


import pytest
import torch

from deepstrain.errors import InputError
from deepstrain.networks.centring import build_centring_net
from deepstrain.networks.segmentation import build_segmentation_net
from deepstrain.weights import WEIGHTS_DIR, export_weights, load_network, read_manifest, sha256_of, verified_path

SUMMARY = {"parameters": 1, "seed": 0, "iterations": 1, "wall_s": 0.0, "history": [{"val_x": 1.0}]}


@pytest.fixture()
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    net = build_centring_net(base=2, depth=2)
    export_weights("centring", net, {"base": 2, "depth": 2}, SUMMARY, command="test", out_dir=tmp_path)
    return tmp_path, net


def test_export_then_load_round_trip(tiny_weights):
    wdir, net = tiny_weights
    m = read_manifest(wdir)["models"]["centring"]
    assert m["sha256"] == sha256_of(wdir / "centring.pt")
    assert "CC BY-NC-SA 4.0" == m["licence"] and "Bernard" in m["citation"]
    assert m["split"]["validation_patients"][0] == "patient005" and len(m["split"]["validation_patients"]) == 20
    loaded = load_network("centring", build_centring_net, wdir)
    x = torch.rand(1, 1, 32, 32)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=2e-2)  # float16 storage


def test_corrupt_file_is_refused_naming_it(tiny_weights):
    wdir, _ = tiny_weights
    f = wdir / "centring.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(InputError, match="centring.pt.*corrupt"):
        load_network("centring", build_centring_net, wdir)


def test_missing_file_and_missing_entry(tiny_weights, tmp_path_factory):
    wdir, _ = tiny_weights
    (wdir / "centring.pt").unlink()
    with pytest.raises(InputError, match="centring.pt.*missing"):
        verified_path("centring", wdir)
    with pytest.raises(InputError, match="no weights named 'segmentation'"):
        verified_path("segmentation", wdir)
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path_factory.mktemp("empty"))


def test_truncated_file_is_refused(tiny_weights):
    wdir, _ = tiny_weights
    f = wdir / "centring.pt"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(InputError, match="corrupt"):
        verified_path("centring", wdir)


def test_shipped_weights_load_and_are_documented():
    manifest = read_manifest(WEIGHTS_DIR)
    total = 0
    for name, build in [("centring", build_centring_net), ("segmentation", build_segmentation_net)]:
        entry = manifest["models"][name]
        for key in ("sha256", "size_bytes", "training_data", "licence", "citation", "command", "date",
                    "split", "validation_metrics"):
            assert entry.get(key) not in (None, ""), (name, key)
        # a trained network names its seed; a combination (--ensemble, --average) names each member's
        members = entry.get("combined_from") or [entry]
        assert all(m.get("seed") is not None and m.get("command") for m in members), name
        if entry.get("config", {}).get("members"):
            assert len(members) == entry["config"]["members"], name
        net = load_network(name, build)
        assert not net.training
        total += entry["size_bytes"]
    assert sum(e["size_bytes"] for e in manifest["models"].values()) <= 40 * 2**20


def test_an_ensemble_exports_as_one_file_and_loads_with_its_member_count(tmp_path):
    torch.manual_seed(0)
    cfg = {"base": 2, "depth": 2, "members": 2}
    net = build_segmentation_net(**cfg).eval()
    export_weights("segmentation", net, cfg, SUMMARY, command="test", out_dir=tmp_path)
    loaded = load_network("segmentation", build_segmentation_net, tmp_path)
    assert len(loaded.members) == 2
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(torch.softmax(loaded(x), 1), torch.softmax(net(x), 1), atol=2e-2)
