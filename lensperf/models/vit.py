"""ViT encoder on patch tokens: patch embedding, fixed 2-D sin-cos positions, pre-norm blocks.

Shape legend: B batch, C channels, H/W image size, P patch, L tokens, D width, N tokens + 1.
Positions are computed for whatever grid an image gives (not learned), so one encoder serves
64x64 pretraining images and padded 75x75 LR images alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lensperf.config import require
from lensperf.models import ops
from lensperf.models.stems import ConvStem, ResidualStem


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    image_size: int = 64
    patch_size: int = 8
    in_chans: int = 1
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    # "patch": one linear map per patch (a strided convolution); "conv": stride-2 3x3
    # convolutions down to the patch grid, then a 1x1 one (early convolutions); "cnn": a small
    # residual CNN down to the patch grid (a hybrid ViT). See stems.py.
    stem: Literal["patch", "conv", "cnn"] = "patch"
    stem_width: int = 16  # channels of the cnn stem at full resolution, doubled per halving
    drop_path: float = 0.0  # stochastic depth at the last block; linear in depth from 0
    # The model standardises its input: x -> (x - input_mean) / input_std, so the preprocessing
    # travels with the weights into every checkpoint, export and prediction.
    input_mean: float = 0.0
    input_std: float = 1.0

    def __post_init__(self):
        require(self.patch_size >= 1, "patch_size", "must be at least 1")
        require(
            self.image_size % self.patch_size == 0,
            "patch_size",
            f"must divide image_size={self.image_size}",
        )
        require(self.dim % self.heads == 0, "heads", f"must divide dim={self.dim}")
        require(self.depth >= 1, "depth", "must be at least 1")
        require(self.mlp_ratio > 0, "mlp_ratio", "must be positive")
        require(0 <= self.drop_path < 1, "drop_path", "must be in [0, 1)")
        require(self.input_std > 0, "input_std", "must be positive")
        if self.stem != "patch":
            p = self.patch_size
            require(p >= 2 and p & (p - 1) == 0, "patch_size",
                    f"must be a power of two >= 2 for stem={self.stem}")  # fmt: skip
        require(self.stem_width >= 1, "stem_width", "must be at least 1")


def sincos_positions(grid_h: int, grid_w: int, dim: int) -> Tensor:
    """(grid_h * grid_w, dim) 2-D sin-cos embedding (MAE's): half the channels per axis."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        angle = coord[:, None] * omega[None, :]
        parts += [angle.sin(), angle.cos()]
    pos = torch.cat(parts, dim=1)
    return nn.functional.pad(pos, (0, dim - pos.shape[1])).float()


def brightest_patches(images_BCHW: Tensor, patch_size: int, keep: float) -> Tensor:
    """(B, K) ids of the K = round(keep * L) brightest patches of each image (by mean pixel
    value, over channels), in no particular order. A DeepLense image is a lensed arc on empty
    sky: about 30 of its 64 8x8 patches hold light, so the rest can skip the encoder."""
    flux_BL = F.avg_pool2d(images_BCHW.float(), patch_size).mean(dim=1).flatten(1)
    return flux_BL.topk(max(1, round(flux_BL.shape[1] * keep)), dim=1, sorted=False).indices


def check_token_keep(keep: float) -> float:
    """`keep` if it is a fraction of patches a model can keep, (0, 1]; else a ValueError."""
    if not 0 < keep <= 1:
        raise ValueError(f"token_keep must be in (0, 1], got {keep}")
    return keep


def gather_rows(x_BLD: Tensor, ids_BK: Tensor) -> Tensor:
    """(B, K, D): rows ids_BK of each sample of x_BLD."""
    return x_BLD.gather(1, ids_BK[..., None].expand(*ids_BK.shape, x_BLD.shape[-1]))


def scatter_rows(x_BKD: Tensor, ids_BK: Tensor, rows: int, fill_D: Tensor | None = None) -> Tensor:
    """(B, rows, D) with row ids_BK[b, k] set to x_BKD[b, k]: gather_rows undone, the rows not
    gathered set to fill_D (0 if None)."""
    B, _, D = x_BKD.shape
    if fill_D is None:
        base_BRD = x_BKD.new_zeros(B, rows, D)
    else:
        base_BRD = fill_D.to(x_BKD.dtype).expand(B, rows, D)
    return base_BRD.scatter(1, ids_BK[..., None].expand_as(x_BKD), x_BKD)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BND: Tensor) -> Tensor:
        B, N, D = x_BND.shape
        qkv = self.qkv(x_BND).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out_BHNd = ops.attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out_BHNd.transpose(1, 2).reshape(B, N, D))


def drop_path(x_BND: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero a residual branch for a random fraction p of the samples, scaling
    the rest by 1 / (1 - p)."""
    if p == 0 or not training:
        return x_BND
    keep_B11 = x_BND.new_empty(x_BND.shape[0], 1, 1).bernoulli_(1 - p)
    return x_BND * keep_B11 / (1 - p)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class ViTEncoder(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        c = config
        if c.stem == "conv":
            self.patch_embed = ConvStem(c.in_chans, c.dim, c.patch_size)
        elif c.stem == "cnn":
            self.patch_embed = ResidualStem(c.in_chans, c.dim, c.patch_size, c.stem_width)
        else:
            self.patch_embed = nn.Conv2d(
                c.in_chans, c.dim, kernel_size=c.patch_size, stride=c.patch_size
            )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.set_drop_path(c.drop_path)
        self.norm = nn.LayerNorm(c.dim)
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)
        # The positions of the configured grid, built once (not per step) and kept out of the
        # state dict (they are not learned); another grid (SR's padded LR images) builds its own.
        grid = c.image_size // c.patch_size
        self.register_buffer("pos_LD", sincos_positions(grid, grid, c.dim), persistent=False)

    def positions(self, grid: tuple[int, int]) -> Tensor:
        """(L, D) sin-cos positions of a (rows, cols) patch grid."""
        side = self.config.image_size // self.config.patch_size
        if grid == (side, side):
            return self.pos_LD
        return sincos_positions(*grid, self.config.dim).to(self.pos_LD)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly from 0 at the first block to `rate` at the last. It
        changes no weight, so a pretrained encoder takes the rate its fine-tuning asks for."""
        depth = len(self.blocks)
        for i, block in enumerate(self.blocks):
            block.drop_path = rate * i / max(1, depth - 1)
        self.config = dataclasses.replace(self.config, drop_path=rate)

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW must not decay, besides biases and norms."""
        return {"cls_token"}

    @property
    def num_layers(self) -> int:
        return self.config.depth + 1

    def layer_of(self, name: str) -> int:
        """Layer of a parameter, for layer-wise lr decay: 0 the embedding, i + 1 block i,
        num_layers the final norm."""
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers if name.startswith("norm.") else 0

    def standardise(self, images_BCHW: Tensor) -> Tensor:
        c = self.config
        if c.input_mean == 0 and c.input_std == 1:
            return images_BCHW
        return (images_BCHW - c.input_mean) * (1 / c.input_std)

    @property
    def mixes_patches(self) -> bool:
        """Whether a token sees pixels of neighbouring patches (the conv stems' overlapping
        convolutions): masked patches must then be blanked in the stem."""
        return self.config.stem != "patch"

    def patchify(
        self, images_BCHW: Tensor, hidden_BL: Tensor | None = None
    ) -> tuple[Tensor, tuple[int, int]]:
        """Patch tokens with positions added: (B, L, D), and the (rows, cols) grid. Patches
        where `hidden_BL` is 1 are blanked (set to the input mean) before the stem, so no token
        carries their pixels."""
        p = self.config.patch_size
        H, W = images_BCHW.shape[-2:]
        if H % p or W % p:
            raise ValueError(f"image {H}x{W} is not divisible by patch size {p}")
        x = self.standardise(images_BCHW)
        if hidden_BL is None:
            tokens_BDhw = self.patch_embed(x)
        else:
            hidden_B1hw = hidden_BL.view(-1, 1, H // p, W // p).to(x.dtype)
            visible_B1HW = 1 - hidden_B1hw.repeat_interleave(p, -2).repeat_interleave(p, -1)
            tokens_BDhw = self.patch_embed(x * visible_B1HW, visible_B1HW)
        grid = (int(tokens_BDhw.shape[-2]), int(tokens_BDhw.shape[-1]))
        tokens_BLD = tokens_BDhw.flatten(2).transpose(1, 2)
        return tokens_BLD + self.positions(grid).to(tokens_BLD.dtype), grid

    def forward_tokens(self, tokens_BLD: Tensor) -> Tensor:
        """Blocks over [CLS] + tokens; returns (B, 1 + L, D) after the final norm."""
        cls = self.cls_token.expand(tokens_BLD.shape[0], -1, -1)
        x = torch.cat([cls, tokens_BLD], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images_BCHW: Tensor) -> Tensor:
        tokens, _ = self.patchify(images_BCHW)
        return self.forward_tokens(tokens)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
