"""Front ends that turn images into the patch-grid tokens of a ViT, beside the plain patch
embedding (one linear map per patch). Both can blank masked patches after every layer, as masked
convolutions do (ConvMAE, ConvNeXt V2): during MAE pretraining nothing of a masked patch, not
even a bias, reaches a visible token.

Shape legend: B batch, C channels, H/W image size, D token width; visible_B1HW is 1 on visible
pixels.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


def _blank(x: Tensor, visible_B1HW: Tensor | None) -> Tensor:
    if visible_B1HW is None:
        return x
    step = visible_B1HW.shape[-1] // x.shape[-1]
    return x * visible_B1HW[..., ::step, ::step]


class ConvStem(nn.Module):
    """Images (B, C, H, W) -> (B, D, H/p, W/p) by log2(p) stride-2 3x3 convolutions (widths
    D/p, 2D/p, ...) and a 1x1 one: early convolutions see local structure across patch borders
    (Xiao et al. 2021, "Early convolutions help transformers see better")."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        convs, c_in, width = [], in_chans, max(8, dim // patch_size)
        for _ in range(patch_size.bit_length() - 1):
            convs.append(nn.Conv2d(c_in, width, 3, stride=2, padding=1))
            c_in, width = width, 2 * width
        self.convs = nn.ModuleList(convs)
        self.proj = nn.Conv2d(c_in, dim, 1)

    def forward(self, images_BCHW: Tensor, visible_B1HW: Tensor | None = None) -> Tensor:
        """`visible_B1HW` (1 = visible) blanks the masked patches after every layer, as masked
        convolutions do (ConvMAE): nothing of them, not even a bias, reaches a visible token."""
        x = images_BCHW
        for conv in self.convs:
            x = _blank(F.gelu(conv(x)), visible_B1HW)
        return self.proj(x)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions and a skip; the second starts at zero, so the block starts as the
    identity and the stack trains without normalisation (which masked pixels would skew)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, visible_B1HW: Tensor | None = None) -> Tensor:
        y = _blank(F.gelu(self.conv1(x)), visible_B1HW)
        return _blank(F.gelu(x + self.conv2(y)), visible_B1HW)


class ResidualStem(nn.Module):
    """A small residual CNN down to the patch grid: a 3x3 convolution to `width` channels at full
    resolution, then per resolution a residual block and a stride-2 convolution doubling the
    width, until the grid is patch_size times smaller; a 1x1 convolution to D. This is the
    convolutional front end the supervised CNN's accuracy comes from, with the transformer on
    top (a hybrid ViT)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, width: int = 16):
        super().__init__()
        self.first = nn.Conv2d(in_chans, width, 3, padding=1)
        self.blocks, self.downs = nn.ModuleList(), nn.ModuleList()
        for _ in range(patch_size.bit_length() - 1):
            self.blocks.append(ResidualBlock(width))
            self.downs.append(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1))
            width *= 2
        self.proj = nn.Conv2d(width, dim, 1)

    def forward(self, images_BCHW: Tensor, visible_B1HW: Tensor | None = None) -> Tensor:
        x = _blank(F.gelu(self.first(images_BCHW)), visible_B1HW)
        for block, down in zip(self.blocks, self.downs):
            x = block(x, visible_B1HW)
            x = _blank(F.gelu(down(x)), visible_B1HW)
        return self.proj(x)
