"""head_init: a fine-tune whose head starts from another classifier's (a linear probe's: LP-FT)."""

import pytest
import torch

from lensperf.config import to_dict
from lensperf.errors import ConfigError, DataError
from lensperf.models import Classifier, ViTConfig, ViTEncoder
from lensperf.train.checkpoint import save_checkpoint
from lensperf.train.config import FinetuneClsConfig
from lensperf.train.tasks import ClassifyTask

SMALL = ViTConfig(dim=32, depth=2, heads=2)


def probe_checkpoint(path, task="finetune_cls", pool="mean"):
    """A classifier checkpoint whose head is far from a fresh one's."""
    torch.manual_seed(0)
    probe = Classifier(ViTEncoder(SMALL), linear_probe=True, pool=pool)
    with torch.no_grad():
        for p in probe.head.parameters():
            p.add_(torch.randn_like(p))
    state = {"task": task, "model": probe.state_dict(), "encoder_config": to_dict(SMALL)}
    return save_checkpoint(state, path), probe


def test_the_head_starts_from_the_probe_and_the_encoder_from_pretrained(tmp_path):
    path, probe = probe_checkpoint(tmp_path / "probe.pt")
    fresh = ClassifyTask(FinetuneClsConfig(pretrained=str(path))).build_model()
    lpft = ClassifyTask(FinetuneClsConfig(pretrained=str(path), head_init=str(path))).build_model()
    for name, weight in probe.head.state_dict().items():
        torch.testing.assert_close(lpft.head.state_dict()[name], weight)
        assert not torch.equal(fresh.head.state_dict()[name], weight)
    torch.testing.assert_close(lpft.encoder.state_dict(), probe.encoder.state_dict())
    assert all(p.requires_grad for p in lpft.encoder.parameters())  # fine-tuned, not probed


def test_a_classifier_rebuilt_from_its_checkpoint_keeps_its_own_head(tmp_path):
    """The probe a fine-tune started from may be gone by the time its checkpoint is used."""
    _, model = probe_checkpoint(tmp_path / "fine-tune.pt")
    config = FinetuneClsConfig(head_init=str(tmp_path / "deleted-probe.pt"))
    state = {
        "config": to_dict(config),
        "model": model.state_dict(),
        "encoder_config": to_dict(SMALL),
    }
    _, rebuilt = ClassifyTask.from_checkpoint(state)
    torch.testing.assert_close(rebuilt.head.state_dict(), model.head.state_dict())


def test_a_head_that_does_not_fit_or_no_classifier_is_refused(tmp_path):
    path, _ = probe_checkpoint(tmp_path / "probe.pt")
    wide = FinetuneClsConfig(pretrained=str(path), head_init=str(path), pool="mean_max")
    with pytest.raises(DataError, match="does not fit this model's"):
        ClassifyTask(wide).build_model()
    mae, _ = probe_checkpoint(tmp_path / "mae.pt", task="pretrain")
    with pytest.raises(DataError, match="not a ViT classifier's checkpoint"):
        ClassifyTask(FinetuneClsConfig(pretrained=str(path), head_init=str(mae))).build_model()
    with pytest.raises(DataError, match="no checkpoint at"):
        ClassifyTask(FinetuneClsConfig(head_init=str(tmp_path / "none.pt"))).build_model()


def test_the_resnet_refuses_a_head_init():
    with pytest.raises(ConfigError, match="head_init"):
        FinetuneClsConfig(arch="resnet", head_init="runs/probe/checkpoint.pt")
