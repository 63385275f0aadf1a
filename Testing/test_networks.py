"""Tests of the centring and segmentation networks (architecture, sizes, determinism)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deepstrain.networks.blocks import UNet2d, count_parameters
from deepstrain.networks.centring import build_centring_net, lv_centre_from_probability
from deepstrain.networks.segmentation import build_segmentation_net, context_slices, input_channels, segment_slices


def test_segmentation_net_size_and_any_input_size():
    torch.manual_seed(0)
    net = build_segmentation_net().eval()
    n = count_parameters(net)
    assert 1_000_000 < n < 3_000_000
    with torch.no_grad():
        for shape in [(128, 128), (96, 112), (75, 130)]:
            out = net(torch.rand(2, 3, *shape))
            assert out.shape == (2, 4) + shape


def test_no_parameter_depends_on_image_size():
    # the same weights run on two sizes; no parameter has a spatial extent larger than a 3x3 kernel
    net = build_centring_net()
    for p in net.parameters():
        assert p.ndim <= 1 or max(p.shape[2:], default=1) <= 3
    assert count_parameters(net) < 1_000_000


def test_segment_slices_chunked_equals_whole_and_deterministic():
    torch.manual_seed(1)
    net = build_segmentation_net(base=4, depth=2).eval()
    x = context_slices(torch.rand(1, 5, 48, 40), 3)
    a = segment_slices(net, x, chunk=2)
    b = segment_slices(net, x, chunk=64)
    assert a.shape == (5, 4, 48, 40)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a.sum(1), torch.ones(5, 48, 40), atol=1e-5)
    one = build_segmentation_net(in_channels=1, base=4, depth=2).eval()  # one-slice networks take (N, H, W)
    assert torch.equal(segment_slices(one, x[:, 1]), segment_slices(one, x[:, 1:2]))
    assert torch.equal(segment_slices(net, x, chunk=2), a)
    # test-time flips: the average of the flipped passes, each flipped back
    single = segment_slices(net, x, flips=((),))
    lr = segment_slices(net, x.flip(-1), flips=((),)).flip(-1)
    assert torch.allclose(segment_slices(net, x, flips=((), (-1,))), (single + lr) / 2, atol=1e-6)


def test_context_slices_neighbours_and_zero_ends():
    v = torch.arange(2 * 4 * 3 * 5, dtype=torch.float32).reshape(2, 4, 3, 5)
    x = context_slices(v, 3)
    assert x.shape == (8, 3, 3, 5)
    for t in range(2):
        for z in range(4):
            n = t * 4 + z
            assert torch.equal(x[n, 1], v[t, z])
            assert torch.equal(x[n, 0], v[t, z - 1] if z > 0 else torch.zeros(3, 5))  # never another frame
            assert torch.equal(x[n, 2], v[t, z + 1] if z < 3 else torch.zeros(3, 5))
    assert torch.equal(context_slices(v, 1)[:, 0], v.reshape(8, 3, 5))
    five = context_slices(v, 5)  # two neighbours on each side (--context 5)
    assert torch.equal(five[5, 2], v[1, 1]) and torch.equal(five[5, 4], v[1, 3])
    assert torch.equal(five[5, 1], v[1, 0]) and not five[5, 0].any()  # below slice 0: zeros, not frame 0
    assert input_channels(build_segmentation_net(base=4, depth=2)) == 3
    assert input_channels(build_segmentation_net(in_channels=1, base=4, depth=2)) == 1


def test_widened_first_convolution_computes_what_the_one_slice_network_did():
    from deepstrain.training.segmentation import load_widening_input

    torch.manual_seed(3)
    old = build_segmentation_net(in_channels=1, base=4, depth=2).eval()
    new = build_segmentation_net(base=4, depth=2).eval()
    assert load_widening_input(new, old.state_dict()) == ["down.0.0.weight"]
    v = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a = old(v.reshape(6, 1, 32, 32))
        b = new(context_slices(v, 3))
    assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(RuntimeError):  # anything else that does not match is still refused
        load_widening_input(build_segmentation_net(base=8, depth=2), old.state_dict())
    five = build_segmentation_net(in_channels=5, base=4, depth=2).eval()  # three slices into five: centred
    load_widening_input(five, new.state_dict())
    with torch.no_grad():
        assert torch.allclose(five(context_slices(v, 5)), b, atol=1e-6)


def test_fuse_batchnorm_keeps_outputs():
    from deepstrain.networks.blocks import fuse_batchnorm

    torch.manual_seed(2)
    net = build_segmentation_net(base=4, depth=2)
    for m in net.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        fused = fuse_batchnorm(net)
        after = fused(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert torch.allclose(before, after, atol=1e-5)
    with pytest.raises(ValueError):
        fuse_batchnorm(build_segmentation_net(base=4, depth=2))  # training mode


def test_unet_padding_crops_back_exactly():
    net = UNet2d(1, 3, base=4, depth=3).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 17, 33)).shape == (1, 3, 17, 33)


def test_lv_centre_from_probability_largest_component():
    p = np.zeros((3, 40, 50))
    p[:, 10:20, 10:20] = 0.9  # big blob, centre (14.5, 14.5)
    p[1, 30:33, 40:43] = 0.9  # small distractor
    r, c = lv_centre_from_probability(p)
    assert r == pytest.approx(14.5) and c == pytest.approx(14.5)
    assert lv_centre_from_probability(np.zeros((2, 5, 5))) is None


def test_precision_choice_and_bfloat16_close_to_float32():
    from deepstrain.networks.precision import compute_precision, resolve

    assert resolve("float32") == "float32" and resolve("bfloat16") == "bfloat16"
    assert resolve("auto") in ("float32", "bfloat16")
    with pytest.raises(ValueError):
        resolve("half")
    torch.manual_seed(5)
    net = build_segmentation_net(base=4, depth=2).eval()
    x = torch.rand(4, 3, 40, 40)
    p32 = segment_slices(net, x, precision="float32")
    p16 = segment_slices(net, x, precision="bfloat16")
    assert p16.dtype == torch.float32
    assert torch.allclose(p32, p16, atol=0.05)
    assert torch.equal(segment_slices(net, x, precision="bfloat16"), p16)  # deterministic
    with compute_precision("float32") as used:
        assert used == "float32"


def test_ensemble_gives_the_mean_probability_of_its_members_and_runs_as_one_network():
    from deepstrain.networks.blocks import fuse_batchnorm
    from deepstrain.networks.segmentation import SegmentationEnsemble

    torch.manual_seed(3)
    ens = build_segmentation_net(members=3, base=4, depth=2).eval()
    assert isinstance(ens, SegmentationEnsemble) and input_channels(ens) == 3
    x = context_slices(torch.rand(1, 4, 32, 40), 3)
    with torch.no_grad():
        members = [torch.softmax(m(x), 1) for m in ens.members]
    p = segment_slices(ens, x, precision="float32")
    assert torch.allclose(p, sum(members) / 3, atol=1e-5)
    assert not torch.allclose(p, members[0], atol=1e-3)  # the members differ: the mean is not one of them
    assert torch.allclose(segment_slices(fuse_batchnorm(ens), x, precision="float32"), p, atol=1e-4)
    with pytest.raises(ValueError, match="at least two"):
        SegmentationEnsemble([build_segmentation_net(base=4, depth=2)])
