"""``conformer-asr pack``: a model folder, an LM and the decoding tuned for the pair, as
one folder that ``transcribe`` and ``load_model`` use as they are (the bundled model is one).

    OUT/config.json, model.safetensors, tokenizer.model   the model folder, plus "decoding"
    OUT/lm/                                             the LM and its lexicon if it has one
    OUT/backward_lm/                                    optional: a backward LM, to rescore
    OUT/ngram.txt.xz                                    optional: a word n-gram LM's text

The model's weights are stored in float16 (half the size), the LMs' weight matrices in
int8 with a scale per row (a quarter: 8 MB instead of 16 for the bundled LM; what it costs
is measured in recipes/synthetic/README.md, step 4); they load back as float32.

The folder is assembled under a temporary name and renamed into place, so it is
either complete or absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..decoding.ngram import key_bits
from ..decoding.search import DecodingOptions
from .lm_dir import (
    load_lm_dir,
    read_lexicon_words,
    require_direction,
    require_same_tokenizer,
    save_lm_dir,
)
from .model_dir import (
    BACKWARD_LM_SUBDIR,
    LM_SUBDIR,
    NGRAM_FILE,
    ModelDirError,
    load_model_dir,
    new_folder,
    require_new_folder,
    resolve_model_dir,
    save_model_dir,
    write_ngram,
)


def pack_model(
    model_dir: str | Path, lm_dir: str | Path, out: str | Path, decoding: DecodingOptions,
    backward_lm_dir: str | Path | None = None, ngram_sentences: Sequence[str] | None = None,
) -> Path:
    out = require_new_folder(out)
    model, tokenizer, config = load_model_dir(resolve_model_dir(model_dir))
    decoding.check_model(model)  # a head or adaptation the model cannot decode with
    lm, lm_tokenizer, lm_info = load_lm_dir(lm_dir)
    require_same_tokenizer(lm_tokenizer, tokenizer, lm_dir)
    require_direction(lm, False, lm_dir)
    backward = None
    if backward_lm_dir is not None:
        backward, backward_tokenizer, backward_info = load_lm_dir(backward_lm_dir)
        require_same_tokenizer(backward_tokenizer, tokenizer, backward_lm_dir)
        require_direction(backward, True, backward_lm_dir)
    if (backward is None) != (decoding.backward_share == 0):
        raise ModelDirError("--backward-share: give a share > 0 with --backward-lm, and "
                            "none without one")
    if (ngram_sentences is None) != (decoding.ngram_share == 0):
        raise ModelDirError("--ngram-share: give a share > 0 with --ngram-text, and none "
                            "without it")
    if ngram_sentences is not None:
        try:  # the order load_model will count it at must hold its words
            key_bits(decoding.ngram_order, len({w for s in ngram_sentences for w in s.split()}))
        except ValueError as error:
            raise ModelDirError(f"--ngram-text: {error}") from None
    words = read_lexicon_words(lm_dir)
    if decoding.oov_penalty and not words:
        raise ModelDirError(f"{lm_dir}: no lexicon.txt, so the OOV penalty must be 0 "
                            "(train-lm writes one)")
    with new_folder(out) as tmp:
        save_lm_dir(lm, tokenizer, tmp / LM_SUBDIR, lm_info, compact=True, words=words)
        if backward is not None:
            save_lm_dir(backward, tokenizer, tmp / BACKWARD_LM_SUBDIR, backward_info,
                        compact=True)
        if ngram_sentences is not None:
            write_ngram(tmp / NGRAM_FILE, ngram_sentences)
        save_model_dir(model, tokenizer, tmp, config.info, decoding, half=True)
    return out
