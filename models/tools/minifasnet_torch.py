"""MiniFASNet (Silent-Face-Anti-Spoofing, Apache-2.0) rebuilt in PyTorch from a state_dict.

Offline tool (extra `[convert]`, needs torch): the network is derived from the checkpoint's own
tensor names and shapes, so the same builder serves MiniFASNetV2 and MiniFASNetV1SE (whose last
block of each residual stage carries a squeeze-excitation gate) and every channel width comes
from the weights rather than from a table. Used by minifasnet_parity.py to check the shipped
TFLite conversions against the original `.pth` weights.

Layout (input 1x3x80x80, BGR 0-255, no normalisation):
  conv1      3x3/2 conv + BN + PReLU                  80 -> 40
  conv2_dw   3x3 depthwise + BN + PReLU
  conv_23    bottleneck, stride 2                      40 -> 20
  conv_3     residual bottlenecks (stride 1)
  conv_34    bottleneck, stride 2                      20 -> 10
  conv_4     residual bottlenecks
  conv_45    bottleneck, stride 2                      10 -> 5
  conv_5     residual bottlenecks
  conv_6_sep 1x1 conv + BN + PReLU (512)
  conv_6_dw  5x5 depthwise, no padding + BN            5 -> 1
  linear     512 -> 128 (no bias), BatchNorm1d, dropout (identity in eval), prob 128 -> 3
A bottleneck is 1x1 conv+BN+PReLU, 3x3 depthwise+BN+PReLU, 1x1 conv+BN (linear), optional SE
gate on its output, then the identity shortcut when it is a residual block.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

STRIDED = ("conv_23", "conv_34", "conv_45")
RESIDUAL = ("conv_3", "conv_4", "conv_5")


class ConvBN(nn.Module):
    """Convolution without bias, batch norm, and a per-channel PReLU unless `linear`."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, pad: int, groups: int, linear: bool
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu: nn.Module | None = None if linear else nn.PReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class SqueezeExcite(nn.Module):
    """Channel gate: global mean -> 1x1 conv + BN + ReLU -> 1x1 conv + BN -> sigmoid."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        g = x.mean(dim=(2, 3), keepdim=True)
        g = torch.relu(self.bn1(self.fc1(g)))
        g = torch.sigmoid(self.bn2(self.fc2(g)))
        return x * g


class Bottleneck(nn.Module):
    """1x1 expand, 3x3 depthwise (stride), 1x1 linear project, optional SE, optional shortcut."""

    def __init__(
        self, cin: int, mid: int, cout: int, stride: int, residual: bool, se_hidden: int | None
    ) -> None:
        super().__init__()
        self.conv = ConvBN(cin, mid, 1, 1, 0, 1, linear=False)
        self.conv_dw = ConvBN(mid, mid, 3, stride, 1, mid, linear=False)
        self.project = ConvBN(mid, cout, 1, 1, 0, 1, linear=True)
        self.se_module = SqueezeExcite(cout, se_hidden) if se_hidden else None
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        if self.se_module is not None:
            y = self.se_module(y)
        return x + y if self.residual else y


class Stage(nn.Module):
    """A run of residual bottlenecks, stored under `model.<i>` as in the checkpoint."""

    def __init__(self, blocks: list[Bottleneck]) -> None:
        super().__init__()
        self.model = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x)
        return out


def _shape(sd: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def _bottleneck(sd: Mapping[str, Tensor], prefix: str, stride: int, residual: bool) -> Bottleneck:
    mid, cin = _shape(sd, f"{prefix}.conv.conv.weight")[:2]
    cout = _shape(sd, f"{prefix}.project.conv.weight")[0]
    se_key = f"{prefix}.se_module.fc1.weight"
    se_hidden = _shape(sd, se_key)[0] if se_key in sd else None
    return Bottleneck(cin, mid, cout, stride, residual, se_hidden)


class MiniFASNet(nn.Module):
    """The whole classifier; `forward` returns the 3 logits (class 1 = real face)."""

    def __init__(self, sd: Mapping[str, Tensor]) -> None:
        super().__init__()
        c1 = _shape(sd, "conv1.conv.weight")[0]
        self.conv1 = ConvBN(3, c1, 3, 2, 1, 1, linear=False)
        self.conv2_dw = ConvBN(c1, c1, 3, 1, 1, c1, linear=False)
        for name in STRIDED:
            setattr(self, name, _bottleneck(sd, name, stride=2, residual=False))
        for name in RESIDUAL:
            count = 1 + max(
                int(m.group(1))
                for k in sd
                if (m := re.match(rf"{name}\.model\.(\d+)\.", k)) is not None
            )
            blocks = [_bottleneck(sd, f"{name}.model.{i}", 1, True) for i in range(count)]
            setattr(self, name, Stage(blocks))
        c6, c5 = _shape(sd, "conv_6_sep.conv.weight")[:2]
        k6 = _shape(sd, "conv_6_dw.conv.weight")[-1]
        self.conv_6_sep = ConvBN(c5, c6, 1, 1, 0, 1, linear=False)
        self.conv_6_dw = ConvBN(c6, c6, k6, 1, 0, c6, linear=True)
        emb, flat = _shape(sd, "linear.weight")
        self.linear = nn.Linear(flat, emb, bias=False)
        self.bn = nn.BatchNorm1d(emb)
        self.prob = nn.Linear(emb, _shape(sd, "prob.weight")[0], bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv2_dw(self.conv1(x))
        for name in ("conv_23", "conv_3", "conv_34", "conv_4", "conv_45", "conv_5"):
            x = getattr(self, name)(x)
        x = self.conv_6_dw(self.conv_6_sep(x))
        x = self.bn(self.linear(torch.flatten(x, 1)))
        out: Tensor = self.prob(x)  # dropout sits here in training; identity in eval
        return out


def load_minifasnet(path: Path) -> MiniFASNet:
    """The network of a Silent-Face `.pth` state_dict, weights loaded strictly, in eval mode."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    # The checkpoints were saved from nn.DataParallel: every key starts with "module.".
    sd = {k.removeprefix("module."): v for k, v in raw.items()}
    net = MiniFASNet(sd)
    net.load_state_dict(sd, strict=True)
    return net.eval()
