"""The supervised baseline: a ResNet-18-style CNN for 1-channel lens images (the network DeepLense
papers report, and what a researcher would otherwise write in an afternoon).

Shape legend: B batch, C channels, H/W image size. Four stages of basic residual blocks, the
first at full resolution, each later one halving the resolution and doubling the width; global
average pooling; a linear head. At widths 16-128 with two blocks a stage it has 0.7M parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lensperf.config import require


@dataclass(frozen=True, kw_only=True)
class ResNetConfig:
    in_chans: int = 1
    widths: tuple[int, ...] = (16, 32, 64, 128)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    # Input standardisation, x -> (x - input_mean) / input_std, as ViTConfig's.
    input_mean: float = 0.0
    input_std: float = 1.0

    def __post_init__(self):
        require(len(self.widths) >= 1, "widths", "must name at least one stage")
        require(len(self.blocks) == len(self.widths), "blocks", "needs one count per width")
        require(all(w >= 1 for w in self.widths), "widths", "must be positive")
        require(all(b >= 1 for b in self.blocks), "blocks", "must be at least 1")
        require(self.input_std > 0, "input_std", "must be positive")


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity: trains faster
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x_BCHW: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x_BCHW)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x_BCHW))


class ResNet(nn.Module):
    """Images (B, C, H, W) -> features (B, widths[-1]) by `embed`, logits by `forward`."""

    def __init__(self, config: ResNetConfig, num_classes: int):
        super().__init__()
        self.config = c = config
        self.stem = nn.Sequential(
            nn.Conv2d(c.in_chans, c.widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(c.widths[0]),
            nn.ReLU(),
        )
        stages, c_in = [], c.widths[0]
        for i, (width, count) in enumerate(zip(c.widths, c.blocks)):
            for j in range(count):
                stages.append(BasicBlock(c_in, width, 2 if (i > 0 and j == 0) else 1))
                c_in = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)

    def embed(self, images_BCHW: Tensor) -> Tensor:
        c = self.config
        x = (images_BCHW - c.input_mean) * (1 / c.input_std)
        return self.stages(self.stem(x)).mean(dim=(-2, -1))

    def forward(self, images_BCHW: Tensor) -> Tensor:
        return self.head(self.embed(images_BCHW))
