"""Masked autoencoder: the encoder sees the visible patches only; a lighter decoder
reconstructs every patch; the loss is the MSE on the removed ones (MAE, He et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lensperf.config import require
from lensperf.models import ops
from lensperf.models.vit import (
    Block,
    ViTConfig,
    ViTEncoder,
    _init_weights,
    brightest_patches,
    gather_rows,
    scatter_rows,
    sincos_positions,
)


@dataclass(frozen=True, kw_only=True)
class MAEConfig:
    encoder: ViTConfig = field(default_factory=ViTConfig)
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    # Pretrain on this fraction of each image's patches, the brightest (the arc; the rest is
    # empty sky, which teaches nothing): masking, reconstruction and the loss see only these.
    # 1 uses every patch (MAE's own).
    token_keep: float = 1.0

    def __post_init__(self):
        require(0 <= self.mask_ratio < 1, "mask_ratio", "must be in [0, 1)")
        require(
            self.decoder_dim % self.decoder_heads == 0, "decoder_heads", "must divide decoder_dim"
        )
        require(self.decoder_depth >= 1, "decoder_depth", "must be at least 1")
        require(0 < self.token_keep <= 1, "token_keep", "must be in (0, 1]")
        require(
            self.token_keep == 1 or self.encoder.stem == "patch",
            "token_keep",
            "needs encoder.stem=patch (a conv stem mixes the dropped patches' pixels in)",
        )


def patchify(images_BCHW: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), row-major patches."""
    B, C, H, W = images_BCHW.shape
    x = images_BCHW.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(patches_BLK: Tensor, p: int, grid: tuple[int, int], channels: int) -> Tensor:
    B = patches_BLK.shape[0]
    h, w = grid
    x = patches_BLK.reshape(B, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, channels, h * p, w * p)


class MAE(nn.Module):
    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = config
        enc = config.encoder
        self.encoder = ViTEncoder(enc)
        self.decoder_embed = nn.Linear(enc.dim, config.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(config.decoder_dim, config.decoder_heads, 4.0)
            for _ in range(config.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(config.decoder_dim)
        self.decoder_pred = nn.Linear(config.decoder_dim, enc.patch_size**2 * enc.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        grid = enc.image_size // enc.patch_size  # the decoder's positions, built once
        self.register_buffer(
            "decoder_pos_LE", sincos_positions(grid, grid, config.decoder_dim), persistent=False
        )
        for module in (
            self.decoder_embed,
            self.decoder_blocks,
            self.decoder_norm,
            self.decoder_pred,
        ):
            module.apply(_init_weights)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"} | {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def forward(self, images_BCHW: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, predicted patches (B, L, p*p*C), mask (B, L) with 1 = removed). With
        token_keep < 1 the patches outside the brightest are removed too, predicted as 0."""
        p, ratio = self.config.encoder.patch_size, self.config.mask_ratio
        B, L = images_BCHW.shape[0], (images_BCHW.shape[-2] // p) * (images_BCHW.shape[-1] // p)
        noise_BL = hidden_BL = None
        if self.encoder.mixes_patches:  # the same draw masks the pixels and the tokens
            noise_BL = torch.rand(B, L, device=images_BCHW.device)
            hidden_BL = ops.random_masking(noise_BL[..., None], ratio, noise=noise_BL)[1]
        tokens_BLD, grid = self.encoder.patchify(images_BCHW, hidden_BL)
        target_BLK = patchify(images_BCHW, p)
        positions_LE = self.decoder_pos_LE
        if L != positions_LE.shape[0]:  # images of another size than configured
            positions_LE = sincos_positions(*grid, self.config.decoder_dim).to(positions_LE)
        kept_BS = None
        if self.config.token_keep < 1:  # (the config rules out a conv stem here)
            kept_BS = brightest_patches(images_BCHW, p, self.config.token_keep)
            tokens_BLD = gather_rows(tokens_BLD, kept_BS)
            target_BLK = gather_rows(target_BLK, kept_BS)
            positions_LE = positions_LE[kept_BS]  # now (B, S, E)
        if noise_BL is None:
            noise_BL = torch.rand(tokens_BLD.shape[:2], device=images_BCHW.device)
        visible_BKD, mask_BL, ids_restore_BL = ops.random_masking(tokens_BLD, ratio, noise_BL)
        latent_B1KD = self.encoder.forward_tokens(visible_BKD)

        x = self.decoder_embed(latent_B1KD)
        cls_B1E, visible_BKE = x[:, :1], x[:, 1:]
        full_BLE = ops.unshuffle(visible_BKE, self.mask_token.to(x.dtype), ids_restore_BL)
        full_BLE = full_BLE + positions_LE.to(full_BLE.dtype)
        x = torch.cat([cls_B1E, full_BLE], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        pred_BLK = self.decoder_pred(self.decoder_norm(x))[:, 1:]

        if self.config.norm_pix_loss:
            mean = target_BLK.mean(dim=-1, keepdim=True)
            var = target_BLK.var(dim=-1, keepdim=True)
            target_BLK = (target_BLK - mean) / (var + 1e-6) ** 0.5
        per_patch_BL = ((pred_BLK.float() - target_BLK.float()) ** 2).mean(dim=-1)
        mask_f = mask_BL.float()
        loss = (per_patch_BL * mask_f).sum() / mask_f.sum().clamp(min=1.0)
        if kept_BS is not None:  # back on the full grid, for whoever draws the reconstructions
            pred_BLK = scatter_rows(pred_BLK, kept_BS, L)
            mask_BL = mask_BL.new_ones(B, L).scatter(1, kept_BS, mask_BL)
        return loss, pred_BLK, mask_BL
