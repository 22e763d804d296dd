"""Plain models written the way public code writes them, for `lensperf bench` to compare with:
attention as explicit matmuls and softmax (or, asked for, `scaled_dot_product_attention`, as a
user on a GPU would), MAE masking by argsort + gather, sin-cos positions. The same sizes and
interfaces as lensperf's models, so each task's own loss trains either, and the bench can put
both through the same switches (torch.compile, bf16 autocast) and report the ratio to the
reference's best mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lensperf.models.mae import MAEConfig, patchify
from lensperf.models.vit import ViTConfig, sincos_positions


class PlainAttention(nn.Module):
    def __init__(self, dim: int, heads: int, sdpa: bool = False):
        super().__init__()
        self.heads, self.scale, self.sdpa = heads, (dim // heads) ** -0.5, sdpa
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.sdpa:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class PlainBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, sdpa: bool = False):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = PlainAttention(dim, heads, sdpa)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ReferenceViT(nn.Module):
    """A ViT encoder with lensperf's encoder interface (patchify, forward_tokens), so the SR
    head can sit on it too."""

    def __init__(self, config: ViTConfig, sdpa: bool = False):
        super().__init__()
        self.config = e = config
        self.patch_embed = nn.Conv2d(e.in_chans, e.dim, e.patch_size, e.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e.dim))
        self.blocks = nn.ModuleList(
            PlainBlock(e.dim, e.heads, e.mlp_ratio, sdpa) for _ in range(e.depth)
        )
        self.norm = nn.LayerNorm(e.dim)

    def patchify(self, imgs: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.patch_embed(imgs)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        return x.flatten(2).transpose(1, 2) + sincos_positions(*grid, self.config.dim).to(x), grid

    def forward_tokens(self, x: Tensor) -> Tensor:
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, imgs: Tensor) -> Tensor:
        return self.forward_tokens(self.patchify(imgs)[0])


class ReferenceClassifier(nn.Module):
    def __init__(self, config: ViTConfig, num_classes: int = 3, sdpa: bool = False):
        super().__init__()
        self.encoder = ReferenceViT(config, sdpa)
        self.head = nn.Sequential(nn.LayerNorm(config.dim), nn.Linear(config.dim, num_classes))

    def forward(self, imgs: Tensor) -> Tensor:
        return self.head(self.encoder(imgs)[:, 1:].mean(dim=1))


class ReferenceMAE(nn.Module):
    def __init__(self, config: MAEConfig, sdpa: bool = False):
        super().__init__()
        self.config = c = config
        e = c.encoder
        self.patch_embed = nn.Conv2d(e.in_chans, e.dim, e.patch_size, e.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e.dim))
        self.blocks = nn.ModuleList(
            PlainBlock(e.dim, e.heads, e.mlp_ratio, sdpa) for _ in range(e.depth)
        )
        self.norm = nn.LayerNorm(e.dim)
        self.decoder_embed = nn.Linear(e.dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            PlainBlock(c.decoder_dim, c.decoder_heads, sdpa=sdpa) for _ in range(c.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_dim)
        self.decoder_pred = nn.Linear(c.decoder_dim, e.patch_size**2 * e.in_chans)

    def random_masking(self, x: Tensor, mask_ratio: float):
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        noise = torch.rand(N, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones([N, L], device=x.device)
        mask[:, :len_keep] = 0
        return x_masked, torch.gather(mask, dim=1, index=ids_restore), ids_restore

    def forward(self, imgs: Tensor):
        e = self.config.encoder
        x = self.patch_embed(imgs)
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + sincos_positions(*grid, e.dim).to(x)
        x, mask, ids_restore = self.random_masking(x, self.config.mask_ratio)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x_ = x_ + sincos_positions(*grid, self.config.decoder_dim).to(x_)
        x = torch.cat([x[:, :1, :], x_], dim=1)
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
        target = patchify(imgs, e.patch_size)
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum(), pred, mask
