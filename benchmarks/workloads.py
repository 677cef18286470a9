"""What the benchmarks run on: input sizes, model configurations and random inputs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from conformer_asr.audio.features import num_frames
from conformer_asr.models import EncoderConfig, ModelConfig, get_config
from conformer_asr.models.subsampling import subsampled_lengths


@dataclass(frozen=True)
class Workload:
    """Sizes of every benchmark's inputs."""

    audio_seconds: float  # length of every utterance
    encoder_batches: tuple[int, ...]  # batch sizes of the encoder-forward rows
    train_batch: int  # utterances per training step
    loader_batch: int  # utterances of the data-loader row's batch
    lm_rows: tuple[int, ...]  # hypotheses per step of the LM-step rows
    target_length: int  # U, labels per utterance in a training step
    prune_range: int  # S, label positions per frame of the pruned training step
    loss_shape: tuple[int, int, int, int]  # (B, T, U, V) of the RNN-T loss row
    matmul_size: int  # N of the N x N matmul that measures the machine's peak
    matmul_repeats: int
    repeats: int  # default timed repeats of each path


FULL = Workload(audio_seconds=10.0, encoder_batches=(1, 8), train_batch=8, loader_batch=64,
                lm_rows=(8, 64, 256), target_length=50, prune_range=5,
                loss_shape=(8, 250, 50, 1024), matmul_size=4096, matmul_repeats=5, repeats=5)
QUICK = Workload(audio_seconds=1.0, encoder_batches=(1, 2), train_batch=2, loader_batch=2,
                 lm_rows=(2,), target_length=5, prune_range=2, loss_shape=(2, 12, 4, 16),
                 matmul_size=256, matmul_repeats=2, repeats=1)


def model_config(size: str, quick: bool) -> ModelConfig:
    """``conformer-{size}``, or with ``quick`` a tiny stand-in (2 layers of width 32)."""
    cfg = get_config(f"conformer-{size}")
    if not quick:
        return cfg
    tiny = EncoderConfig(d_model=32, n_layers=2, n_heads=2, conv_kernel_size=7)
    return dataclasses.replace(cfg, name=f"{cfg.name}-quick", encoder=tiny, vocab_size=32,
                               pred_embed_dim=16, pred_hidden_dim=32, joint_dim=32)


def feature_frames(cfg: ModelConfig, seconds: float) -> int:
    """Feature frames of ``seconds`` of audio."""
    f = cfg.features
    return int(num_frames(int(seconds * f.sample_rate), f.win_length, f.hop_length))


def encoder_frames(cfg: ModelConfig, seconds: float) -> int:
    """Encoder output frames (T') of ``seconds`` of audio."""
    frames = torch.tensor([feature_frames(cfg, seconds)])
    return int(subsampled_lengths(frames, cfg.encoder.subsampling_factor))


def random_features(
    cfg: ModelConfig, batch: int, seconds: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-feature-like noise: feats (B, T, n_mels), lengths (B,), all full length."""
    frames = feature_frames(cfg, seconds)
    return torch.randn(batch, frames, cfg.features.n_mels), torch.full((batch,), frames)


def random_targets(vocab_size: int, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-blank labels (B, U) int64 and their lengths (B,), all U."""
    return torch.randint(1, vocab_size, (batch, length)), torch.full((batch,), length)
