"""A trained language model on disk, laid out like a model folder:

    LM_DIR/config.json        {"lm": LMConfig fields, "info": training metadata}
    LM_DIR/model.safetensors  weights
    LM_DIR/tokenizer.model    the recogniser's SentencePiece model it was trained with

Files are written atomically (temporary name, then rename), the config last, so
a folder with a config.json is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from ..models.config import ConfigError
from ..models.lm import LMConfig, WordPieceLM
from ..text.tokenizer import MODEL_FILE, Tokenizer
from .model_dir import CONFIG_FILE, WEIGHTS_FILE, ModelDirError


def save_lm_dir(
    lm: WordPieceLM, tokenizer: Tokenizer, directory: str | Path,
    info: dict[str, Any] | None = None,
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer.vocab_size != lm.cfg.vocab_size:
        raise ModelDirError(
            f"tokenizer has {tokenizer.vocab_size} pieces but the LM {lm.cfg.vocab_size}")
    tokenizer.save(directory)
    weights = {k: v.detach().cpu().contiguous() for k, v in lm.state_dict().items()}
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(weights, str(tmp))
    os.replace(tmp, directory / WEIGHTS_FILE)
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps({"lm": lm.cfg.to_dict(), "info": info or {}}, indent=2) + "\n")
    os.replace(tmp, directory / CONFIG_FILE)
    return directory


def load_lm_dir(directory: str | Path) -> tuple[WordPieceLM, Tokenizer, dict[str, Any]]:
    """-> (LM in eval mode on CPU, tokenizer, info). Raises ModelDirError."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelDirError(f"{directory}: not an LM folder (no {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text())
        cfg, info = LMConfig.from_dict(data["lm"]), data.get("info", {})
    except (json.JSONDecodeError, KeyError, ConfigError) as error:
        raise ModelDirError(f"{path}: invalid LM config ({error})") from None
    for name in (WEIGHTS_FILE, MODEL_FILE):
        if not (directory / name).is_file():
            raise ModelDirError(f"{directory}: incomplete LM folder (no {name})")
    tokenizer = Tokenizer.load(directory)
    lm = WordPieceLM(cfg)
    try:
        lm.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except (RuntimeError, OSError) as error:
        first = str(error).strip().splitlines()[0]
        raise ModelDirError(f"{directory}: weights do not match config.json ({first})") from None
    return lm.eval(), tokenizer, info


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer.model file, or the tokenizer of a model or LM folder."""
    path = Path(path)
    return Tokenizer.load(path) if path.is_dir() else Tokenizer(path)


def load_lm_for(directory: str | Path, tokenizer: Tokenizer) -> WordPieceLM:
    """Load an LM folder for fusion with a model whose tokenizer is ``tokenizer``; raises
    ModelDirError if the LM was trained with another one."""
    lm, lm_tokenizer, _ = load_lm_dir(directory)
    if lm_tokenizer.sp.serialized_model_proto() != tokenizer.sp.serialized_model_proto():
        raise ModelDirError(f"{directory}: the LM was trained with another tokenizer than "
                            "the model's")
    return lm
