"""Fine-tuning models on the pretrained encoder: a classifier and a 2x super-resolution net."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lensperf.models.vit import (
    ViTEncoder,
    brightest_patches,
    check_token_keep,
    gather_rows,
    scatter_rows,
)

POOLS = ("mean", "mean_max")


class Classifier(nn.Module):
    """Encoder + head on the mean of the patch tokens (pool="mean"), or on their mean and
    their per-feature maximum side by side (pool="mean_max"). linear_probe freezes the encoder.

    token_keep < 1 passes only that fraction of each image's patches through the encoder: the
    brightest ones, by mean pixel value. A lensed arc fills about 30 of the 64 8x8 patches of a
    DeepLense image and the rest is empty sky, so the encoder's cost per image falls with the
    tokens while the arc stays whole. The same patches are chosen in training and evaluation.
    """

    def __init__(
        self,
        encoder: ViTEncoder,
        num_classes: int = 3,
        linear_probe: bool = False,
        token_keep: float = 1.0,
        pool: str = "mean",
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.encoder = encoder
        self.linear_probe = linear_probe
        self.token_keep = check_token_keep(token_keep)
        self.pool = pool
        dim = encoder.config.dim * (2 if pool == "mean_max" else 1)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
        if linear_probe:
            encoder.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    @property
    def num_layers(self) -> int:
        return self.encoder.num_layers

    def layer_of(self, name: str) -> int:
        """The encoder's layers, then the head on top at the full learning rate."""
        if name.startswith("encoder."):
            return self.encoder.layer_of(name.removeprefix("encoder."))
        return self.num_layers

    def embed(self, images_BCHW: Tensor) -> Tensor:
        """(B, D) image embeddings: the mean of the encoder's patch tokens (the kept ones); (B, 2D)
        with pool="mean_max", the mean then the maximum."""
        tokens_BLD, _ = self.encoder.patchify(images_BCHW)
        if self.token_keep < 1:
            p = self.encoder.config.patch_size
            tokens_BLD = gather_rows(tokens_BLD, brightest_patches(images_BCHW, p, self.token_keep))
        patches_BKD = self.encoder.forward_tokens(tokens_BLD)[:, 1:]
        if self.pool == "mean_max":
            return torch.cat([patches_BKD.mean(dim=1), patches_BKD.amax(dim=1)], dim=1)
        return patches_BKD.mean(dim=1)

    def forward(self, images_BCHW: Tensor) -> Tensor:
        if self.linear_probe:
            with torch.no_grad():
                features = self.embed(images_BCHW)
        else:
            features = self.embed(images_BCHW)
        return self.head(features)


class SuperResolution(nn.Module):
    """LR (B, 1, h, w) -> HR (B, 1, f*h, f*w) as bicubic upsampling plus a predicted residual.

    The ViT sees the LR image padded to a multiple of its patch size; its tokens are unfolded
    to LR resolution by pixel shuffle, joined with convolutional features of the LR image
    itself (the tokens alone lose detail finer than a patch), refined by a small conv stack at
    LR resolution, and pixel-shuffled up by the factor.

    token_keep < 1 passes only that fraction of the LR image's patches through the encoder, the
    brightest (the arc), as in the Classifier; the sky's tokens are 0 before the unfolding, and
    the convolutional features of the LR image still cover every pixel.
    """

    def __init__(
        self, encoder: ViTEncoder, factor: int = 2, features: int = 48, token_keep: float = 1.0
    ):
        super().__init__()
        self.encoder = encoder
        self.factor = factor
        self.token_keep = check_token_keep(token_keep)
        p, dim = encoder.config.patch_size, encoder.config.dim
        self.tokens_to_pixels = nn.Sequential(
            nn.Conv2d(dim, features * p * p, kernel_size=1), nn.PixelShuffle(p)
        )
        self.image_features = nn.Conv2d(1, features, kernel_size=3, padding=1)
        self.refine = nn.Sequential(
            nn.Conv2d(2 * features, features, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(features, features, 3, padding=1),
            nn.GELU(),
        )
        self.upsample = nn.Sequential(
            nn.Conv2d(features, factor * factor, 3, padding=1), nn.PixelShuffle(factor)
        )
        nn.init.zeros_(self.upsample[0].weight)  # start as plain bicubic
        nn.init.zeros_(self.upsample[0].bias)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def forward(self, lr_B1hw: Tensor) -> Tensor:
        h, w = lr_B1hw.shape[-2:]
        p = self.encoder.config.patch_size
        pad_h, pad_w = (-h) % p, (-w) % p
        padded = F.pad(lr_B1hw, (0, pad_w, 0, pad_h), mode="replicate")
        tokens_BLD, grid = self.encoder.patchify(padded)
        # tokens_to_pixels[0] is a 1x1 convolution: a linear map of each token, applied here to
        # the encoder's tokens only; a sky token is 0, so its pixels are that map's bias.
        to_pixels = self.tokens_to_pixels[0]
        weight_FD, bias_F = to_pixels.weight.flatten(1), to_pixels.bias
        if self.token_keep < 1:
            kept_BK = brightest_patches(padded, p, self.token_keep)
            kept_BKD = self.encoder.forward_tokens(gather_rows(tokens_BLD, kept_BK))[:, 1:]
            pixels_BKF = F.linear(kept_BKD, weight_FD, bias_F)
            pixels_BLF = scatter_rows(pixels_BKF, kept_BK, tokens_BLD.shape[1], fill_D=bias_F)
        else:
            pixels_BLF = F.linear(self.encoder.forward_tokens(tokens_BLD)[:, 1:], weight_FD, bias_F)
        B, _, Fp = pixels_BLF.shape
        pixel_map = pixels_BLF.transpose(1, 2).reshape(B, Fp, *grid)
        token_pixels = F.pixel_shuffle(pixel_map, p)[..., :h, :w]
        x = torch.cat([token_pixels, self.image_features(lr_B1hw)], dim=1)
        residual = self.upsample(self.refine(x))
        bicubic = F.interpolate(
            lr_B1hw, scale_factor=self.factor, mode="bicubic", align_corners=False
        )
        return bicubic + residual
