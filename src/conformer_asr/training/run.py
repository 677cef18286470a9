"""``conformer-asr train``: config in, checkpoints, logs, curves and a model folder out.

    OUT_DIR/config.yaml            the resolved configuration
    OUT_DIR/tokenizer/             SentencePiece model (trained here, or init_from's copy)
    OUT_DIR/checkpoints/           step-N.ckpt (the last few) and last.ckpt, written atomically
    OUT_DIR/logs/metrics.csv       loss, lr, dev WER, throughput per logged step
    OUT_DIR/curves.png             training curves
    OUT_DIR/model/                 the average of the last checkpoints, ready for transcribe
    OUT_DIR/.lock                  held while a run trains here (``files.claimed``)

Re-running the same command resumes from ``last.ckpt`` exactly where it stopped
(weights, optimiser, schedule, every process's RNG states and position in the epoch), or
from the newest step checkpoint where ``last.ckpt`` cannot be read.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..data.augment import Augmenter
from ..data.datamodule import SpeechDataModule, load_manifests
from ..data.manifest import DataIssues
from ..data.manifest_errors import ManifestError
from ..files import claimed, holds_more_than, replacing, write_atomically
from ..inference.model_dir import ModelDirError, read_config, read_weights, save_model_dir
from ..models import load_encoder_and_heads
from ..models.config import ConfigError, ModelConfig
from ..text.tokenizer import Tokenizer
from .checkpoints import (
    AtomicCheckpointIO,
    KeepLastCheckpoints,
    average_checkpoints,
    step_checkpoints,
)
from .config import (
    TrainConfig,
    last_checkpoint,
    recorded_config,
    run_config,
    run_tokenizer,
)
from .curves import plot_curves
from .module import ASRTask


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one appends to it."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])


class _ResumableCSVLogger(CSVLogger):
    """Keeps the training history in metrics.csv across resumes: rows logged after the
    checkpoint a run resumes from are dropped, since the resumed run logs those steps again."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

    @property
    def metrics_csv(self) -> Path:
        return Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Lightning gives a step's rows the number of steps done before it (the 200th
        step's say 199); they get the step's own number, as its checkpoint does."""
        super().log_metrics(metrics, None if step is None else step + 1)

    def drop_rows_after(self, step: int) -> None:
        path = self.metrics_csv
        if not path.is_file():
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            # a run killed mid-write can leave a torn last line: drop it too
            rows = [r for r in reader if (r.get("step") or "").isdigit() and int(r["step"]) <= step]
        with replacing(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


class _TrainingLog(Callback):
    """Trims metrics.csv to the checkpoint a run resumes from; draws curves.png after
    each validation and at the end of training (a run without a dev set has no
    validation)."""

    def __init__(self, logger: _ResumableCSVLogger, out_png: Path) -> None:
        self.logger, self.out_png = logger, out_png

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.logger.drop_rows_after(trainer.global_step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._draw(trainer, "after the next validation")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, "when the run is resumed")

    def _draw(self, trainer: L.Trainer, when_again: str) -> None:
        if not trainer.is_global_zero:
            return
        self.logger.save()
        if self.logger.metrics_csv.is_file():
            try:
                plot_curves(self.logger.metrics_csv, self.out_png)
            except OSError as error:  # a picture is no reason to stop training
                print(f"warning: {error.filename or self.out_png}: {error.strerror}; "
                      f"the curves are drawn again {when_again}")


def _has_checkpoints(out: Path) -> bool:
    last = last_checkpoint(out)
    return last.is_file() or bool(step_checkpoints(last.parent))


def _recorded_vocab_size(out: Path) -> int | None:
    """The tokenizer size in the configuration a run in ``out`` recorded when it started, or
    None where there is none to read."""
    recorded = recorded_config(out)
    try:
        return int(recorded["data"]["tokenizer"]["vocab_size"]) if recorded else None
    except (TypeError, KeyError, ValueError):
        return None


def _tokenizer(cfg: TrainConfig, train_texts: list[str], out: Path) -> Tokenizer:
    """The given tokenizer; else the one this run trained when it started (a resume must
    keep it: its checkpoints' output layer is made for it); else a new one trained on the
    training text."""
    if cfg.data.tokenizer.path:
        return Tokenizer(cfg.data.tokenizer.path)
    own, wanted = run_tokenizer(out), cfg.data.tokenizer.vocab_size
    recorded = _recorded_vocab_size(out)
    if _has_checkpoints(out):
        if not own.is_file():
            raise ConfigError(f"{own}: missing, and the checkpoints in {out} need the "
                              "tokenizer they were trained with; put it back, or use a new "
                              "out_dir")
        if recorded not in (None, wanted):
            raise ConfigError(f"data.tokenizer.vocab_size: {wanted}, but the checkpoints in "
                              f"{out} were trained with a tokenizer of vocab_size {recorded} "
                              f"({run_config(out)}); resume with {recorded}, or use a new "
                              "out_dir")
        return Tokenizer(own)
    if own.is_file() and recorded in (None, wanted):  # a run stopped before its first checkpoint
        return Tokenizer(own)
    try:
        tokenizer = Tokenizer.train(train_texts, own.parent, vocab_size=wanted)
    except RuntimeError as error:  # SentencePiece's own, e.g. fewer pieces than characters
        needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(error))
        if needed is None:
            raise
        raise ConfigError(f"data.tokenizer.vocab_size: {wanted} is too "
                          f"small: the training text needs {needed[1]} pieces for its "
                          "characters and the special ones") from None
    if tokenizer.vocab_size < wanted:  # SentencePiece stops where the text has no more merges
        _say(f"data.tokenizer.vocab_size: {wanted}, but the training text makes only "
             f"{tokenizer.vocab_size} word pieces; the model outputs those {tokenizer.vocab_size}")
    return tokenizer


def _precision(cfg: TrainConfig) -> str:
    if cfg.trainer.precision != "auto":
        return str(cfg.trainer.precision)  # Lightning's 16 is "16" too
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip")


@contextlib.contextmanager
def _without_lightning_chatter() -> Iterator[None]:
    """Hide messages that say nothing about this run: Lightning's advertisement for its
    cloud logger, a deprecation inside Lightning's own use of torch, the warning about a
    non-empty checkpoint folder, which is where a resumed run is meant to write, and two
    that DDP runs print: advice to reduce the dev metrics across processes (``ASRTask``
    sums their counts itself) and a stride mismatch of the depthwise convolution's
    (C, 1, K) weight gradient, which differs only in the stride of its size-1 dimension."""
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tips = _DropTips()
    rank_zero_log.addFilter(tips)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
            warnings.filterwarnings("ignore", r"It is recommended to use `self.log\('val_")
            warnings.filterwarnings("ignore", "Grad strides do not match bucket view strides")
            yield
    finally:
        rank_zero_log.removeFilter(tips)


def _start_from(task: ASRTask, folder: Path) -> list[str]:
    """Load ``folder``'s encoder, and every head it shares with this run, into a fresh run
    -> the heads that start untrained."""
    try:
        weights = read_weights(folder)
    except ModelDirError as error:
        raise ConfigError(f"init_from: {error}") from None
    try:
        return load_encoder_and_heads(task.model, weights)
    except RuntimeError as error:  # "Error(s) in loading state_dict for ...:", then each
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]
        raise ConfigError(f"init_from: {folder}: its encoder does not match this run's "
                          f"({first}); the model section may change the heads and training "
                          "settings (dropout, SpecAugment), not the encoder") from None


@rank_zero_only
def _say(message: str) -> None:
    """Print once, from the first process: every DDP rank runs ``train`` alike."""
    print(message)


_RUN_FILES = {"config.yaml", "tokenizer", "checkpoints", "logs", "curves.png", "model"}


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) and return the exported model folder."""
    out = Path(cfg.out_dir)
    if rank_zero_only.rank != 0:  # the other DDP processes, started by the first one,
        return _train_in(out, cfg)  # which holds the folder for them all
    # A run's folder has its config.yaml or its tokenizer/ (the first things it writes), or
    # nothing but what a run writes and hidden files (the lock, what a killed write left);
    # one with other things (a model folder, say) is not to fill with checkpoints. (A file
    # there: claimed names it.)
    if holds_more_than(out, _RUN_FILES) and not (run_tokenizer(out).parent.is_dir()
                                                 or run_config(out).is_file()):
        raise ConfigError(f"out_dir: {out} is not empty and holds no training run (no "
                          f"{run_config(out).name}); give a new folder, or a run's to resume it")
    with claimed(out, "out_dir"):
        return _train_in(out, cfg)


class _ResumePoint(NamedTuple):
    path: Path
    step: int
    shapes: dict[str, tuple[int, ...]]  # of the weights in its state_dict


def _resume_point(last: Path) -> _ResumePoint | None:
    """The newest checkpoint that can be read, its step and weight shapes: ``last``, else the
    ``step-N.ckpt`` files beside it, newest first. One that cannot (copied in part, say) is
    named and passed over, not deleted. None where there is no checkpoint; ConfigError
    where none can be read."""
    candidates = [p for p in (last, *reversed(step_checkpoints(last.parent))) if p.is_file()]
    for path in candidates:
        state = _mapped_checkpoint(path)
        if isinstance(state, str):
            _say(f"{path}: cannot be read ({state}); trying an older checkpoint")
            continue
        shapes = {name: tuple(value.shape) for name, value in state["state_dict"].items()}
        return _ResumePoint(path, state["global_step"], shapes)
    if candidates:
        raise ConfigError(f"{last.parent}: none of its checkpoints can be read; move them "
                          "away to start afresh")
    return None


def _mapped_checkpoint(path: Path) -> dict[str, Any] | str:
    """The checkpoint at ``path``, its tensors mapped from the file rather than read, or why
    it cannot be read (a file copied in part, say)."""
    try:
        with path.open("rb") as f:
            if f.read(4) != b"PK\x03\x04":  # torch.save writes a zip archive; torch's own
                # error for other data is advice about mmap
                raise ValueError("not a PyTorch checkpoint")
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as error:  # torch raises several kinds for a damaged file
        return (str(error).strip() or repr(error)).splitlines()[0].split(". ")[0]


def _averaged_checkpoints(newest: list[Path], last: Path) -> list[Path]:
    """The checkpoints to average into the model: the newest step ones that can be read
    (each one that cannot is named and left out), else ``last``; ConfigError if none can."""
    readable = []
    for path in newest:
        state = _mapped_checkpoint(path)
        if isinstance(state, str):
            _say(f"{path}: cannot be read ({state}); averaging the others")
        else:
            readable.append(path)
    if readable or isinstance(_mapped_checkpoint(last), dict):
        return readable or [last]
    raise ConfigError(f"{last.parent}: none of the checkpoints to average can be read")


def _check_same_shapes(task: ASRTask, point: _ResumePoint) -> None:
    """ConfigError unless the checkpoint's weights fit ``task``'s model: a changed model
    section (or tokenizer) would otherwise fail in Lightning's resume with a traceback."""
    saved = point.shapes
    wanted = {k: tuple(v.shape) for k, v in task.state_dict().items()}
    for name in sorted(saved.keys() | wanted.keys()):
        if saved.get(name) != wanted.get(name):
            raise ConfigError(
                f"model: {point.path} holds another model ({name}: {saved.get(name, 'absent')} "
                f"there, {wanted.get(name, 'absent')} here); resume with the model section it "
                f"was trained with ({run_config(point.path.parent.parent)}), or use a new out_dir")


# What a resumed run may change: how and how long it runs, not what it learns from and how.
# (data.tokenizer.path: init_from's tokenizer, or the run's own copy of it once that folder
# has moved; _tokenizer checks the vocabulary's size, not its pieces.)
_CHANGEABLE_ON_RESUME = ("trainer.", "data.num_workers", "out_dir", "data.tokenizer.path")
# ... and the manifests, once none of those the run started with is where it was: a corpus
# moved elsewhere (it could not be resumed without editing config.yaml)
_MOVABLE = ("data.train", "data.dev")


def _flattened(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flattened(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_same_settings(out: Path, resolved: dict[str, Any]) -> None:
    """ConfigError where a resume's settings differ from those its run recorded when it
    started, outside ``_CHANGEABLE_ON_RESUME``: the resume restores the optimiser, its
    schedule and the random state, so such a change took no effect or half of one, while
    config.yaml recorded it as the run's."""
    recorded = recorded_config(out)
    if recorded is None:
        return  # nothing recorded to hold the run to
    now = yaml.safe_load(yaml.safe_dump(resolved))  # tuples as YAML reads them
    old, new = _flattened(recorded), _flattened(now)
    changed = {key for key in new.keys() & old.keys() if new[key] != old[key]}
    # a section switched off or on: None on one side, its fields on the other
    for side, other in ((new, old), (old, new)):
        for key in side.keys() - other.keys():
            parts = key.split(".")
            changed.update(section for section in (".".join(parts[:n])
                                                   for n in range(1, len(parts)))
                           if section in other and other[section] is None)
    changed_keys = sorted(key for key in changed if not key.startswith(_CHANGEABLE_ON_RESUME)
                          and not (key in _MOVABLE and _gone(_at(recorded, key))))
    if changed_keys:
        key = changed_keys[0]
        more = f" (and {', '.join(changed_keys[1:])})" if len(changed_keys) > 1 else ""
        raise ConfigError(f"{key}: {_at(now, key)!r}, but the run in {out} started with "
                          f"{_at(recorded, key)!r}{more} ({run_config(out)}); a resume keeps "
                          "its settings: give those, or use a new out_dir")


def _gone(paths: Any) -> bool:
    """Whether none of the recorded manifest ``paths`` (a path or a list) is there any more."""
    paths = paths if isinstance(paths, list) else [paths]
    return bool(paths) and all(isinstance(p, str) and not Path(p).exists() for p in paths)


def _at(tree: dict[str, Any], key: str) -> Any:
    """``tree``'s value at a flattened key: {"a": {"b": 1}}, "a.b" -> 1."""
    for part in key.split("."):
        tree = tree[part]
    return tree


def _how_to_resume(last: Path) -> str:
    point = _resume_point(last)
    if point is None:
        return "stopped before the first checkpoint: the same command starts afresh"
    return f"stopped: the same command resumes from {point.path} (step {point.step})"


def _train_in(out: Path, cfg: TrainConfig) -> Path:
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    issues = DataIssues()
    try:
        train_cuts = load_manifests(cfg.data.train, issues, cfg.data.max_utterance_seconds)
        dev_cuts = load_manifests([cfg.data.dev], issues) if cfg.data.dev else None
    except ManifestError as error:  # a recipe's YAML copied elsewhere names no corpus there
        if str(error).endswith(": no such manifest"):
            raise ManifestError(f"{error} (data paths in a YAML file are read from the file's "
                                "folder, those given with --set from the current one)") from None
        raise
    if issues.total:
        _say(f"manifest problems (skipped): {issues.summary()}")
    if len(train_cuts) == 0:
        raise ConfigError("data.train: no usable utterances in the training manifests")
    if dev_cuts is not None and len(dev_cuts) == 0:
        raise ConfigError("data.dev: no usable utterances in the dev manifest")

    tokenizer = _tokenizer(cfg, [c.supervisions[0].text for c in train_cuts], out)
    model_cfg = ModelConfig.from_dict({**cfg.model.to_dict(), "vocab_size": tokenizer.vocab_size})
    task = ASRTask(model_cfg, cfg.optim, tokenizer)
    last = last_checkpoint(out)
    resume = _resume_point(last)
    if resume is not None:
        _check_same_shapes(task, resume)
        if resume.step > cfg.trainer.max_steps:
            raise ConfigError(f"trainer.max_steps: {cfg.trainer.max_steps} is below the step "
                              f"{resume.path} has reached ({resume.step}); give {resume.step} "
                              "or more (that many finishes the run: it averages the last "
                              "checkpoints)")
    resolved = {**cfg.to_dict(), "model": model_cfg.to_dict()}
    if resume is not None:
        _check_same_settings(out, resolved)
    write_atomically(run_config(out), yaml.safe_dump(resolved, sort_keys=False))

    augmenter = Augmenter(cfg.data.augment, seed=cfg.seed) if cfg.data.augment else None
    data = SpeechDataModule(
        train_cuts, dev_cuts, tokenizer, model_cfg, augmenter,
        cfg.data.max_duration, cfg.data.num_buckets, cfg.data.num_workers, cfg.seed,
    )
    checkpoints = last.parent
    # Each row is appended as it is logged (Lightning's default buffers 100 steps): a run
    # killed after a checkpoint keeps the rows logged before it.
    logger = _ResumableCSVLogger(out, name="logs", version="", flush_logs_every_n_steps=1)
    step_ckpt = KeepLastCheckpoints(checkpoints, cfg.trainer.checkpoint_every_steps,
                                    keep=cfg.trainer.average_last)
    callbacks = [step_ckpt, _TrainingLog(logger, out / "curves.png")]
    with _without_lightning_chatter():
        try:
            trainer = L.Trainer(
                max_steps=cfg.trainer.max_steps,
                accelerator=cfg.trainer.accelerator,
                devices=cfg.trainer.devices,
                num_nodes=cfg.trainer.num_nodes,
                precision=_precision(cfg),  # type: ignore[arg-type]
                gradient_clip_val=cfg.optim.grad_clip or None,
                val_check_interval=cfg.trainer.val_every_steps if dev_cuts is not None else None,
                check_val_every_n_epoch=None,
                limit_val_batches=None if dev_cuts is not None else 0,
                num_sanity_val_steps=0,
                # a run shorter than the interval logs its last step
                log_every_n_steps=min(cfg.trainer.log_every_steps, cfg.trainer.max_steps),
                logger=logger,
                callbacks=callbacks,
                plugins=[AtomicCheckpointIO()],
                use_distributed_sampler=False,  # Lhotse samplers shard by rank themselves
                default_root_dir=out,
                enable_model_summary=True,
            )
        except (MisconfigurationException, ValueError, TypeError, ImportError) as error:
            # the arguments are all config values: Lightning's own checks name the problem
            raise ConfigError(f"trainer: {str(error).strip().splitlines()[0]}") from None
        if resume is not None:
            _say(f"resuming from {resume.path} (step {resume.step})")
        elif cfg.init_from:
            untrained = _start_from(task, Path(cfg.init_from))
            tokenizer.save(run_tokenizer(out).parent)  # a resume needs no source folder
            source_info = read_config(cfg.init_from).info
            task.init_source = {"folder": os.path.relpath(cfg.init_from), "info": source_info}
            _say(f"starting from the weights of {cfg.init_from} "
                 f"({source_info.get('steps', 0)} steps)"
                 + (f"; new heads: {', '.join(untrained)}" if untrained else ""))
        try:
            trainer.fit(task, datamodule=data, ckpt_path=str(resume.path) if resume else None)
        except SystemExit as stop:  # Lightning's exit after Ctrl-C or SIGTERM, once it has
            # shut down cleanly: stopped early is a failure to the caller (a job scheduler)
            _say(_how_to_resume(last))
            raise SystemExit(143 if isinstance(stop, SIGTERMException) else 130) from None
        except RuntimeError as error:
            if trainer.received_sigterm:  # sent to the whole job (as SLURM does): it also
                # killed the DataLoader workers, and the main process failed on their deaths
                _say(_how_to_resume(last))
                raise SystemExit(143) from None
            # Lightning's clean-up after an error in the first batch can fail on its own and
            # raise in place of the error that stopped training; a config error is the news
            if isinstance(error.__context__, ConfigError):
                raise error.__context__ from None
            raise

    if task.issues.total:
        print(f"bad data skipped during training: {task.issues.summary()}")
    if not trainer.is_global_zero:
        return out / "model"
    chosen = _averaged_checkpoints(step_checkpoints(checkpoints)[-cfg.trainer.average_last:], last)
    task.model.load_state_dict(average_checkpoints(chosen))
    info = {"averaged_checkpoints": [p.name for p in chosen], "steps": trainer.global_step,
            "train_manifests": [os.path.relpath(p) for p in cfg.data.train]}
    if task.init_source:
        info["init_from"] = task.init_source
    model_dir = save_model_dir(task.model.cpu(), tokenizer, out / "model", info)
    print(f"averaged {len(chosen)} checkpoint{'s' * (len(chosen) != 1)} -> {model_dir}")
    return model_dir
