"""``conformer-asr average``: one model folder whose weights are the mean of several models'.

Runs trained on from one model with other seeds often average into a model that reads
better than each of them (a "model soup": Wortsman et al., 2022,
https://arxiv.org/abs/2203.05482; recipes/synthetic/README.md measures soups of the bundled
model's runs). The models must share their architecture and tokenizer. Pack the result
(``conformer-asr pack``) to decode it with an LM.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from .model_dir import (
    ModelDirError,
    load_model_dir,
    new_folder,
    require_new_folder,
    resolve_model_dir,
    save_model_dir,
)


def mean_weights(states: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the float tensors of state dicts with the same names, summed in
    float64 and returned in float32; integer buffers (BatchNorm's batch counters) come from
    the last. The states are read one at a time, so an iterator holds one in memory."""
    total: dict[str, torch.Tensor] = {}
    count = 0
    for state in states:
        count += 1
        for name, value in state.items():
            if value.is_floating_point():
                total[name] = total[name] + value.double() if name in total else value.double()
            else:
                total[name] = value
    if count == 0:
        raise ValueError("mean_weights: no weights given")
    return {name: (value / count).float() if value.is_floating_point() else value
            for name, value in total.items()}


def average_models(model_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write the mean of the models in ``model_dirs`` (folders, "default" for the bundled
    model, or training checkpoints) as a new model folder ``out``, in float32; its
    config's "info" lists each model's folder and info, and its config is the first model's.
    Models may differ in settings that only shape training (dropout, SpecAugment). Raises
    ModelDirError for fewer than two models, or one of another architecture or tokenizer
    than the first."""
    if len(model_dirs) < 2:
        raise ModelDirError("average: give two models or more")
    out = require_new_folder(out)
    first_model, tokenizer, first_config = load_model_dir(resolve_model_dir(model_dirs[0]))
    infos = [{"folder": str(model_dirs[0]), "info": first_config.info}]

    def each_model() -> Iterable[dict[str, torch.Tensor]]:
        yield first_model.state_dict()
        for folder in model_dirs[1:]:
            model, other_tokenizer, config = load_model_dir(resolve_model_dir(folder))
            if (config.model.without_training_settings()
                    != first_config.model.without_training_settings()):
                raise ModelDirError(f"{folder}: another architecture than {model_dirs[0]}'s")
            if not other_tokenizer.is_same_as(tokenizer):
                raise ModelDirError(f"{folder}: another tokenizer than {model_dirs[0]}'s")
            infos.append({"folder": str(folder), "info": config.info})
            yield model.state_dict()

    first_model.load_state_dict(mean_weights(each_model()))
    with new_folder(out) as tmp:
        save_model_dir(first_model, tokenizer, tmp, {"averaged_models": infos})
    return out
