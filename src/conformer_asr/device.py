"""Which torch device a user asked for, checked against what this machine has."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def check_device(text: str) -> torch.device:
    """"cpu", "cuda" or "cuda:N" -> the device; ValueError unless this machine has it."""
    import torch  # here: the command line's parser needs this module, not torch

    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {text!r}: give cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r}: torch sees no CUDA GPU here")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"device {text!r}: torch sees {torch.cuda.device_count()} CUDA "
                             "GPU(s) here")
    return device


def device_flag(text: str) -> str:
    """The argparse type of a ``--device`` flag: ``text`` if this machine has that device."""
    try:
        check_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("device ")) from None
    return text
