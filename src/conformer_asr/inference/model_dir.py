"""A trained model on disk: one folder with config, weights and tokenizer.

    MODEL_DIR/config.json        {"model": ModelConfig fields, "info": free-form metadata,
                                  optional "decoding": DecodingOptions fields to use with lm/}
    MODEL_DIR/model.safetensors  weights
    MODEL_DIR/tokenizer.model    SentencePiece model (blank = id 0)
    MODEL_DIR/lm/                optional: an LM folder fused by default (``conformer-asr pack``)
    MODEL_DIR/backward_lm/       optional: a backward LM folder that rescores with lm/
    MODEL_DIR/ngram.txt.xz       optional: sentences, one per line (xz), that a word n-gram
                                 LM counts to rescore with lm/ (``decoding.ngram``)

Files are written atomically (temporary name, then rename), the config last,
so a folder with a config.json is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import lzma
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import safetensors.torch
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..decoding.ngram import WordNgramLM
from ..decoding.search import DecodingOptions
from ..files import naming, read_text, write_atomically
from ..models import ASRModel, ModelConfig
from ..models.config import ConfigError
from ..models.int8_rows import int8_rows
from ..text.tokenizer import MODEL_FILE, Tokenizer

M = TypeVar("M", bound=torch.nn.Module)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ROW_SCALE = ".row_scale"  # name suffix: the scales of an int8-stored matrix's rows
LM_SUBDIR = "lm"
BACKWARD_LM_SUBDIR = "backward_lm"
NGRAM_FILE = "ngram.txt.xz"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "pretrained" / "default"


class ModelDirError(Exception):
    """A model folder is missing, incomplete or does not match its config."""


def save_model_dir(
    model: ASRModel, tokenizer: Tokenizer, directory: str | Path,
    info: dict[str, Any] | None = None, decoding: DecodingOptions | None = None,
    half: bool = False,
) -> Path:
    """``half`` stores the float weights in float16 (half the size); they load back as
    float32."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer.vocab_size != model.cfg.vocab_size:
        raise ModelDirError(
            f"tokenizer has {tokenizer.vocab_size} pieces but the model {model.cfg.vocab_size}"
        )
    config: dict[str, Any] = {"model": model.cfg.to_dict(), "info": info or {}}
    if decoding is not None:
        config["decoding"] = dataclasses.asdict(decoding)
    return write_folder(directory, tokenizer, model.state_dict(), config, half)


def require_new_folder(out: str | Path) -> Path:
    """``out``, if it is absent or an empty folder, for a command that writes a new folder
    (``pack``, ``average``) to check before its work; else ModelDirError."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelDirError(f"--out {out}: a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ModelDirError(f"{out}: already exists and is not empty; give a new folder")
    return out


@contextlib.contextmanager
def new_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` to fill, renamed to ``out`` when the block ends, so
    that ``out`` is either complete or absent. An OSError (a full disk) removes it and is
    raised again naming the file as it would have been under ``out``."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        tmp.replace(out)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        name = str(error.filename or tmp).replace(str(tmp), str(out), 1)
        raise naming(error, name) from None


def write_folder(
    directory: Path, tokenizer: Tokenizer, weights: dict[str, torch.Tensor],
    config: dict[str, Any], half: bool = False, int8_matrices: bool = False,
) -> Path:
    """Tokenizer, weights (the float ones in float16 with ``half``; with ``int8_matrices``,
    each float matrix as ``int8_rows``), then config.json, each atomically (model and LM
    folders)."""
    tokenizer.save(directory)
    stored: dict[str, torch.Tensor] = {}
    for name, value in weights.items():
        value = value.detach().cpu().contiguous()  # the casts below keep the layout
        if int8_matrices and value.is_floating_point() and value.dim() == 2:
            stored[name], stored[name + ROW_SCALE] = int8_rows(value)
        else:
            stored[name] = value.half() if half and value.is_floating_point() else value
    # serialised in memory and written by Python: safetensors' own writer raises its own
    # error for a full disk, naming no file
    write_atomically(directory / WEIGHTS_FILE, safetensors.torch.save(stored))
    write_atomically(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return directory


@dataclasses.dataclass(frozen=True)
class FolderConfig:
    """A model folder's config.json, parsed."""

    model: ModelConfig
    info: dict[str, Any]  # free-form metadata (training steps, corpus, ...)
    decoding: DecodingOptions | None  # recommended with the folder's own LM, if it has one


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a training checkpoint, which reads as a model folder does."""
    return Path(path).suffix == ".ckpt" and Path(path).is_file()


def training_run_error(directory: str | Path) -> ModelDirError:
    """The error for a training run's folder given where its model folder goes."""
    return ModelDirError(f"{directory}: a training run's folder; its model is "
                         f"{Path(directory) / 'model'}")


def read_config(directory: str | Path) -> FolderConfig:
    """The folder's config.json, or a training checkpoint's run's settings."""
    if is_checkpoint(directory):
        from ..training.checkpoints import read_checkpoint_config  # training imports this

        return read_checkpoint_config(Path(directory))
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        if (Path(directory) / "model" / CONFIG_FILE).is_file():
            raise training_run_error(directory)
        raise ModelDirError(f"{directory}: not a model folder (no {CONFIG_FILE})")
    try:
        data = json.loads(read_text(path))
        if isinstance(data, dict) and "lm" in data and "model" not in data:
            raise ModelDirError(f"{directory}: an LM folder, not a model folder (give it as "
                                "--lm)")
        model = ModelConfig.from_dict(data["model"])
    except (json.JSONDecodeError, KeyError, ConfigError) as error:
        raise ModelDirError(f"{path}: invalid model config ({error})") from None
    raw_decoding = data.get("decoding")
    try:
        decoding = DecodingOptions(**raw_decoding) if raw_decoding is not None else None
    except (TypeError, ValueError) as error:
        raise ModelDirError(f"{path}: invalid decoding options ({error})") from None
    return FolderConfig(model, data.get("info", {}), decoding)


def bundled_lm_dir(directory: str | Path, subdir: str = LM_SUBDIR) -> Path | None:
    """The folder's own LM (``lm/``; ``subdir=BACKWARD_LM_SUBDIR``: its backward LM), if it
    has one."""
    path = Path(directory) / subdir
    return path if path.is_dir() else None


def bundled_ngram(directory: str | Path) -> Path | None:
    """The folder's n-gram text (``ngram.txt.xz``), if it has one."""
    path = Path(directory) / NGRAM_FILE
    return path if path.is_file() else None


def load_ngram(path: str | Path, order: int = 3) -> WordNgramLM:
    """A word n-gram LM of that order of a text file's lines (``.gz`` and ``.xz`` too);
    ModelDirError naming the file if it is missing, unreadable, holds no words or more than
    the order allows. Counting the bundled text takes about half a second, so the LMs of the
    last few files are kept (they are only read) and given again while a file is unchanged."""
    try:
        stat = Path(path).stat()
    except OSError as error:
        raise ModelDirError(f"{path}: cannot read the n-gram text ({error})") from None
    return _counted_ngram(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size, order)


@functools.lru_cache(maxsize=4)
def _counted_ngram(path: str, mtime_ns: int, size: int, order: int) -> WordNgramLM:
    """``load_ngram`` of ``path`` as it was at that modification time and size."""
    try:
        sentences = [line for line in read_text(path).splitlines() if line.strip()]
    except (OSError, ValueError) as error:
        raise ModelDirError(f"{path}: cannot read the n-gram text ({error})") from None
    if not sentences:
        raise ModelDirError(f"{path}: an n-gram text without words")
    try:
        return WordNgramLM(sentences, order)
    except ValueError as error:
        raise ModelDirError(f"{path}: {error}") from None


def write_ngram(path: str | Path, sentences: Iterable[str]) -> None:
    """Write ``sentences`` one per line, xz-compressed, atomically (``NGRAM_FILE``)."""
    text = "".join(sentence + "\n" for sentence in sentences)
    write_atomically(path, lzma.compress(text.encode(), preset=9 | lzma.PRESET_EXTREME))


def load_model_dir(directory: str | Path) -> tuple[ASRModel, Tokenizer, FolderConfig]:
    """-> (model in eval mode on CPU, tokenizer, parsed config.json). Raises ModelDirError.
    A training checkpoint (``RUN/checkpoints/*.ckpt``) reads as a folder of its weights."""
    directory = Path(directory)
    if is_checkpoint(directory):
        from ..training.checkpoints import read_checkpoint  # training imports this module

        return read_checkpoint(directory)
    config = read_config(directory)
    for name in (WEIGHTS_FILE, MODEL_FILE):
        if not (directory / name).is_file():
            raise ModelDirError(f"{directory}: incomplete model folder (no {name})")
    tokenizer = Tokenizer.load(directory)
    if tokenizer.vocab_size != config.model.vocab_size:
        raise ModelDirError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} pieces, config says "
            f"{config.model.vocab_size}"
        )
    return load_weights(ASRModel(config.model), directory), tokenizer, config


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The folder's weights by name. Raises ModelDirError if the file is missing or not
    a safetensors file."""
    path = directory / WEIGHTS_FILE
    try:
        weights = load_file(str(path))
    except FileNotFoundError:
        raise ModelDirError(f"{directory}: incomplete model folder (no {WEIGHTS_FILE})") from None
    except (OSError, SafetensorError) as error:
        raise ModelDirError(f"{path}: unreadable weights ({error})") from None
    for scale_name in [name for name in weights if name.endswith(ROW_SCALE)]:
        name, scale = scale_name.removesuffix(ROW_SCALE), weights.pop(scale_name)
        rows = weights.get(name)
        if rows is None or rows.dtype != torch.int8 or rows.shape[:1] != scale.shape:
            raise ModelDirError(f"{path}: unreadable weights ({scale_name} scales no int8 "
                                "matrix of as many rows)")
        # float16 values, whose rounding is at most an eighth of int8's: on the CPU an LM
        # decodes with these very int8 rows again (models.int8_rows), and float LSTM steps
        # read float16 weights as float16 (models.lstm_step)
        weights[name] = (scale[:, None] * rows.float()).half()
    return weights


def load_weights(module: M, directory: Path) -> M:
    """Fill ``module`` from the folder's weights (any float dtype) -> it, in eval mode."""
    weights = read_weights(directory)
    try:
        module.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ModelDirError(f"{directory}: weights do not match config.json ({first})") from None
    return module.eval()


def resolve_model_dir(path_or_name: str | Path | None) -> Path:
    """None or "default" -> the bundled model; anything else must be a model folder (or a
    training checkpoint)."""
    if path_or_name is None or str(path_or_name) == "default":
        if not (BUNDLED_DIR / CONFIG_FILE).is_file():
            raise ModelDirError(f"{BUNDLED_DIR}: the bundled model is missing from this install")
        return BUNDLED_DIR
    if str(path_or_name) == "":  # Path("") is ".", the current folder
        raise ModelDirError("an empty string is not a model folder's name")
    path = Path(path_or_name)
    if not path.exists():
        raise ModelDirError(f"{path}: no such model folder")
    return path

