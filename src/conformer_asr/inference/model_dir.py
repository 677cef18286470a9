"""A trained model on disk: one folder with config, weights and tokenizer.

    MODEL_DIR/config.json        {"model": ModelConfig fields, "info": free-form metadata}
    MODEL_DIR/model.safetensors  weights
    MODEL_DIR/tokenizer.model    SentencePiece model (blank = id 0)

Files are written atomically (temporary name, then rename), the config last,
so a folder with a config.json is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from ..models import ASRModel, ModelConfig
from ..models.config import ConfigError
from ..text.tokenizer import MODEL_FILE, Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "pretrained" / "default"


class ModelDirError(Exception):
    """A model folder is missing, incomplete or does not match its config."""


def save_model_dir(
    model: ASRModel, tokenizer: Tokenizer, directory: str | Path, info: dict[str, Any] | None = None
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer.vocab_size != model.cfg.vocab_size:
        raise ModelDirError(
            f"tokenizer has {tokenizer.vocab_size} pieces but the model {model.cfg.vocab_size}"
        )
    tokenizer.save(directory)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(weights, str(tmp))
    os.chmod(tmp, 0o644)  # safetensors creates it owner-only; a model folder is meant to be shared
    os.replace(tmp, directory / WEIGHTS_FILE)
    config = {"model": model.cfg.to_dict(), "info": info or {}}
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, directory / CONFIG_FILE)
    return directory


def read_config(directory: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelDirError(f"{directory}: not a model folder (no {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text())
        return ModelConfig.from_dict(data["model"]), data.get("info", {})
    except (json.JSONDecodeError, KeyError, ConfigError) as error:
        raise ModelDirError(f"{path}: invalid model config ({error})") from None


def load_model_dir(directory: str | Path) -> tuple[ASRModel, Tokenizer, dict[str, Any]]:
    """-> (model in eval mode on CPU, tokenizer, info). Raises ModelDirError."""
    directory = Path(directory)
    cfg, info = read_config(directory)
    for name in (WEIGHTS_FILE, MODEL_FILE):
        if not (directory / name).is_file():
            raise ModelDirError(f"{directory}: incomplete model folder (no {name})")
    tokenizer = Tokenizer.load(directory)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ModelDirError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} pieces, config says "
            f"{cfg.vocab_size}"
        )
    model = ASRModel(cfg)
    try:
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except (RuntimeError, OSError) as error:
        first = str(error).strip().splitlines()[0]
        raise ModelDirError(f"{directory}: weights do not match config.json ({first})") from None
    return model.eval(), tokenizer, info


def resolve_model_dir(path_or_name: str | Path | None) -> Path:
    """None or "default" -> the bundled model; anything else must be a model folder."""
    if path_or_name is None or str(path_or_name) == "default":
        if not (BUNDLED_DIR / CONFIG_FILE).is_file():
            raise ModelDirError(f"{BUNDLED_DIR}: the bundled model is missing from this install")
        return BUNDLED_DIR
    path = Path(path_or_name)
    if not path.exists():
        raise ModelDirError(f"{path}: no such model folder")
    return path

