"""Training configuration: one YAML file, typed sections, ``--set a.b=value`` overrides.

    model:   {base: conformer-s, ...ModelConfig overrides...}
    data:    {train: [a.jsonl, ...], dev: b.jsonl, tokenizer: {...}, augment: {...}, ...}
    optim:   {peak_lr: null, warmup_steps: 10000, ...}
    trainer: {max_steps: ..., val_every_steps: ..., ...}
    out_dir: exp/name
    seed: 0
    init_from: exp/other/model     # optional: start from a trained model folder ("default":
                                   # the bundled model); it brings the architecture and
                                   # tokenizer, and ``model`` may change e.g. dropout or the
                                   # heads (new heads start untrained) but not the encoder

Relative paths in ``data`` are resolved against the YAML file's folder (given with
``--set``, against the current directory), ``out_dir`` and ``init_from`` against the
current directory. A run that has a checkpoint resumes from it; an
``init_from`` run then takes its architecture and tokenizer from its own folder, so resuming
needs neither the source folder nor the same bundled model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.augment import AugmentConfig
from ..files import read_text
from ..inference.model_dir import (
    BUNDLED_DIR,
    ModelDirError,
    is_checkpoint,
    read_config,
    resolve_model_dir,
)
from ..models.config import (
    ConfigError,
    ModelConfig,
    build_section,
    checked_scalar,
    float_tuple,
    get_config,
)
from ..text.tokenizer import MODEL_FILE


@dataclass(frozen=True)
class TokenizerConfig:
    """Use an existing SentencePiece model (``path``) or train one on the training text."""

    path: str | None = None
    vocab_size: int = 1000

    def __post_init__(self) -> None:
        if self.vocab_size < 3:
            raise ConfigError("data.tokenizer.vocab_size: must be >= 3")


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...] = ()
    dev: str | None = None
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    augment: AugmentConfig | None = None
    max_duration: float = 200.0  # seconds of audio per batch (per GPU)
    num_buckets: int = 20  # at most; fewer where each could not fill a batch per process
    num_workers: int = 2
    max_utterance_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not self.train:
            raise ConfigError("data.train: give at least one training manifest")
        if self.max_duration <= 0:
            raise ConfigError("data.max_duration: must be positive")
        if self.num_workers < 0:
            raise ConfigError("data.num_workers: must be >= 0")


@dataclass(frozen=True)
class OptimConfig:
    """Adam with the Noam schedule (the paper: betas 0.9/0.98, eps 1e-9, 10k warm-up,
    peak 0.05 / sqrt(d_model), L2 1e-6), and the paper's variational noise on the
    transducer's decoder weights: standard deviation ``decoder_weight_noise`` from step
    ``weight_noise_start_step`` on (the paper gives neither value; 0 turns it off)."""

    peak_lr: float | None = None  # None: 0.05 / sqrt(d_model)
    warmup_steps: int = 10000
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 1e-6
    grad_clip: float = 5.0
    decoder_weight_noise: float = 0.0
    weight_noise_start_step: int = 0

    def __post_init__(self) -> None:
        if self.warmup_steps < 1:
            raise ConfigError("optim.warmup_steps: must be >= 1")
        if self.peak_lr is not None and not 0 < self.peak_lr < math.inf:
            raise ConfigError(f"optim.peak_lr: must be a positive number, got {self.peak_lr}")
        betas = float_tuple(self.betas, "optim.betas")  # YAML gives a list
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {betas}")
        object.__setattr__(self, "betas", betas)
        if self.grad_clip < 0:
            raise ConfigError("optim.grad_clip: must be >= 0 (0 disables clipping)")
        if self.decoder_weight_noise < 0 or self.weight_noise_start_step < 0:
            raise ConfigError("optim.decoder_weight_noise and optim.weight_noise_start_step: "
                              "must be >= 0")

    def peak(self, d_model: int) -> float:
        return self.peak_lr if self.peak_lr is not None else 0.05 / math.sqrt(d_model)

    def weight_noise(self, step: int) -> float:
        """Standard deviation of the decoder's weight noise at optimizer step ``step``."""
        return self.decoder_weight_noise if step >= self.weight_noise_start_step else 0.0


# what Lightning takes as a string: "auto", a count ("2", "-1": all), GPU indices ("0,1")
_DEVICES = re.compile(r"auto|-?\d+|\d+(,\s*\d+)*,?")


@dataclass(frozen=True)
class TrainerConfig:
    max_steps: int = 100000
    val_every_steps: int = 1000
    checkpoint_every_steps: int = 1000
    average_last: int = 5  # checkpoints averaged into the final model
    precision: int | str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU; or Lightning's
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    log_every_steps: int = 20

    def __post_init__(self) -> None:
        for name in ("max_steps", "val_every_steps", "checkpoint_every_steps", "average_last",
                     "num_nodes", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name}: must be >= 1")
        # checked here, not left to Lightning: on a GPU machine its error for "abc" was
        # "invalid literal for int() with base 10: 'abc'", which names no setting
        if isinstance(self.devices, str) and not _DEVICES.fullmatch(self.devices):
            raise ConfigError(f"trainer.devices: {self.devices!r} is neither a number of "
                              "devices, nor GPU indices such as '0,1', nor 'auto'")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    out_dir: str = "exp/run"
    seed: int = 0
    init_from: str | None = None  # a model folder whose weights start the run

    def __post_init__(self) -> None:
        if self.optim.decoder_weight_noise > 0 and not self.model.has_transducer:
            raise ConfigError("optim.decoder_weight_noise: the model has no transducer decoder "
                              "(model.ctc_weight is 1)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# data paths given with --set are typed relative to where the command runs, not to the YAML
_DATA_PATHS = ("data.train", "data.dev", "data.tokenizer.path")


def _from_here(key: str, value: Any) -> Any:
    """A relative path given to one of ``_DATA_PATHS`` made absolute (from the current
    folder); any other value as it is."""
    if key not in _DATA_PATHS:
        return value
    if isinstance(value, str) and value:
        return os.path.abspath(value)
    if isinstance(value, list):
        return [_from_here(key, v) for v in value]
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["trainer.max_steps=10", "data.augment=null"]`` -> updated copy of ``raw``."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part} is not a section")
            node = child
        node[leaf] = _from_here(key, yaml.safe_load(value))
    return raw


def _model_from(raw: dict[str, Any], init_model: ModelConfig | None) -> ModelConfig:
    """The ``model`` section over its ``base`` size, or over the ``init_from`` folder's."""
    raw = dict(raw)
    base = raw.pop("base", None)
    if init_model is not None:
        if base is not None:
            raise ConfigError("model.base: init_from already sets the architecture")
        merged = init_model.to_dict()
    elif base is None:
        return ModelConfig.from_dict(raw)
    else:
        merged = get_config(base).to_dict()
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    model = ModelConfig.from_dict(merged)
    if init_model is not None:  # its weights: found here, not as a page of missing keys
        for name, value in dataclasses.asdict(model.encoder).items():
            theirs = getattr(init_model.encoder, name)
            if name != "dropout" and value != theirs:
                raise ConfigError(f"model.encoder.{name}: {value!r}, but init_from's encoder "
                                  f"has {theirs!r}; its weights keep their shapes (leave "
                                  f"model.encoder.{name} out)")
    return model


def last_checkpoint(out_dir: str | Path) -> Path:
    """The checkpoint that a run in ``out_dir`` resumes from when it exists."""
    return Path(out_dir) / "checkpoints" / "last.ckpt"


def run_config(out_dir: str | Path) -> Path:
    """Where a run writes its resolved configuration (the architecture a resume reads)."""
    return Path(out_dir) / "config.yaml"


def recorded_config(out_dir: str | Path) -> dict[str, Any] | None:
    """The configuration a run in ``out_dir`` recorded when it started (``run_config``), or
    None where there is none to read: missing, unreadable, or not a YAML mapping."""
    try:
        recorded = yaml.safe_load(read_text(run_config(out_dir)))
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8 text
        return None
    return recorded if isinstance(recorded, dict) else None


def recorded_model(out_dir: str | Path) -> tuple[dict[str, Any], ModelConfig]:
    """(the configuration a run in ``out_dir`` recorded, the model architecture in it); a
    ConfigError naming the file where either cannot be read."""
    recorded = recorded_config(out_dir)
    try:
        if recorded is None:
            raise ConfigError("unreadable, or not YAML settings")
        return recorded, ModelConfig.from_dict(recorded["model"])
    except (KeyError, TypeError, AttributeError, ConfigError) as error:
        raise ConfigError(f"{run_config(out_dir)}: not a run's recorded settings "
                          f"({error})") from None


def run_tokenizer(out_dir: str | Path) -> Path:
    """Where a run keeps the tokenizer it trained or was given by ``init_from``."""
    return Path(out_dir) / "tokenizer" / MODEL_FILE


def _init_source(value: Any, out_dir: Path) -> tuple[str, ModelConfig, Path] | None:
    """``init_from`` -> (the model folder, its model config, its tokenizer file), or None.

    A run that has a checkpoint reads the last two from its own folder (``config.yaml`` and
    the tokenizer copy it saved when it started).
    """
    if value is None:
        return None
    recorded_files = (last_checkpoint(out_dir), run_tokenizer(out_dir), run_config(out_dir))
    if all(path.is_file() for path in recorded_files):
        _, model = recorded_model(out_dir)
        # named as when the run started (a resume checks it is the same), folder or not
        folder = BUNDLED_DIR if str(value) == "default" else Path(str(value))
        return str(folder.resolve()), model, run_tokenizer(out_dir)
    if is_checkpoint(value):
        raise ConfigError(f"init_from: {value}: a training checkpoint; give a model folder "
                          "(its run's model/, say)")
    try:
        folder = resolve_model_dir(str(value)).resolve()
        return str(folder), read_config(folder).model, folder / MODEL_FILE
    except ModelDirError as error:
        raise ConfigError(f"init_from: {error}") from None


def _resolve(value: Any, name: str, root: Path) -> str:
    """The path ``value`` that the config's ``name`` gives, made absolute against ``root``."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: expected a path, got {value!r}")
    p = Path(value)
    return str(p if p.is_absolute() else (root / p).resolve())


def _mapping(value: Any, name: str) -> dict[str, Any]:
    """A copy of the config's section ``name``: empty if absent or null."""
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a mapping, got {value!r}")
    return dict(value or {})


def parse_config(raw: dict[str, Any], root: Path = Path(".")) -> TrainConfig:
    """Build and validate a TrainConfig from a nested dict (paths relative to ``root``)."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a mapping at the top level")
    known = {"model", "data", "optim", "trainer", "out_dir", "seed", "init_from"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known: {', '.join(sorted(known))})")
    out_dir = Path(_resolve(raw.get("out_dir", "exp/run"), "out_dir", Path(".")))
    source = _init_source(raw.get("init_from"), out_dir)
    init_from, init_model, init_tokenizer = source if source is not None else (None, None, None)
    if "data" not in raw or ("model" not in raw and init_from is None):
        raise ConfigError(f"{'data' if 'data' not in raw else 'model'}: section is required")
    data = _mapping(raw.get("data"), "data")
    train = data.get("train") or []
    train = [train] if isinstance(train, str) else train
    if not isinstance(train, list):
        raise ConfigError(f"data.train: expected a manifest path or a list of them, got {train!r}")
    data["train"] = tuple(_resolve(p, "data.train", root) for p in train)
    if data.get("dev"):
        data["dev"] = _resolve(data["dev"], "data.dev", root)
    tokenizer = _mapping(data.get("tokenizer"), "data.tokenizer")
    if init_from is not None:
        if tokenizer:
            raise ConfigError("data.tokenizer: init_from brings its model's tokenizer; "
                              "remove this section")
        tokenizer["path"] = str(init_tokenizer)
    elif tokenizer.get("path"):
        tokenizer["path"] = _resolve(tokenizer["path"], "data.tokenizer.path", root)
    data["tokenizer"] = build_section(TokenizerConfig, tokenizer, "data.tokenizer")
    if data.get("augment") is not None:
        data["augment"] = build_section(AugmentConfig, data["augment"], "data.augment")
    return TrainConfig(
        model=_model_from(_mapping(raw.get("model"), "model"), init_model),
        data=build_section(DataConfig, data, "data"),
        optim=build_section(OptimConfig, raw.get("optim") or {}, "optim"),
        trainer=build_section(TrainerConfig, raw.get("trainer") or {}, "trainer"),
        out_dir=str(out_dir),
        seed=checked_scalar(raw.get("seed", 0), int, "seed"),
        init_from=init_from,
    )


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: " + ("a folder, not a config file" if path.is_dir()
                                         else "config file not found"))
    try:
        raw = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where} ({reason})") from None
    return parse_config(apply_overrides(raw, overrides or []), path.parent)
