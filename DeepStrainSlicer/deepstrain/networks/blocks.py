"""Building blocks shared by the 2D networks: convolution blocks and a small 2D U-Net."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBlock2d(nn.Sequential):
    """Two (3x3 convolution, batch norm, ReLU) layers."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class UNet2d(nn.Module):
    """A plain 2D U-Net: ``depth`` poolings, channels ``base * 2**level`` (capped at ``max_channels``).

    Input ``(N, in_channels, H, W)`` of any size: it is zero-padded to a multiple of
    ``2**depth`` and the output ``(N, n_classes, H, W)`` logits are cropped back.
    """

    def __init__(self, in_channels: int, n_classes: int, base: int = 16, depth: int = 4, max_channels: int = 256) -> None:
        super().__init__()
        self.depth = depth
        ch = [min(base * 2**k, max_channels) for k in range(depth + 1)]
        self.down = nn.ModuleList([ConvBlock2d(in_channels, ch[0])] + [ConvBlock2d(ch[k - 1], ch[k]) for k in range(1, depth + 1)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(ch[k + 1], ch[k], 2, stride=2) for k in range(depth)])
        self.dec = nn.ModuleList([ConvBlock2d(2 * ch[k], ch[k]) for k in range(depth)])
        self.head = nn.Conv2d(ch[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for k in reversed(range(self.depth)):
            x = self.dec[k](torch.cat([skips[k], self.up[k](x)], dim=1))
        x = self.head(x)
        if ph or pw:
            x = x[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        return x


@torch.no_grad()
def fuse_batchnorm(net: nn.Module) -> nn.Module:
    """Fold the batch norms of every :class:`ConvBlock2d` into its convolutions, in place (inference only).

    With the running statistics, ``bn(conv(x)) = conv'(x)`` where ``conv'`` has weights scaled by
    ``gamma / sqrt(var + eps)`` and a bias; the batch norm becomes an identity. Same outputs to
    float rounding, about 10 % less time. The network must be in eval mode and is not trainable after.
    """
    if net.training:
        raise ValueError("fuse_batchnorm needs a network in eval mode")
    for block in net.modules():
        if not isinstance(block, ConvBlock2d):
            continue
        for i in range(len(block) - 1):
            conv, bn = block[i], block[i + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                              padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
            block[i], block[i + 1] = fused.eval(), nn.Identity()
    return net


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
