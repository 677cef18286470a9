"""The benchmarks: each runs a fast path of the package against a baseline on the same
inputs and weights, and returns one ``Row``."""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from lhotse import CutSet
from torch import nn

from conformer_asr import load_model
from conformer_asr.audio.features import LogMelFeatures
from conformer_asr.audio.io import SAMPLE_RATE, audio_duration, load_audio
from conformer_asr.data.augment import AugmentConfig, Augmenter
from conformer_asr.data.dataset import SpeechDataset
from conformer_asr.data.manifest import load_cuts
from conformer_asr.decoding.search import DecodingOptions, decode
from conformer_asr.inference.adapt import encode_adapted
from conformer_asr.inference.lm_dir import load_lm_dir
from conformer_asr.inference.model_dir import BUNDLED_DIR, LM_SUBDIR
from conformer_asr.inference.transcriber import Transcriber
from conformer_asr.losses.rnnt import rnnt_loss, rnnt_loss_reference
from conformer_asr.models import ASRModel, ModelConfig, load_encoder_and_heads, quantize_int8
from conformer_asr.models.int8_rows import Int8RowsLinear, Int8RowsLSTM, int8_rows_lm
from conformer_asr.models.lm import WordPieceLM
from conformer_asr.text.tokenizer import Tokenizer

from .measure import (
    Call,
    count_flops,
    interleaved_medians,
    matmul_peak_flops,
    no_reset,
    peak_bytes,
    wall_seconds,
)
from .plain import adapt_one_at_a_time, plain_encoder_like, plain_lm_like, plain_training_loss
from .workloads import Workload, encoder_frames, random_features, random_targets

MB = 2**20
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@dataclass
class Row:
    """One benchmark. Times are medians in seconds; ``speedup`` is baseline / fast time.

    ``gflop`` is the work of one call counted on the plain path (every product an
    explicit matmul), and both paths' MFU use it; ``extra`` holds row-specific
    figures (``logits_mb``, ``rtf_*``, ...) and ``targets`` the goals and whether
    they are met.
    """

    benchmark: str
    size: str
    batch: int
    baseline: str
    fast_s: float
    baseline_s: float
    speedup: float
    gflop: float | None = None
    mfu_fast: float | None = None
    mfu_baseline: float | None = None
    peak_mb_fast: float | None = None
    peak_mb_baseline: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
    targets: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    work: Workload
    repeats: int
    peak_flops: float  # the device's matmul FLOP/s in the benchmarks' precision, at the start
    matmul_size: int  # N of the N x N matmul that measured it
    bf16: bool = False  # both paths run under bfloat16 autocast (the GPU table)

    def measure_peak(self) -> float:
        """The device's matmul FLOP/s now, in the benchmarks' precision."""
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        return matmul_peak_flops(self.matmul_size, self.work.matmul_repeats, dtype)

    def peak_flops_now(self) -> float:
        """The larger of ``peak_flops`` and the peak measured now: a shared machine's speed
        drifts within a run, and a peak that read low would overstate every MFU."""
        return max(self.peak_flops, self.measure_peak())

    def in_precision(self, call: Call) -> Call:
        """``call`` as the benchmarks run it: under bfloat16 autocast with ``bf16``."""
        if not self.bf16:
            return call

        def autocast_call() -> object:
            with torch.autocast(torch.get_default_device().type, dtype=torch.bfloat16):
                return call()

        return autocast_call


def compare(
    benchmark: str, size: str, batch: int, baseline_name: str, fast: Call, baseline: Call,
    settings: Settings, *, reset: Call = no_reset, flops: bool = False, memory: bool = False,
) -> Row:
    """Times ``fast`` against ``baseline``; with ``flops`` also their MFU, with ``memory``
    their peak tensor memory. ``reset`` runs before every call, outside what is measured."""
    fast, baseline = settings.in_precision(fast), settings.in_precision(baseline)
    fast_s, baseline_s = interleaved_medians(fast, baseline, settings.repeats, reset)
    row = Row(benchmark, size, batch, baseline_name, fast_s, baseline_s, baseline_s / fast_s)
    if flops:
        reset()
        work = count_flops(baseline)
        peak = settings.peak_flops_now()
        row.gflop = work / 1e9
        row.mfu_fast = work / fast_s / peak
        row.mfu_baseline = work / baseline_s / peak
        row.extra["peak_flops"] = peak
    if memory:
        reset()
        row.peak_mb_fast = peak_bytes(fast) / MB
        reset()
        row.peak_mb_baseline = peak_bytes(baseline) / MB
    return row


def encoder_forward(model: ASRModel, batch: int, settings: Settings) -> Row:
    """Encoder inference (eval, no_grad) on ``batch`` utterances: ConformerEncoder vs plain."""
    cfg = model.cfg
    feats, lengths = random_features(cfg, batch, settings.work.audio_seconds)
    encoder = model.encoder.eval()
    plain = plain_encoder_like(encoder, cfg.encoder)
    row = compare("encoder forward", cfg.name, batch, "plain",
                  torch.no_grad()(lambda: encoder(feats, lengths)),
                  torch.no_grad()(lambda: plain(feats, lengths)),
                  settings, flops=True, memory=True)
    if cfg.name == "conformer-m" and batch == 8:
        row.targets = {"speed-up >= 2": row.speedup >= 2.0, "MFU >= 50%": row.mfu_fast >= 0.5}
    return row


def int8_encoder_forward(model: ASRModel, batch: int, settings: Settings) -> Row:
    """Encoder inference with int8 Linear layers (``quantize_int8``) vs float32."""
    cfg = model.cfg
    feats, lengths = random_features(cfg, batch, settings.work.audio_seconds)
    encoder = model.encoder.eval()
    int8_encoder = quantize_int8(model).encoder
    row = compare("int8 encoder forward", cfg.name, batch, "fp32",
                  torch.no_grad()(lambda: int8_encoder(feats, lengths)),
                  torch.no_grad()(lambda: encoder(feats, lengths)), settings)
    row.targets = {"speed-up >= 1.5": row.speedup >= 1.5}
    return row


def int8_linear_layers(model: ASRModel, batch: int, settings: Settings) -> Row:
    """The encoder's Linear layers alone, each called once on random input of the size it
    gets in the encoder, (batch x T', in_features): int8 (``quantize_int8``) vs float32.
    ``quantize_int8`` changes nothing else in the encoder, so this speed-up bounds the int8
    encoder's."""
    rows = batch * encoder_frames(model.cfg, settings.work.audio_seconds)
    layers = nn.ModuleList(m for m in model.encoder.modules() if isinstance(m, nn.Linear))
    int8_layers = quantize_int8(layers)
    inputs = {n: torch.randn(rows, n) for n in {layer.in_features for layer in layers}}

    def run(modules: nn.ModuleList) -> Call:
        return torch.no_grad()(lambda: [m(inputs[layer.in_features])
                                        for m, layer in zip(modules, layers, strict=True)])

    return compare("int8 Linear layers", model.cfg.name, batch, "fp32", run(int8_layers),
                   run(layers), settings)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _training_batch(model: ASRModel, settings: Settings) -> Batch:
    """Random feats (B, T, n_mels), lengths (B,), targets (B, U) and target lengths (B,)
    of the workload's training step."""
    work = settings.work
    feats, lengths = random_features(model.cfg, work.train_batch, work.audio_seconds)
    targets, target_lengths = random_targets(model.cfg.vocab_size, work.train_batch,
                                             work.target_length)
    return feats, lengths, targets, target_lengths


def _training_mode(model: ASRModel) -> None:
    """Dropout and batch-norm statistics on, SpecAugment off (the plain step has none)."""
    model.train()
    model.spec_augment.eval()


def _loss_backward(model: ASRModel, batch: Batch) -> Call:
    """Puts ``model`` in ``_training_mode`` and returns a call that runs forward and
    backward of its training loss on ``batch``."""
    _training_mode(model)
    return lambda: model(*batch).loss.backward()


def train_step(model: ASRModel, settings: Settings, pruned: bool = False) -> Row:
    """Forward and backward of the RNN-T training loss (``ASRModel.forward``'s path, with
    the fast encoder, joint and ``rnnt_loss``) vs ``plain_training_loss``, dropout on,
    SpecAugment off (the plain step has none).

    With ``pruned`` the fast step trains with the pruned RNN-T loss instead
    (``rnnt_prune_range`` = the workload's ``prune_range``): a different loss, so the
    row compares training steps, not the same math, and has no MFU.
    """
    cfg, work = model.cfg, settings.work
    batch = _training_batch(model, settings)
    fast_model = model
    if pruned:
        fast_model = ASRModel(dataclasses.replace(cfg, rnnt_prune_range=work.prune_range))
        load_encoder_and_heads(fast_model, model.state_dict())  # the simple joint is new
    _training_mode(model)  # the plain step uses its prediction network and joint
    fast = _loss_backward(fast_model, batch)
    plain = plain_encoder_like(model.encoder, cfg.encoder)

    def baseline() -> None:
        plain_training_loss(plain, model, *batch).backward()

    def reset() -> None:
        fast_model.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        plain.zero_grad(set_to_none=True)

    name = f"train step, pruned S={work.prune_range}" if pruned else "train step"
    row = compare(name, cfg.name, work.train_batch, "plain", fast, baseline, settings,
                  reset=reset, flops=not pruned, memory=True)
    t = encoder_frames(cfg, work.audio_seconds)
    positions = work.prune_range if pruned else work.target_length + 1
    row.extra["logits_mb"] = work.train_batch * t * positions * cfg.vocab_size * 4 / MB
    audio_seconds = work.train_batch * work.audio_seconds  # per step: audio hours per hour
    row.extra["audio_h_per_h_fast"] = audio_seconds / row.fast_s
    row.extra["audio_h_per_h_baseline"] = audio_seconds / row.baseline_s
    row.targets = {"speed-up >= 1.5": row.speedup >= 1.5}
    model.eval()
    return row


def compiled_encoder_forward(model: ASRModel, batch: int, settings: Settings) -> Row:
    """``torch.compile`` of the encoder (inductor, compiled for this input's shapes) vs the
    same encoder run eagerly, in eval mode under no_grad. The seconds of the first call,
    compilation included, are in ``extra["compile_s"]``."""
    cfg = model.cfg
    feats, lengths = random_features(cfg, batch, settings.work.audio_seconds)
    encoder = model.encoder.eval()
    compiled = torch.compile(encoder)
    fast = torch.no_grad()(lambda: compiled(feats, lengths))
    compile_s = wall_seconds(settings.in_precision(fast))
    row = compare("encoder forward, compiled", cfg.name, batch, "eager", fast,
                  torch.no_grad()(lambda: encoder(feats, lengths)), settings, memory=True)
    row.extra = {"compile_s": compile_s}
    return row


def graphed_encoder_forward(model: ASRModel, batch: int, settings: Settings) -> Row:
    """The encoder's forward (eval, no_grad) captured once in a CUDA graph and replayed, vs
    the same encoder run eagerly: a replay launches the whole forward at once, where the
    eager forward launches its ~1,600 operations one by one from Python (the H200 table's
    encoder rows were bound by that). GPU only; shapes fixed at capture. The largest
    difference between the replayed and the eager output is in ``extra["max_abs_diff"]``."""
    cfg = model.cfg
    feats, lengths = random_features(cfg, batch, settings.work.audio_seconds)
    encoder = model.encoder.eval()

    @torch.no_grad()
    def eager() -> torch.Tensor:
        # autocast's cache of cast weights must be off while a graph is captured
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=settings.bf16,
                            cache_enabled=False):
            return encoder(feats, lengths)[0]

    side = torch.cuda.Stream()  # capture wants its warm-up off the default stream
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            eager()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed = eager()
    # no peak memory: the graph holds its pool from capture on, so a replay allocates none
    row = compare("encoder forward, CUDA graph", cfg.name, batch, "eager", graph.replay, eager,
                  settings)
    graph.replay()
    row.extra = {"max_abs_diff": float((replayed.float() - eager().float()).abs().max())}
    return row


def compiled_train_step(model: ASRModel, settings: Settings) -> Row:
    """The train step's fast path (see ``train_step``) with the encoder compiled in place
    (``nn.Module.compile``) vs the same step run eagerly. The seconds of the first
    step, compilation included, are in ``extra["compile_s"]``."""
    batch = _training_batch(model, settings)
    compiled = copy.deepcopy(model)
    compiled.encoder.compile()
    fast, baseline = _loss_backward(compiled, batch), _loss_backward(model, batch)

    def reset() -> None:
        compiled.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)

    compile_s = wall_seconds(settings.in_precision(fast))
    row = compare("train step, compiled", model.cfg.name, settings.work.train_batch, "eager",
                  fast, baseline, settings, reset=reset, memory=True)
    row.extra = {"compile_s": compile_s}
    model.eval()
    return row


def rnnt_loss_step(settings: Settings) -> Row:
    """Forward and backward of ``rnnt_loss`` vs ``rnnt_loss_reference`` on random logits."""
    b, t, u, v = settings.work.loss_shape
    logits = torch.randn(b, t, u + 1, v, requires_grad=True)
    targets = torch.randint(1, v, (b, u), dtype=torch.int32)
    logit_lengths = torch.full((b,), t, dtype=torch.int32)
    target_lengths = torch.full((b,), u, dtype=torch.int32)

    def fast() -> None:
        rnnt_loss(logits, targets, logit_lengths, target_lengths).backward()

    def baseline() -> None:
        rnnt_loss_reference(logits, targets, logit_lengths, target_lengths).backward()

    def reset() -> None:
        logits.grad = None

    row = compare("rnnt loss fwd+bwd", f"T={t} U={u} V={v}", b, "reference", fast, baseline,
                  settings, reset=reset, memory=True)
    logits_mb = logits.numel() * logits.element_size() / MB
    assert row.peak_mb_fast is not None and row.peak_mb_baseline is not None
    row.extra = {"logits_mb": logits_mb, "peak_over_logits_fast": row.peak_mb_fast / logits_mb,
                 "peak_over_logits_baseline": row.peak_mb_baseline / logits_mb}
    row.targets = {"peak <= 1.5x logits": row.extra["peak_over_logits_fast"] <= 1.5}
    return row


@torch.no_grad()
def _emit_like_trained(
    model: ASRModel, enc: torch.Tensor, lengths: torch.Tensor, tokens_per_frame: float
) -> None:
    """Raise the blank logit of a randomly initialised model so that greedy search on its
    encoder output, enc (1, T', D) and lengths (1,), emits about ``tokens_per_frame`` tokens
    per frame like a trained model, instead of the most it may at every frame.

    The offset is found by bisection; a random model's logits are O(1), so 0..50 holds it.
    A random model's frames look alike, so its rate can drop from the maximum to none
    within a hundredth of a logit, and jump there: the bisection runs to float32's
    resolution and keeps whichever end of the last interval comes closer to the target
    (the row reports the rate it reached).
    """
    assert model.joint is not None
    bias = model.joint.out.bias
    start = float(bias[0])

    def rate(offset: float) -> float:
        bias[0] = start + offset
        [hypothesis] = decode(model, enc, lengths, DecodingOptions())
        return len(hypothesis.tokens) / enc.shape[1]

    low, high = 0.0, 50.0
    for _ in range(30):
        if rate((low + high) / 2) > tokens_per_frame:
            low = (low + high) / 2
        else:
            high = (low + high) / 2
    closest = min((low, high), key=lambda offset: abs(rate(offset) - tokens_per_frame))
    bias[0] = start + closest


def transcription(model: ASRModel, settings: Settings) -> Row:
    """One utterance end to end (log-mel features, encoder, greedy search) with a randomly
    initialised model made to emit at a trained model's rate; the baseline swaps in the
    plain encoder. Reported as real-time factors (seconds per second of audio)."""
    cfg, work = model.cfg, settings.work
    model = copy.deepcopy(model).eval()
    plain = plain_encoder_like(model.encoder, cfg.encoder)
    features = LogMelFeatures(cfg.features)
    samples = int(work.audio_seconds * cfg.features.sample_rate)
    wave, lengths = 0.1 * torch.randn(1, samples), torch.tensor([samples])
    options = DecodingOptions()
    with torch.no_grad():
        enc, enc_lengths = model.encode(*features(wave, lengths))
    _emit_like_trained(model, enc, enc_lengths, work.target_length / enc.shape[1])

    @torch.no_grad()
    def fast() -> list:
        feats, feat_lengths = features(wave, lengths)
        return decode(model, *model.encode(feats, feat_lengths), options)

    @torch.no_grad()
    def baseline() -> list:
        feats, feat_lengths = features(wave, lengths)
        return decode(model, *plain(feats, feat_lengths), options)

    row = compare("transcribe", cfg.name, 1, "plain", fast, baseline, settings)
    [hypothesis] = fast()
    row.extra = {"rtf_fast": row.fast_s / work.audio_seconds,
                 "rtf_baseline": row.baseline_s / work.audio_seconds,
                 "tokens_per_frame": len(hypothesis.tokens) / enc.shape[1]}
    return row


def _transcribe_examples(
    benchmark: str, baseline_name: str, fast: Transcriber, baseline: Transcriber,
    settings: Settings, one_at_a_time: bool,
) -> Row:
    """Two transcribers on the shipped ``examples/`` audio, as ``conformer-asr transcribe
    examples/*.wav examples/*.flac`` takes it (the ``batch`` column counts the files), or
    with ``one_at_a_time`` in one call per file, as a server takes requests (``batch`` 1).
    The row reports real-time factors over the files' total duration."""
    paths = sorted(str(p) for p in EXAMPLES.iterdir() if p.suffix in (".wav", ".flac"))
    seconds = sum(audio_duration(path) for path in paths)

    def run(transcriber: Transcriber) -> Call:
        if one_at_a_time:
            return lambda: [transcriber.transcribe([path]) for path in paths]
        return lambda: transcriber.transcribe(paths)

    row = compare(benchmark, fast.model.cfg.name, 1 if one_at_a_time else len(paths),
                  baseline_name, run(fast), run(baseline), settings)
    row.extra = {"rtf_fast": row.fast_s / seconds, "rtf_baseline": row.baseline_s / seconds,
                 "audio_seconds": seconds}
    return row


def bundled_transcription(settings: Settings, one_at_a_time: bool) -> Row:
    """The bundled model transcribing the shipped examples with its default search (beam
    search with its LM) but without its test-time adaptation, self-training and learning of
    each file's speaker (as the int8 rows, which time int8 inference apart from the
    adaptation's backward passes): reading and resampling the files, features, encoder,
    search. The baseline is the same with the plain encoder and plainly stepped float32 LMs
    swapped in (the transcriber's LMs multiply in int8 rows on the CPU)."""
    device = str(torch.get_default_device())
    fast = load_model(device=device, adapt_steps=0, self_train_steps=0,
                      speaker_adaptation=False)
    plain = copy.deepcopy(fast)
    plain.model.encoder = plain_encoder_like(fast.model.encoder, fast.model.cfg.encoder)
    plain.lm = plain_lm_like(_float32_lm()).to(device)
    return _transcribe_examples("transcribe, bundled", "plain", fast, plain, settings,
                                one_at_a_time)


def _float32_lm() -> WordPieceLM:
    """The bundled LM in float32 on the CPU, as ``load_lm_dir`` reads it (the
    transcriber's own multiplies in int8 rows on the CPU)."""
    return load_lm_dir(BUNDLED_DIR / LM_SUBDIR)[0]


def _bundled_adaptation(
    batch: int, settings: Settings
) -> tuple[ASRModel, int, Callable[..., Call]]:
    """The bundled model, its decoding's adaptation steps, and ``adapting(model, how)``:
    a call that adapts and encodes ``batch`` random utterances with ``model`` by ``how``
    (``encode_adapted`` or ``adapt_one_at_a_time``) at those steps and learning rate."""
    bundled = load_model(device=str(torch.get_default_device()))
    options = bundled.options
    feats, lengths = random_features(bundled.model.cfg, batch, settings.work.audio_seconds)

    def adapting(model: ASRModel, how: Callable[..., Any] = encode_adapted) -> Call:
        return lambda: how(model, feats, lengths, options.adapt_steps, options.adapt_lr)
    return bundled.model, options.adapt_steps, adapting


def adapted_encoder(batch: int, settings: Settings) -> Row:
    """The bundled model's test-time adaptation (its decoding's steps and learning rate)
    and encoding of ``batch`` utterances, as the transcriber runs it: all rows at once
    (``encode_adapted``) vs one utterance at a time (``adapt_one_at_a_time``)."""
    model, steps, adapting = _bundled_adaptation(batch, settings)
    row = compare("adapted encoder, bundled", model.cfg.name, batch, "one at a time",
                  adapting(model), adapting(model, adapt_one_at_a_time), settings,
                  memory=True)
    row.extra = {"adapt_steps": steps,
                 "rtf_fast": row.fast_s / (batch * settings.work.audio_seconds),
                 "rtf_baseline": row.baseline_s / (batch * settings.work.audio_seconds)}
    return row


def int8_adapted_encoder(batch: int, settings: Settings) -> Row:
    """The bundled model's test-time adaptation and encoding (``encode_adapted``, its
    decoding's steps and learning rate) of ``batch`` utterances: int8 (``quantize_int8``;
    the backward passes run through the int8 Linear layers in bfloat16 or float32) vs
    float32."""
    model, steps, adapting = _bundled_adaptation(batch, settings)
    row = compare("int8 adapted encoder, bundled", model.cfg.name, batch, "fp32",
                  adapting(quantize_int8(model)), adapting(model), settings)
    row.extra = {"adapt_steps": steps}
    return row


def int8_bundled_transcription(settings: Settings, one_at_a_time: bool) -> Row:
    """The bundled model transcribing the shipped examples with ``--int8`` (the model's
    Linear layers in int8, its LMs in int8 rows) against all of it in float32 (the
    transcriber's float32 paths), default search, neither adapted nor self-trained, no
    speaker learnt (``int8_adapted_encoder`` times the adaptation)."""
    float32 = load_model(adapt_steps=0, self_train_steps=0, speaker_adaptation=False)
    float32.lm = _float32_lm()
    row = _transcribe_examples("int8 transcribe, bundled", "fp32",
                               load_model(int8=True, adapt_steps=0, self_train_steps=0,
                                          speaker_adaptation=False),
                               float32, settings, one_at_a_time)
    row.targets = {"speed-up >= 1.5": row.speedup >= 1.5}
    return row


LM_STEPS = 20  # LM steps a call of the LM-step row takes


def int8_lm_step(rows: int, settings: Settings) -> Row:
    """The bundled LM as beam search steps it on the CPU (``int8_rows_lm``: products in int8
    rows, each token's first-layer input product looked up), ``LM_STEPS`` steps of ``rows``
    hypotheses. The baseline is the same LM multiplying that product at every step, as the
    package did before 2026-12-07; both give the same numbers, bit for bit."""
    lm = _float32_lm()
    multiplying = copy.deepcopy(lm)
    multiplying.lstm, multiplying.out = Int8RowsLSTM(lm.lstm), Int8RowsLinear(lm.out)
    looking_up = int8_rows_lm(lm)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, lm.cfg.vocab_size, (rows,), generator=generator)
    with torch.no_grad():
        _, state = looking_up.step(tokens, None)

    def steps(model: WordPieceLM) -> Call:
        @torch.no_grad()
        def call() -> None:
            for _ in range(LM_STEPS):
                model.step(tokens, state)
        return call

    with torch.device("cpu"):
        row = compare("int8 LM step, bundled", "-", rows, "first-layer product each step",
                      steps(looking_up), steps(multiplying),
                      dataclasses.replace(settings, bf16=False))
    row.extra = {"ms_per_step_fast": row.fast_s / LM_STEPS * 1e3,
                 "ms_per_step_baseline": row.baseline_s / LM_STEPS * 1e3}
    return row


# scripts/device/train.sh's augmentation, VTLP included (the recipe's, plus pads and VTLP)
LOADER_AUGMENTATION = AugmentConfig(noise_prob=0.3, snr_db=(10.0, 30.0), reverb_prob=0.1,
                                    pad_prob=0.5, pad_seconds=(0.0, 1.0), vtlp=(0.9, 1.1))


def _example_cuts(folder: Path, count: int, seconds: float) -> CutSet:
    """``count`` utterances of ``seconds`` each: the shipped ``station.flac`` (real speech,
    resampled to 16 kHz) tiled to that length, written once as FLAC, each with its own id
    (its own augmentation draws)."""
    speech = load_audio(EXAMPLES / "station.flac")
    samples = np.resize(speech, int(seconds * SAMPLE_RATE))
    sf.write(folder / "utterance.flac", samples, SAMPLE_RATE)
    text = "please call me when you arrive at the station"
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(
        json.dumps({"id": f"u{i}", "audio": "utterance.flac", "text": text}) + "\n"
        for i in range(count)))
    return load_cuts(manifest)


def loader_batch(settings: Settings) -> Row:
    """One training batch as a DataLoader worker makes it, on one CPU thread: reading the
    FLAC files, ``LOADER_AUGMENTATION`` and tokenising (``SpeechDataset``). The training
    step computes the log-mel features on the model's device (``ASRTask.features``); the
    baseline is the worker computing them as well, as it did before 2026-12-04. Reported
    as audio seconds per second of one worker; the batch is the workload's
    ``loader_batch`` utterances of ``audio_seconds``."""
    work = settings.work
    cfg = ModelConfig()
    dataset = SpeechDataset(Tokenizer.load(BUNDLED_DIR), cfg, Augmenter(LOADER_AUGMENTATION))
    features = LogMelFeatures(cfg.features)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder, torch.device("cpu"):
        cuts = _example_cuts(Path(folder), work.loader_batch, work.audio_seconds)

        def baseline() -> None:
            batch = dataset[(0, cuts)]
            features(batch.waves, batch.wave_lengths, batch.warps)

        torch.set_num_threads(1)  # as worker_init sets in every worker
        try:
            row = compare("loader batch", "-", work.loader_batch, "features in worker",
                          lambda: dataset[(0, cuts)], baseline,
                          dataclasses.replace(settings, bf16=False))
        finally:
            torch.set_num_threads(threads)
    audio_seconds = work.loader_batch * work.audio_seconds
    row.extra = {"audio_s_per_s_fast": audio_seconds / row.fast_s,
                 "audio_s_per_s_baseline": audio_seconds / row.baseline_s}
    return row
