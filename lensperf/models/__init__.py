"""Models: the ViT encoder, the MAE, and the fine-tuning heads."""

from lensperf.models.heads import Classifier, SuperResolution
from lensperf.models.mae import MAE, MAEConfig
from lensperf.models.vit import ViTConfig, ViTEncoder

__all__ = ["MAE", "MAEConfig", "Classifier", "SuperResolution", "ViTConfig", "ViTEncoder"]
