"""A trained language model on disk, laid out like a model folder:

    LM_DIR/config.json        {"lm": LMConfig fields, "info": training metadata}
    LM_DIR/model.safetensors  weights
    LM_DIR/tokenizer.model    the recogniser's SentencePiece model it was trained with
    LM_DIR/lexicon.txt        optional: known words, one per line, for the OOV penalty
    LM_DIR/train_state.pt     while train-lm runs (and after): what it resumes from

Files are written atomically (temporary name, then rename), the config last, so
a folder with a config.json is complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..decoding.lexicon import Lexicon
from ..files import read_text, write_atomically
from ..models.config import ConfigError
from ..models.int8_rows import int8_rows_lm
from ..models.lm import LMConfig, WordPieceLM
from ..text.tokenizer import MODEL_FILE, Tokenizer
from .model_dir import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelDirError,
    load_weights,
    resolve_model_dir,
    training_run_error,
    write_folder,
)

LEXICON_FILE = "lexicon.txt"
STATE_FILE = "train_state.pt"


def save_lm_dir(
    lm: WordPieceLM, tokenizer: Tokenizer, directory: str | Path,
    info: dict[str, Any] | None = None, compact: bool = False, words: Iterable[str] = (),
) -> Path:
    """``compact`` stores each weight matrix in int8 with a scale per row and the other
    weights in float16 (about a quarter of the size); they load back as float32 holding
    float16 values. ``words``, if any, become the folder's lexicon."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer.vocab_size != lm.cfg.vocab_size:
        raise ModelDirError(
            f"tokenizer has {tokenizer.vocab_size} pieces but the LM {lm.cfg.vocab_size}")
    lexicon = sorted(set(words))
    if lexicon:
        write_atomically(directory / LEXICON_FILE, "".join(word + "\n" for word in lexicon))
    return write_folder(directory, tokenizer, lm.state_dict(),
                        {"lm": lm.cfg.to_dict(), "info": info or {}}, half=compact,
                        int8_matrices=compact)


def load_lm_dir(directory: str | Path) -> tuple[WordPieceLM, Tokenizer, dict[str, Any]]:
    """-> (LM in eval mode on CPU, tokenizer, info). Raises ModelDirError."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.exists():
        raise ModelDirError(f"{directory}: no such LM folder")
    if not path.is_file():
        if (directory / STATE_FILE).is_file():
            raise ModelDirError(f"{directory}: an LM still being trained or stopped (no "
                                f"{CONFIG_FILE} yet); the same train-lm command finishes it")
        raise ModelDirError(f"{directory}: not an LM folder (no {CONFIG_FILE})")
    try:
        data = json.loads(read_text(path))
        if isinstance(data, dict) and "model" in data and "lm" not in data:
            raise ModelDirError(f"{directory}: a model folder, not an LM folder (train-lm "
                                "writes those)")
        cfg, info = LMConfig.from_dict(data["lm"]), data.get("info", {})
    except (json.JSONDecodeError, KeyError, ConfigError) as error:
        raise ModelDirError(f"{path}: invalid LM config ({error})") from None
    for name in (WEIGHTS_FILE, MODEL_FILE):
        if not (directory / name).is_file():
            raise ModelDirError(f"{directory}: incomplete LM folder (no {name})")
    tokenizer = Tokenizer.load(directory)
    return load_weights(WordPieceLM(cfg), directory), tokenizer, info


def read_lexicon_words(directory: str | Path) -> list[str]:
    """The words of an LM folder's lexicon; [] if it has none."""
    path = Path(directory) / LEXICON_FILE
    return read_text(path).split() if path.is_file() else []


def load_lexicon_for(directory: str | Path, tokenizer: Tokenizer) -> Lexicon | None:
    """An LM folder's lexicon, spelled with ``tokenizer``'s pieces; None if it has none."""
    words = read_lexicon_words(directory)
    return Lexicon(words, tokenizer.vocabulary()) if words else None


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer.model file, or the tokenizer of a model or LM folder ("default": the
    bundled model's)."""
    path = resolve_model_dir(path) if str(path) == "default" else Path(path)
    if path.is_dir() and not (path / MODEL_FILE).is_file() and (path / "model").is_dir():
        raise training_run_error(path)
    return Tokenizer.load(path) if path.is_dir() else Tokenizer(path)


def load_lm_for(directory: str | Path, tokenizer: Tokenizer) -> WordPieceLM:
    """Load an LM folder to decode a model whose tokenizer is ``tokenizer``; raises
    ModelDirError if the LM was trained with another one."""
    lm, lm_tokenizer, _ = load_lm_dir(directory)
    require_same_tokenizer(lm_tokenizer, tokenizer, directory)
    return lm


def lm_for_decoding(lm: WordPieceLM, device: str | torch.device) -> WordPieceLM:
    """``lm`` as searches and rescoring run it on ``device``: on the CPU, a copy whose LSTM
    and output layer multiply in int8 with a scale per row (``models.int8_rows``), about
    twice as fast over a beam search's rows as float32 and the same whatever else is in the
    batch; elsewhere ``lm`` itself, moved there."""
    return int8_rows_lm(lm) if torch.device(device).type == "cpu" else lm.to(device)


def require_direction(lm: WordPieceLM, backward: bool, directory: str | Path) -> None:
    """ModelDirError unless ``lm`` (from ``directory``) reads sentences the way its flag
    says: ``--backward-lm`` last piece first, ``--lm`` first piece first."""
    if backward and not lm.cfg.backward:
        raise ModelDirError(f"--backward-lm {directory}: a forward LM (train-lm --backward "
                            "makes one)")
    if lm.cfg.backward and not backward:
        raise ModelDirError(f"--lm {directory}: a backward LM; give it as --backward-lm")


def require_same_tokenizer(lm_tokenizer: Tokenizer, tokenizer: Tokenizer,
                           directory: str | Path) -> None:
    if not lm_tokenizer.is_same_as(tokenizer):
        raise ModelDirError(f"{directory}: the LM was trained with another tokenizer than "
                            "the model's")
