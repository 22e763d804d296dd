"""The training features the recipes are built from: layer-wise lr decay, the weight average,
batch-norm recalibration, test-time symmetry averaging, random shifts, the convolutional stem,
drop path, the model's own input standardisation, the ResNet baseline and fractional
evaluation."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lensperf.config import load_config
from lensperf.data.augment import SYMMETRIES, random_shift, symmetric_view
from lensperf.errors import ConfigError
from lensperf.models import MAE, Classifier, MAEConfig, SuperResolution, ViTConfig, ViTEncoder
from lensperf.models.resnet import ResNet, ResNetConfig
from lensperf.models.vit import brightest_patches, drop_path
from lensperf.train.batch_norm import recalibrate_batch_norm
from lensperf.train.config import FinetuneClsConfig, FinetuneSRConfig, OptimConfig
from lensperf.train.optim import WeightAverage, parameter_groups
from lensperf.train.run import train
from lensperf.train.tasks import ClassifyTask

from .conftest import CONFIGS
from .test_train import TINY_ENCODER, stores  # noqa: F401 (a module-scoped fixture)

SMALL = ViTConfig(dim=32, depth=3, heads=2)


def test_layer_decay_scales_each_layer_and_leaves_the_head_at_full_rate():
    model = Classifier(ViTEncoder(SMALL))
    groups = parameter_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    L = model.num_layers  # depth + 1
    assert scale_of[id(named["head.1.weight"])] == 1.0
    assert scale_of[id(named["encoder.norm.weight"])] == 1.0
    assert scale_of[id(named["encoder.blocks.2.mlp.0.weight"])] == 0.5 ** (L - 3)
    assert scale_of[id(named["encoder.blocks.0.attn.qkv.weight"])] == 0.5 ** (L - 1)
    assert scale_of[id(named["encoder.patch_embed.weight"])] == 0.5**L
    assert scale_of[id(named["encoder.cls_token"])] == 0.5**L
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay_of[id(named["encoder.cls_token"])] == 0 < decay_of[id(named["head.1.weight"])]
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_layer_decay_needs_a_model_with_layers():
    with pytest.raises(ConfigError, match="optim.layer_decay"):
        parameter_groups(ResNet(ResNetConfig(), 3), weight_decay=0.05, layer_decay=0.7)
    assert len(parameter_groups(ResNet(ResNetConfig(), 3), 0.05, 1.0)) == 2


def test_weight_average_follows_the_formula():
    model = nn.Linear(3, 2)
    ema = WeightAverage(model, decay=0.9)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # first update: decay min(0.9, 2/11)
    w = 1 - 2 / 11
    for e, s in zip(ema.model.parameters(), start):
        torch.testing.assert_close(e, s * (2 / 11) + (s + 1) * w)
    assert not any(p.requires_grad for p in ema.model.parameters())
    restored = WeightAverage(nn.Linear(3, 2), 0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1
    assert torch.equal(restored.model.weight, ema.model.weight)


def test_batch_norm_is_recalibrated_on_training_batches():
    torch.manual_seed(0)
    model = ResNet(ResNetConfig(widths=(4, 8), blocks=(1, 1)), 3)
    task = ClassifyTask(FinetuneClsConfig(arch="resnet"))
    batches = [{"image": torch.rand(16, 1, 16, 16) * 3 + 5, "label": torch.zeros(16).long()}]
    stem_bn = model.stem[1]
    assert torch.allclose(stem_bn.running_mean, torch.zeros(4))
    recalibrate_batch_norm(model, batches, task)
    with torch.no_grad():
        conv_out = model.stem[0](batches[0]["image"])
    torch.testing.assert_close(stem_bn.running_mean, conv_out.mean((0, 2, 3)))
    assert stem_bn.momentum == 0.1  # restored


def test_torch_symmetries_match_the_loader_symmetries():
    images = np.random.default_rng(0).random((2, 1, 5, 5)).astype(np.float32)
    for code in range(8):
        want = SYMMETRIES[code](images)
        got = symmetric_view(torch.from_numpy(images), code).numpy()
        np.testing.assert_array_equal(got, want)


def test_tta_averages_the_eight_views():
    torch.manual_seed(0)
    task = ClassifyTask(FinetuneClsConfig(encoder=SMALL, tta=True))
    model = task.build_model().eval()
    images = torch.rand(3, 1, 64, 64)
    out = task.predict(model, [{"image": images, "label": torch.zeros(3).long()}])
    with torch.no_grad():
        probs = torch.stack([model(symmetric_view(images, c)).softmax(-1) for c in range(8)])
    torch.testing.assert_close(out["logits"].exp(), probs.mean(0), rtol=1e-5, atol=1e-6)
    # an image whose 8 views are identical gets the plain prediction
    flat = torch.full((1, 1, 64, 64), 0.3)
    out = task.predict(model, [{"image": flat, "label": torch.zeros(1).long()}])
    with torch.no_grad():
        torch.testing.assert_close(out["logits"].exp(), model(flat).softmax(-1))


def _roll_of(moved: torch.Tensor, image: torch.Tensor, max_shift: int) -> tuple[int, int]:
    """The (dy, dx) within max_shift by which `image` rolls onto `moved`; fails if none."""
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            if torch.equal(image.roll((dy, dx), dims=(-2, -1)), moved):
                return dy, dx
    raise AssertionError("not a roll of the image within the shift")


def test_random_shift_rolls_each_image_by_its_own_offset_within_the_bound():
    torch.manual_seed(0)
    images = torch.rand(64, 2, 9, 7)
    moved = random_shift(images, 2)
    offsets = [_roll_of(m, im, 2) for m, im in zip(moved, images)]
    assert len(set(offsets)) > 10  # per image, not one roll for the batch
    assert {dy for dy, _ in offsets} == {dx for _, dx in offsets} == {-2, -1, 0, 1, 2}
    assert torch.equal(random_shift(images, 0), images)


def test_shift_moves_the_training_images_only(monkeypatch):
    torch.manual_seed(0)
    task = ClassifyTask(FinetuneClsConfig(encoder=SMALL, shift=3))
    model = task.build_model()
    seen = []

    def forward(images):  # records what the model is given; logits of the right shape
        seen.append(images)
        return images.sum((1, 2, 3))[:, None].repeat(1, 3)

    monkeypatch.setattr(model, "forward", forward)
    batch = {"image": torch.rand(32, 1, 64, 64), "label": torch.zeros(32).long()}
    model.train()
    task.loss(model, batch)
    model.eval()
    task.loss(model, batch)
    offsets = [_roll_of(m, im, 3) for m, im in zip(seen[0], batch["image"])]
    assert any(o != (0, 0) for o in offsets)
    assert torch.equal(seen[1], batch["image"])  # evaluation sees the images as they are
    with pytest.raises(ConfigError, match="shift"):
        FinetuneClsConfig(shift=-1)


@pytest.mark.parametrize("stem", ["conv", "cnn"])
@pytest.mark.parametrize("patch", [4, 8])
def test_conv_stem_gives_the_patch_grid_and_trains(patch, stem):
    config = ViTConfig(dim=32, depth=1, heads=2, patch_size=patch, stem=stem)
    encoder = ViTEncoder(config)
    tokens, grid = encoder.patchify(torch.rand(2, 1, 64, 64))
    assert grid == (64 // patch, 64 // patch) and tokens.shape == (2, grid[0] * grid[1], 32)
    encoder(torch.rand(2, 1, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in encoder.patch_embed.parameters())
    with pytest.raises(ConfigError, match="power of two"):
        ViTConfig(patch_size=6, image_size=60, stem="conv")


def test_drop_path_only_in_training_and_unbiased():
    encoder = ViTEncoder(ViTConfig(dim=32, depth=3, heads=2, drop_path=0.5))
    assert [b.drop_path for b in encoder.blocks] == [0, 0.25, 0.5]
    torch.manual_seed(0)
    x = torch.ones(20000, 1, 1)
    dropped = drop_path(x, 0.25, training=True)
    assert dropped.unique().tolist() == pytest.approx([0.0, 4 / 3])
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.02)
    assert torch.equal(drop_path(x, 0.25, training=False), x)
    block = encoder.blocks[2].eval()
    y = torch.rand(4, 3, 32)
    torch.testing.assert_close(block(y), block(y))


def test_the_encoder_standardises_its_input():
    plain = ViTEncoder(ViTConfig(dim=32, depth=1, heads=2))
    shifted = ViTEncoder(ViTConfig(dim=32, depth=1, heads=2, input_mean=0.5, input_std=0.25))
    shifted.load_state_dict(plain.state_dict())
    images = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(shifted(images), plain((images - 0.5) / 0.25))


def test_resnet_baseline_shape_and_size():
    model = ResNet(ResNetConfig(), 3)
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 3)
    assert 0.6e6 < sum(p.numel() for p in model.parameters()) < 0.8e6


def test_resnet_refuses_a_pretrained_encoder():
    with pytest.raises(ConfigError, match="pretrained"):
        FinetuneClsConfig(arch="resnet", pretrained="runs/x/checkpoint.pt")


def test_optim_config_ranges():
    with pytest.raises(ConfigError, match="layer_decay"):
        OptimConfig(layer_decay=0)
    with pytest.raises(ConfigError, match="ema"):
        OptimConfig(ema=1.0)


def test_fractional_evaluation_and_a_training_clock_without_evaluation(stores, tmp_path):  # noqa: F811
    """eval_every=0.5 evaluates twice an epoch; train_s leaves evaluation time out."""
    out = tmp_path / "cnn"
    overrides = [
        f"out_dir={out}", f"data.store={stores['cls']}", "pretrained=", "arch=resnet",
        "resnet.widths=[4,8]", "resnet.blocks=[1,1]", "epochs=2", "runtime.eval_every=0.5",
        "data.batch_size=8", "runtime.compile=false", "optim.ema=0.9", "tta=true",
        "optim.layer_decay=1",  # the demo preset's decay is for a pretrained ViT
    ]  # fmt: skip
    metrics = train("finetune_cls", CONFIGS / "finetune_cls" / "demo.yaml", overrides)
    lines = (out / "log.jsonl").read_text().splitlines()
    evals = [json.loads(line)["eval"] for line in lines if line.startswith('{"eval"')]
    assert [e["epoch"] for e in evals] == pytest.approx([0.5, 1.0, 1.5, 2.0], abs=0.15)
    for e in evals:
        assert e["train_s"] + sum(x["eval_s"] for x in evals if x["step"] < e["step"]) == (
            pytest.approx(e["elapsed_s"] - e["eval_s"], abs=0.05)
        )
    assert 0 <= metrics["accuracy"] <= 1
    config = load_config(FinetuneClsConfig, out / "config.yaml")
    assert config.arch == "resnet" and config.tta


def test_tiny_encoder_overrides_still_build(stores, tmp_path):  # noqa: F811
    out = tmp_path / "vit"
    overrides = [f"out_dir={out}", f"data.store={stores['cls']}", "pretrained=", "epochs=1",
                 "data.batch_size=16", "runtime.compile=false", "encoder.stem=conv",
                 "encoder.drop_path=0.1", "optim.layer_decay=0.8", *TINY_ENCODER]  # fmt: skip
    metrics = train("finetune_cls", CONFIGS / "finetune_cls" / "demo.yaml", overrides)
    assert 0 <= metrics["accuracy"] <= 1


@pytest.mark.parametrize("stem", ["conv", "cnn"])
@pytest.mark.parametrize("blank", [True, False])
def test_mae_with_a_conv_stem_sees_nothing_of_the_masked_patches(blank, stem, monkeypatch):
    """Pixels of masked patches reach no token: changing them leaves the predictions as they
    were. Without the blanking, the stem's overlapping convolutions would leak them."""
    from lensperf.models import MAE, MAEConfig

    encoder = ViTConfig(dim=32, depth=1, heads=2, patch_size=8, stem=stem)
    mae = MAE(MAEConfig(encoder=encoder, decoder_dim=16, decoder_depth=1, decoder_heads=2))
    for module in mae.modules():  # the cnn stem's residual convs start at zero: wake them
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.2)
    if not blank:
        monkeypatch.setattr(type(mae.encoder), "mixes_patches", property(lambda self: False))
    images = torch.rand(2, 1, 64, 64)
    torch.manual_seed(3)
    _, pred, mask = mae(images)
    hidden = mask.view(2, 1, 8, 8).repeat_interleave(8, -2).repeat_interleave(8, -1)
    changed = images + hidden * torch.rand_like(images)
    torch.manual_seed(3)
    _, pred_changed, mask_changed = mae(changed)
    assert torch.equal(mask, mask_changed)
    assert torch.allclose(pred, pred_changed, atol=1e-6) == blank


def test_a_pretrained_encoder_takes_the_fine_tunes_drop_path(tmp_path):
    import yaml
    from safetensors.torch import save_file

    from lensperf.config import to_dict

    encoder = ViTEncoder(ViTConfig(dim=32, depth=3, heads=2))
    save_file(encoder.state_dict(), str(tmp_path / "encoder.safetensors"))
    (tmp_path / "encoder.yaml").write_text(yaml.safe_dump(to_dict(encoder.config)))
    config = FinetuneClsConfig(pretrained=str(tmp_path), encoder=ViTConfig(drop_path=0.2))
    model = ClassifyTask(config).build_model()
    assert [b.drop_path for b in model.encoder.blocks] == [0, 0.1, 0.2]
    assert model.encoder.config.drop_path == 0.2 and model.encoder.config.dim == 32
    torch.testing.assert_close(
        model.encoder.blocks[0].mlp[0].weight, encoder.blocks[0].mlp[0].weight
    )


def _lit_images(lit: list[tuple[int, int]], n: int = 2) -> torch.Tensor:
    """64x64 images whose 8x8 patches at `lit` (row, col) hold light and the rest faint noise."""
    images = torch.rand(n, 1, 64, 64) * 1e-3
    for row, col in lit:
        images[:, :, 8 * row : 8 * row + 8, 8 * col : 8 * col + 8] += 1 + torch.rand(n, 1, 8, 8)
    return images


LIT = [(0, 0), (2, 5), (7, 7), (3, 1), (4, 4), (6, 2), (1, 6), (5, 0)]


def test_brightest_patches_finds_the_lit_ones():
    ids = brightest_patches(_lit_images(LIT), patch_size=8, keep=8 / 64)
    for sample in ids:
        assert sorted(sample.tolist()) == sorted(8 * r + c for r, c in LIT)
    assert brightest_patches(_lit_images(LIT), 8, keep=0.5).shape == (2, 32)
    assert brightest_patches(_lit_images(LIT), 8, keep=1e-6).shape == (2, 1)  # never empty


def test_token_keep_passes_only_the_brightest_patches_in_training_and_evaluation():
    torch.manual_seed(0)
    model = Classifier(ViTEncoder(SMALL), token_keep=8 / 64)
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    images = _lit_images(LIT)
    model.train()
    model(images)
    model.eval()
    with torch.no_grad():
        evaluated = model(images)
        # the reference: every token through patchify, then the lit ones alone, in grid order
        lit_ids = sorted(8 * r + c for r, c in LIT)
        tokens_BLD = model.encoder.patchify(images)[0][:, lit_ids]
        reference = model.head(model.encoder.forward_tokens(tokens_BLD)[:, 1:].mean(dim=1))
        dark_changed = model(images + torch.rand_like(images) * 1e-4 * (images < 1e-2))
    assert seen[:2] == [1 + 8, 1 + 8]  # [CLS] + the lit patches, in training and in evaluation
    torch.testing.assert_close(evaluated, reference)
    torch.testing.assert_close(dark_changed, evaluated)  # the sky never reaches the encoder


def test_mae_token_keep_masks_and_reconstructs_the_brightest_patches_only():
    torch.manual_seed(0)
    config = MAEConfig(encoder=SMALL, decoder_dim=16, decoder_heads=2, token_keep=8 / 64)
    model = MAE(config)
    seen = {}
    model.encoder.blocks[0].register_forward_hook(lambda m, a, out: seen.update(enc=out.shape[1]))
    model.decoder_blocks[0].register_forward_hook(lambda m, a, out: seen.update(dec=out.shape[1]))
    images = _lit_images(LIT)
    sky_changed = images + torch.rand_like(images) * 1e-4 * (images < 1e-2)
    torch.manual_seed(1)
    loss, pred_BLK, mask_BL = model(images)
    torch.manual_seed(1)
    dark_changed = model(sky_changed)[0]
    assert seen == {"enc": 1 + 2, "dec": 1 + 8}  # a quarter of the 8 lit patches are visible
    lit_ids = sorted(8 * r + c for r, c in LIT)
    dark = torch.ones(64, dtype=torch.bool)
    dark[lit_ids] = False
    assert (mask_BL[:, dark] == 1).all() and (pred_BLK[:, dark] == 0).all()
    assert (mask_BL[:, lit_ids].sum(dim=1) == 6).all()  # 6 of the 8 lit patches are masked
    assert torch.isfinite(loss) and loss > 0
    torch.testing.assert_close(dark_changed, loss)  # the sky is in neither input nor loss


def _sr_written_plainly(model: SuperResolution, lr_B1HW: torch.Tensor, kept: list[int]):
    """SR's documented forward, the obvious way: the kept tokens through the encoder, the others
    0, then the 1x1 convolution unfolding every token to pixels."""
    tokens_BLD, grid = model.encoder.patchify(lr_B1HW)
    encoded_BLD = torch.zeros_like(tokens_BLD)
    encoded_BLD[:, kept] = model.encoder.forward_tokens(tokens_BLD[:, kept])[:, 1:]
    token_map = encoded_BLD.transpose(1, 2).reshape(len(lr_B1HW), -1, *grid)
    x = torch.cat([model.tokens_to_pixels(token_map), model.image_features(lr_B1HW)], dim=1)
    bicubic = F.interpolate(lr_B1HW, scale_factor=2, mode="bicubic", align_corners=False)
    return bicubic + model.upsample(model.refine(x))


@pytest.mark.parametrize("keep", [8 / 64, 1.0])
def test_sr_token_keep_encodes_the_brightest_patches_and_unfolds_the_sky_as_zero_tokens(keep):
    torch.manual_seed(0)
    model = SuperResolution(ViTEncoder(SMALL), features=8, token_keep=keep).double()
    with torch.no_grad():  # off the zero init of the last convolution, so every path counts
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    lr = _lit_images(LIT, n=1).double()
    # in the model's own order: attention does not care, float64 sums in another order do
    kept = brightest_patches(lr, 8, keep)[0].tolist()
    assert sorted(kept) == (sorted(8 * r + c for r, c in LIT) if keep < 1 else list(range(64)))
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    out = model(lr)
    reference = _sr_written_plainly(model, lr, kept)
    assert seen[0] == 1 + len(kept)
    torch.testing.assert_close(out, reference)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    reference_grads = torch.autograd.grad(reference.square().sum(), list(model.parameters()))
    for got, expected in zip(grads, reference_grads, strict=True):  # sums of thousands of terms
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("keep", [0.0, 1.5])
def test_token_keep_outside_its_range_is_a_config_error(keep):
    with pytest.raises(ConfigError, match="token_keep"):
        FinetuneClsConfig(token_keep=keep)
    with pytest.raises(ConfigError, match="token_keep"):
        MAEConfig(token_keep=keep)
    with pytest.raises(ValueError, match="token_keep"):
        Classifier(ViTEncoder(SMALL), token_keep=keep)
    with pytest.raises(ConfigError, match="token_keep"):
        FinetuneSRConfig(token_keep=keep)
    with pytest.raises(ValueError, match="token_keep"):
        SuperResolution(ViTEncoder(SMALL), token_keep=keep)


def test_mae_token_keep_needs_the_patch_stem():
    with pytest.raises(ConfigError, match="token_keep"):
        MAEConfig(encoder=ViTConfig(stem="conv"), token_keep=0.5)


def test_mean_max_pool_gives_the_head_the_tokens_mean_and_their_maximum():
    torch.manual_seed(0)
    model = Classifier(ViTEncoder(SMALL), token_keep=8 / 64, pool="mean_max").eval()
    images = _lit_images(LIT)
    with torch.no_grad():
        embedded = model.embed(images)
        lit_ids = sorted(8 * r + c for r, c in LIT)
        patches_BKD = model.encoder.forward_tokens(model.encoder.patchify(images)[0][:, lit_ids])
        patches_BKD = patches_BKD[:, 1:]
        logits = model(images)
    dim = SMALL.dim
    assert embedded.shape == (len(images), 2 * dim) and logits.shape == (len(images), 3)
    torch.testing.assert_close(embedded[:, :dim], patches_BKD.mean(dim=1))
    torch.testing.assert_close(embedded[:, dim:], patches_BKD.amax(dim=1))
    assert (embedded[:, dim:] > embedded[:, :dim] + 1e-6).any()  # the maximum is not the mean


def test_pool_is_checked_and_fixed_for_a_resumed_run():
    with pytest.raises(ValueError, match="pool"):
        Classifier(ViTEncoder(SMALL), pool="median")
    with pytest.raises(ConfigError, match="pool"):
        FinetuneClsConfig(arch="resnet", pool="mean_max")
    assert "pool" in ClassifyTask.fixed_sections


def test_local_branch_joins_the_head_and_learns_from_the_first_step():
    """The branch's features follow the pooled tokens in the embedding; its input is
    standardised as the encoder's is; after one step every branch weight gets a gradient (the
    residual blocks' first convolutions from the second step, their second starting at zero),
    and they sit at the head's full learning rate under layer decay."""
    torch.manual_seed(0)
    encoder = ViTConfig(dim=32, depth=3, heads=2, input_mean=0.05, input_std=0.2)
    model = Classifier(ViTEncoder(encoder), token_keep=8 / 64, local_width=4)
    images = _lit_images(LIT)
    embedded = model.embed(images)
    assert embedded.shape == (len(images), 32 + 16)
    torch.testing.assert_close(embedded[:, :32], model._pool_tokens(images))
    x = (images - 0.05) / 0.2
    for down, block in zip(model.local.downs, model.local.blocks):
        x = block(F.gelu(down(x)))
    torch.testing.assert_close(embedded[:, 32:], x.mean(dim=(-2, -1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(images), torch.tensor([0, 2])).backward()
        optimizer.step()
    for name, p in model.local.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    groups = parameter_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert {scale_of[id(p)] for p in model.local.parameters()} == {1.0}


def test_local_branch_sees_what_the_kept_tokens_do_not():
    """Light in a patch that token_keep drops changes nothing without the branch, and changes
    the embedding with it."""
    torch.manual_seed(0)
    images = _lit_images(LIT)
    dim_patch = images.clone()
    dim_patch[:, :, 8:16, 0:8] += 0.1  # an unlit patch, still far below the kept ones' light
    for width, moved in ((0, False), (4, True)):
        model = Classifier(ViTEncoder(SMALL), token_keep=8 / 64, local_width=width).eval()
        with torch.no_grad():
            changed = not torch.equal(model.embed(dim_patch), model.embed(images))
        assert changed is moved


def test_local_width_is_checked_and_fixed_for_a_resumed_run():
    with pytest.raises(ValueError, match="local_width"):
        Classifier(ViTEncoder(SMALL), local_width=-1)
    with pytest.raises(ValueError, match="local_width"):
        Classifier(ViTEncoder(SMALL), local_width=4, linear_probe=True)
    with pytest.raises(ConfigError, match="local_width"):
        FinetuneClsConfig(arch="resnet", local_width=8)
    with pytest.raises(ConfigError, match="local_width"):
        FinetuneClsConfig(local_width=8, linear_probe=True)
    with pytest.raises(ConfigError, match="local_width"):
        FinetuneClsConfig(local_width=-2)
    assert "local_width" in ClassifyTask.fixed_sections


def test_a_fine_tune_with_a_local_branch_trains_and_predicts(stores, tmp_path):  # noqa: F811
    out = tmp_path / "local"
    overrides = [f"out_dir={out}", f"data.store={stores['cls']}", "pretrained=", "epochs=1",
                 "data.batch_size=16", "runtime.compile=false", "local_width=4", "tta=true",
                 "token_keep=0.25", "optim.ema=0.9", *TINY_ENCODER]  # fmt: skip
    metrics = train("finetune_cls", CONFIGS / "finetune_cls" / "demo.yaml", overrides)
    assert 0 <= metrics["accuracy"] <= 1
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    weights = state.get("model", state)
    assert any(k.startswith("local.") for k in weights), sorted(weights)[:5]
    assert load_config(FinetuneClsConfig, out / "config.yaml").local_width == 4
