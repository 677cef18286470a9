"""Typed model configurations and the paper's named sizes.

Every field is validated when the dataclass is built, so a bad value fails at
once with an error that names the field (``ConfigError: encoder.n_heads: ...``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message starts with the field name."""


def _require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{name}: {message}")


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel front end: 25 ms windows every 10 ms at 16 kHz (the paper's)."""

    sample_rate: int = 16000
    n_mels: int = 80
    win_length: int = 400
    hop_length: int = 160
    n_fft: int = 512

    def __post_init__(self) -> None:
        _require(self.sample_rate > 0, "model.features.sample_rate", "must be positive")
        _require(self.n_mels > 0, "model.features.n_mels", "must be positive")
        _require(
            0 < self.win_length <= self.n_fft,
            "model.features.win_length",
            f"must be in 1..n_fft ({self.n_fft}), got {self.win_length}",
        )
        _require(self.hop_length > 0, "model.features.hop_length", "must be positive")


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment without time warping (Park et al. 2019), the paper's settings."""

    freq_masks: int = 2
    freq_width: int = 27
    time_masks: int = 10
    time_width_ratio: float = 0.05

    def __post_init__(self) -> None:
        _require(self.freq_masks >= 0, "model.spec_augment.freq_masks", "must be >= 0")
        _require(self.freq_width >= 0, "model.spec_augment.freq_width", "must be >= 0")
        _require(self.time_masks >= 0, "model.spec_augment.time_masks", "must be >= 0")
        _require(
            0.0 <= self.time_width_ratio <= 1.0,
            "model.spec_augment.time_width_ratio",
            f"must be in [0, 1], got {self.time_width_ratio}",
        )


@dataclass(frozen=True)
class EncoderConfig:
    """Conformer encoder (Gulati et al. 2020, Table 1).

    ``conv_kernel_size`` is 31 rather than the paper's 32 so that the depthwise
    convolution pads symmetrically and frame t stays centred; an even kernel is
    rejected because symmetric padding cannot keep the length.
    """

    n_mels: int = 80
    d_model: int = 144
    n_layers: int = 16
    n_heads: int = 4
    ffn_multiplier: int = 4
    conv_kernel_size: int = 31
    dropout: float = 0.1
    subsampling_channels: int | None = None  # None: d_model, as most reproductions
    subsampling_factor: int = 4  # the paper's 4x; 8x (a third conv) for cheap CPU models

    def __post_init__(self) -> None:
        _require(self.n_mels > 0, "model.encoder.n_mels", "must be positive")
        _require(
            self.d_model > 0 and self.d_model % 2 == 0,
            "model.encoder.d_model",
            f"must be a positive even number (sinusoidal positions), got {self.d_model}",
        )
        _require(self.n_layers > 0, "model.encoder.n_layers", "must be positive")
        _require(self.n_heads > 0, "model.encoder.n_heads", "must be positive")
        _require(
            self.d_model % self.n_heads == 0,
            "model.encoder.d_model",
            f"{self.d_model} is not divisible by model.encoder.n_heads={self.n_heads}",
        )
        _require(self.ffn_multiplier > 0, "model.encoder.ffn_multiplier", "must be positive")
        _require(
            self.conv_kernel_size > 0 and self.conv_kernel_size % 2 == 1,
            "model.encoder.conv_kernel_size",
            f"must be odd for symmetric ('same') padding, got {self.conv_kernel_size}",
        )
        _require(0.0 <= self.dropout < 1.0, "model.encoder.dropout", "must be in [0, 1)")
        _require(
            self.subsampling_factor in (4, 8),
            "model.encoder.subsampling_factor",
            f"must be 4 or 8, got {self.subsampling_factor}",
        )
        channels = self.subsampling_channels
        _require(
            channels is None or channels > 0,
            "model.encoder.subsampling_channels",
            "must be positive or null",
        )

    @property
    def channels(self) -> int:
        """Channels of the Conv2d subsampling layers."""
        return self.subsampling_channels or self.d_model


@dataclass(frozen=True)
class ModelConfig:
    """A whole recogniser: encoder plus CTC and/or RNN-T heads.

    ``ctc_weight`` chooses the heads and the loss: 0 builds only the transducer
    (the paper), 1 only a CTC head, anything between builds both and trains on
    ``ctc_weight * ctc + (1 - ctc_weight) * rnnt`` (decoding then uses the
    transducer). Token 0 is the blank of both heads.

    ``rnnt_prune_range`` S > 0 trains the transducer with the pruned RNN-T loss
    (Kuang et al., 2022): the joint network runs on S label positions per frame,
    chosen by a "simple" joint whose loss is added with ``rnnt_simple_weight``.
    0 (the default) uses the full loss. Decoding is the same either way.
    """

    name: str = "custom"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    vocab_size: int = 1000
    ctc_weight: float = 0.0
    pred_embed_dim: int = 256
    pred_hidden_dim: int = 320
    joint_dim: int = 320
    rnnt_prune_range: int = 0
    rnnt_simple_weight: float = 0.5

    def __post_init__(self) -> None:
        _require(self.vocab_size >= 2, "model.vocab_size", "needs at least blank + one token")
        _require(
            0.0 <= self.ctc_weight <= 1.0,
            "model.ctc_weight",
            f"must be in [0, 1], got {self.ctc_weight}",
        )
        for name in ("pred_embed_dim", "pred_hidden_dim", "joint_dim"):
            _require(getattr(self, name) > 0, f"model.{name}", "must be positive")
        _require(
            self.rnnt_prune_range == 0 or (self.rnnt_prune_range >= 2 and self.has_transducer),
            "model.rnnt_prune_range",
            f"must be 0 (full loss) or >= 2 with a transducer (ctc_weight < 1), "
            f"got {self.rnnt_prune_range}",
        )
        _require(self.rnnt_simple_weight >= 0.0, "model.rnnt_simple_weight", "must be >= 0")
        _require(
            self.encoder.n_mels == self.features.n_mels,
            "model.encoder.n_mels",
            f"{self.encoder.n_mels} differs from model.features.n_mels={self.features.n_mels}",
        )

    @property
    def min_samples(self) -> int:
        """Shortest waveform that gives one encoder frame: 2 * factor - 1 feature frames
        (85 ms of 16 kHz audio at 4x, 165 ms at 8x)."""
        frames = 2 * self.encoder.subsampling_factor - 1
        return self.features.win_length + (frames - 1) * self.features.hop_length

    @property
    def encoder_frame_seconds(self) -> float:
        hop_seconds = self.features.hop_length / self.features.sample_rate
        return self.encoder.subsampling_factor * hop_seconds

    @property
    def has_ctc(self) -> bool:
        return self.ctc_weight > 0.0

    @property
    def has_transducer(self) -> bool:
        return self.ctc_weight < 1.0

    def without_training_settings(self) -> ModelConfig:
        """This config with its ``name`` (a label) and the settings that only shape training
        at their defaults: the encoder's dropout, SpecAugment and the pruned loss's
        ``rnnt_simple_weight``. Two models whose configs agree here compute the same
        function of the same weights."""
        defaults = ModelConfig()
        return dataclasses.replace(
            self,
            name=defaults.name,
            encoder=dataclasses.replace(self.encoder, dropout=defaults.encoder.dropout),
            spec_augment=defaults.spec_augment,
            rnnt_simple_weight=defaults.rnnt_simple_weight,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a (possibly partial) nested dict, rejecting unknown keys."""
        data = dict(data)
        sections = {"encoder": EncoderConfig, "features": FeatureConfig,
                    "spec_augment": SpecAugmentConfig}
        for key, section_cls in sections.items():
            if key in data:
                data[key] = build_section(section_cls, data[key], f"model.{key}")
        return build_section(cls, data, "model")


def build_section(cls: type, values: Any, where: str) -> Any:
    if isinstance(values, cls):
        return values
    if values is None:
        raise ConfigError(f"{where}: null; give its settings, or leave it out for the defaults")
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        known_list = ", ".join(sorted(known))
        raise ConfigError(f"{where}.{unknown[0]}: unknown field (known: {known_list})")
    hints = typing.get_type_hints(cls)
    return cls(**{name: checked_scalar(value, hints[name], f"{where}.{name}")
                  for name, value in values.items()})


def float_tuple(value: object, name: str) -> tuple[float, ...]:
    """A list (or tuple) of numbers from a config -> a tuple of floats; ConfigError else."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name}: expected a list of numbers, got {value!r}")
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a list of numbers, got {value!r}") from None


def checked_scalar(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against a field typed ``int``, ``float``, ``str`` or ``bool`` (or
    one of those or None); values of other fields pass unchanged. A float field takes an
    integer, and a string such as "1e-4", which YAML 1.1 does not read as a number."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    kinds = [t for t in allowed if t is not type(None)]
    if len(kinds) != 1 or kinds[0] not in (int, float, str, bool):
        return value
    kind = kinds[0]
    if kind is float and not isinstance(value, bool):
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    raise ConfigError(f"{where}: expected {names[kind]}, got {value!r}")


# The paper's Table 1. Decoder widths are the paper's (320 / 640 LSTM units);
# the prediction-network embedding (256) and joint width (= LSTM width) are not
# given in the paper and are chosen so that all three totals, with a 1k
# vocabulary, land within 3% of 10.3M / 30.7M / 118.8M.
NAMED_CONFIGS: dict[str, ModelConfig] = {
    "conformer-s": ModelConfig(
        name="conformer-s",
        encoder=EncoderConfig(d_model=144, n_layers=16, n_heads=4),
        pred_hidden_dim=320,
        joint_dim=320,
    ),
    "conformer-m": ModelConfig(
        name="conformer-m",
        encoder=EncoderConfig(d_model=256, n_layers=16, n_heads=4),
        pred_hidden_dim=640,
        joint_dim=640,
    ),
    "conformer-l": ModelConfig(
        name="conformer-l",
        encoder=EncoderConfig(d_model=512, n_layers=17, n_heads=8),
        pred_hidden_dim=640,
        joint_dim=640,
    ),
}

PAPER_PARAMS: dict[str, float] = {"conformer-s": 10.3e6, "conformer-m": 30.7e6,
                                  "conformer-l": 118.8e6}


def get_config(name: str) -> ModelConfig:
    """Return a named configuration (``conformer-s``, ``conformer-m``, ``conformer-l``)."""
    try:
        return NAMED_CONFIGS[name]
    except KeyError:
        raise ConfigError(
            f"model name: unknown model {name!r} (known: {', '.join(NAMED_CONFIGS)})"
        ) from None
