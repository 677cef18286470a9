"""Conformer encoder, CTC and transducer heads, and their configurations."""

from .asr import ASRModel, LossOutput, count_parameters, load_encoder_and_heads
from .config import (
    NAMED_CONFIGS,
    ConfigError,
    EncoderConfig,
    FeatureConfig,
    ModelConfig,
    SpecAugmentConfig,
    get_config,
)
from .conformer import ConformerEncoder, build_encoder
from .quantize import quantize_int8

__all__ = [
    "ASRModel", "LossOutput", "count_parameters", "load_encoder_and_heads", "NAMED_CONFIGS",
    "ConfigError",
    "EncoderConfig", "FeatureConfig", "ModelConfig", "SpecAugmentConfig", "get_config",
    "ConformerEncoder", "build_encoder", "quantize_int8",
]
