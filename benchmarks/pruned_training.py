"""Start folders for the pruned-vs-full RNN-T training comparison (benchmarks/README.md).

    python -m benchmarks.pruned_training [--out exp]

Writes OUT/rnnt-init-full and OUT/rnnt-init-pruned: hybrid CTC + RNN-T models
(``ctc_weight`` 0.3) whose encoder and CTC head are the bundled model's, with the same
randomly initialised prediction network and joint in both. They differ only in the loss:
the full RNN-T loss, or the pruned one (``rnnt_prune_range`` 5, plus its simple joint).
Train each with ``benchmarks/pruned_training.yaml`` and ``--set init_from=...``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from conformer_asr.inference.model_dir import BUNDLED_DIR, load_model_dir, save_model_dir
from conformer_asr.models import ASRModel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pruned_training",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("exp"))
    args = parser.parse_args(argv)
    bundled, tokenizer, _ = load_model_dir(BUNDLED_DIR)
    torch.manual_seed(0)
    cfg = dataclasses.replace(bundled.cfg, name="rnnt-from-default", ctc_weight=0.3)
    models = {"full": ASRModel(cfg),
              "pruned": ASRModel(dataclasses.replace(cfg, rnnt_prune_range=5))}
    models["full"].load_state_dict(bundled.state_dict(), strict=False)  # + a new transducer
    models["pruned"].load_state_dict(models["full"].state_dict(), strict=False)  # + simple joint
    for name, model in models.items():
        folder = save_model_dir(model, tokenizer, args.out / f"rnnt-init-{name}")
        print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
