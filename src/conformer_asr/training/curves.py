"""Training-curve PNG from Lightning's metrics.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..files import replacing  # noqa: E402


def plot_curves(metrics_csv: Path, out_png: Path) -> None:
    """Loss (train, dev) and dev WER against step."""
    series: dict[str, list[tuple[int, float]]] = {}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            for key in ("train_loss", "val_loss", "val_wer"):
                if row.get(key) and row.get("step"):
                    series.setdefault(key, []).append((int(row["step"]), float(row[key])))
    fig, (ax_loss, ax_wer) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        if key in series:
            ax_loss.plot(*zip(*series[key], strict=True), label=key)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    if "val_wer" in series:
        ax_wer.plot(*zip(*series["val_wer"], strict=True), marker="o")
    ax_wer.set_xlabel("step")
    ax_wer.set_ylabel("dev WER (%)")
    fig.tight_layout()
    with replacing(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
