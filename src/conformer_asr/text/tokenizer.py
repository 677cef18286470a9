"""SentencePiece word-piece tokenizer with the model's id layout.

Ids: 0 is the blank of CTC and RNN-T (SentencePiece's pad piece, ``<blk>``,
never produced by encoding), 1 is ``<unk>``, the rest are word pieces. Text is
normalised (``normalize_text``) before encoding, so training transcripts and
user text are treated alike; characters outside the normalised alphabet are
dropped. Pieces never seen in training map to ``<unk>``, which decodes to
nothing (it is not part of any word).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from ..files import write_atomically
from .normalize import normalize_text

BLANK_ID = 0
UNK_ID = 1
MODEL_FILE = "tokenizer.model"


class Tokenizer:
    """encode(text) -> list[int] and decode(ids) -> text, with blank = 0."""

    def __init__(self, model_path: str | Path) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: tokenizer model not found")
        self.path = model_path
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_path))
        except (RuntimeError, OSError):
            raise ValueError(f"{model_path}: not a SentencePiece model") from None
        if self.sp.pad_id() != BLANK_ID or self.sp.unk_id() != UNK_ID:
            raise ValueError(f"{model_path}: not a conformer-asr tokenizer (blank must be id 0)")

    def __getstate__(self) -> dict:
        """Pickle as the model bytes (for DataLoader workers)."""
        return {"path": self.path, "proto": self.sp.serialized_model_proto()}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self.sp = spm.SentencePieceProcessor(model_proto=state["proto"])

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(normalize_text(text))

    def decode(self, ids: Iterable[int]) -> str:
        kept = [i for i in ids if i > UNK_ID]
        return normalize_text(self.sp.decode(kept))

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def vocabulary(self) -> list[str]:
        """Every token id's piece, in id order."""
        return self.pieces(range(self.vocab_size))

    def is_same_as(self, other: Tokenizer) -> bool:
        """Whether ``other`` is the same SentencePiece model (pieces, ids and settings)."""
        return self.sp.serialized_model_proto() == other.sp.serialized_model_proto()

    def is_word_start(self, token_id: int) -> bool:
        """True if this piece begins a new word (SentencePiece's ``▁`` prefix)."""
        return self.sp.id_to_piece(int(token_id)).startswith("\u2581")

    def save(self, directory: str | Path) -> Path:
        """Copy the model file into ``directory`` as ``tokenizer.model``."""
        target = Path(directory) / MODEL_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.resolve() != self.path.resolve():
            data = self.path.read_bytes()
            write_atomically(target, data)
        return target

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        return cls(Path(directory) / MODEL_FILE)

    @classmethod
    def train(
        cls, texts: Iterable[str], directory: str | Path, vocab_size: int = 1000,
        model_type: str = "bpe",
    ) -> Tokenizer:
        """Train on normalised ``texts`` and save ``tokenizer.model`` in ``directory``.

        ``model_type`` "bpe" is the word-piece-like default; "unigram" also works.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            corpus = Path(tmp) / "text.txt"
            with corpus.open("w") as f:
                for line in texts:
                    line = normalize_text(line)
                    if line:
                        f.write(line + "\n")
            spm.SentencePieceTrainer.train(
                input=str(corpus), model_prefix=str(Path(tmp) / "sp"), vocab_size=vocab_size,
                model_type=model_type, character_coverage=1.0, pad_id=BLANK_ID,
                pad_piece="<blk>", unk_id=UNK_ID, bos_id=-1, eos_id=-1,
                hard_vocab_limit=False, minloglevel=2, num_threads=os.cpu_count() or 1,
            )
            write_atomically(directory / MODEL_FILE, (Path(tmp) / "sp.model").read_bytes())
        return cls(directory / MODEL_FILE)


