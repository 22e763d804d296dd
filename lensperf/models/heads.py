"""Fine-tuning models on the pretrained encoder: a classifier and a 2x super-resolution net."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lensperf.models.stems import ResidualBlock
from lensperf.models.vit import (
    ViTEncoder,
    brightest_patches,
    check_token_keep,
    gather_rows,
    scatter_rows,
)

POOLS = ("mean", "mean_max")


class LocalBranch(nn.Module):
    """A small CNN on the whole image beside the encoder: three stages at 1/2, 1/4 and 1/8 of
    the resolution (width, 2x and 4x its channels), each a stride-2 3x3 convolution and a
    residual block, then the spatial mean: (B, 4 * width) features for the classifier's head.

    Why: the fine-tuned ViT and the supervised ResNet err on disjoint images, and the ViT's
    errors are images whose light is spread over more of the frame (docs/recipes.md, E17). Its
    8x8 patches see no structure finer than a patch across their borders; the branch does. No
    batch norm (the ResNet's made its accuracy move with the precision, docs/recipes.md);
    the residual blocks start as the identity instead. Trained from scratch in the fine-tune.
    """

    def __init__(self, in_chans: int, width: int, input_mean: float, input_std: float):
        super().__init__()
        self.input_mean, self.input_std = input_mean, input_std
        self.downs, self.blocks = nn.ModuleList(), nn.ModuleList()
        c_in = in_chans
        for c_out in (width, 2 * width, 4 * width):
            self.downs.append(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
            self.blocks.append(ResidualBlock(c_out))
            c_in = c_out
        self.features = c_in

    def forward(self, images_BCHW: Tensor) -> Tensor:
        x = (images_BCHW - self.input_mean) * (1 / self.input_std)
        for down, block in zip(self.downs, self.blocks):
            x = block(F.gelu(down(x)))
        return x.mean(dim=(-2, -1))


class Classifier(nn.Module):
    """Encoder + head on the mean of the patch tokens (pool="mean"), or on their mean and
    their per-feature maximum side by side (pool="mean_max"). linear_probe freezes the encoder.
    local_width > 0 adds a LocalBranch of that width on the whole image, whose features join the
    pooled tokens in the head (arch=vit's only convolutional part; 0, the default, has none).

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
        local_width: int = 0,
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if local_width < 0:
            raise ValueError(f"local_width must be >= 0, got {local_width}")
        if local_width and linear_probe:
            raise ValueError("local_width needs a trained encoder: a linear probe trains no branch")
        self.encoder = encoder
        self.linear_probe = linear_probe
        self.token_keep = check_token_keep(token_keep)
        self.pool = pool
        dim = encoder.config.dim * (2 if pool == "mean_max" else 1)
        self.local = None
        if local_width:
            c = encoder.config
            self.local = LocalBranch(c.in_chans, local_width, c.input_mean, c.input_std)
            dim += self.local.features
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
        with pool="mean_max", the mean then the maximum; the local branch's features after
        them when there is one."""
        pooled = self._pool_tokens(images_BCHW)
        if self.local is None:
            return pooled
        return torch.cat([pooled, self.local(images_BCHW)], dim=1)

    def _pool_tokens(self, images_BCHW: Tensor) -> Tensor:
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
