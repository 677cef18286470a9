"""Fixtures shared by several test files."""

import json
from pathlib import Path

import pytest
import torch

from conformer_asr.text.tokenizer import Tokenizer

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation (slow on a busy machine).
    A test file opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def manifest_tokenizer(tmp_path_factory) -> Tokenizer:
    """A 30-piece tokenizer trained on the texts of ``tests/data/manifest.jsonl``."""
    texts = [json.loads(line)["text"] for line in (DATA / "manifest.jsonl").open()]
    return Tokenizer.train(texts, tmp_path_factory.mktemp("tok") / "tok", vocab_size=30)
