"""``conformer-asr pack``: a model folder, an LM and the decoding tuned for the pair, as
one folder that ``transcribe`` and ``load_model`` use as they are (the bundled model is one).

    OUT/config.json, model.safetensors, tokenizer.model   the model folder, plus "decoding"
    OUT/lm/                                             the LM and its lexicon if it has one

The model's weights are stored in float16 (half the size), the LM's weight matrices in
int8 with a scale per row (a quarter: 8 MB instead of 16 for the bundled LM; what it costs
is measured in recipes/synthetic/README.md, step 4); they load back as float32.

The folder is assembled under a temporary name and renamed into place, so it is
either complete or absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..decoding.search import DecodingOptions
from ..files import naming
from .lm_dir import load_lm_dir, read_lexicon_words, require_same_tokenizer, save_lm_dir
from .model_dir import LM_SUBDIR, ModelDirError, load_model_dir, resolve_model_dir, save_model_dir


def pack_model(
    model_dir: str | Path, lm_dir: str | Path, out: str | Path, decoding: DecodingOptions
) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelDirError(f"--out {out}: a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ModelDirError(f"{out}: already exists and is not empty; pack writes a new folder")
    model, tokenizer, config = load_model_dir(resolve_model_dir(model_dir))
    decoding.check_model(model)  # a head or adaptation the model cannot decode with
    lm, lm_tokenizer, lm_info = load_lm_dir(lm_dir)
    require_same_tokenizer(lm_tokenizer, tokenizer, lm_dir)
    words = read_lexicon_words(lm_dir)
    if decoding.oov_penalty and not words:
        raise ModelDirError(f"{lm_dir}: no lexicon.txt, so the OOV penalty must be 0 "
                            "(train-lm writes one)")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_lm_dir(lm, tokenizer, tmp / LM_SUBDIR, lm_info, compact=True, words=words)
        save_model_dir(model, tokenizer, tmp, config.info, decoding, half=True)
        tmp.replace(out)
    except OSError as error:  # a full disk: free it, and name the file as it would be
        shutil.rmtree(tmp, ignore_errors=True)
        name = str(error.filename or tmp).replace(str(tmp), str(out), 1)
        raise naming(error, name) from None
    return out
