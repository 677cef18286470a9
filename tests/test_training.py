"""Training CLI: end to end on the test clips, config errors, exact resume after kill -9."""

import copy
import csv
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from lhotse import CutSet
from safetensors.torch import load_file

from conformer_asr.audio.features import LogMelFeatures, mel_filterbank
from conformer_asr.data.augment import AugmentConfig, Augmenter
from conformer_asr.data.datamodule import load_manifests
from conformer_asr.data.dataset import SpeechDataset, utterance_rng
from conformer_asr.data.manifest import DataIssues
from conformer_asr.data.manifest_errors import ManifestError
from conformer_asr.inference.model_dir import BUNDLED_DIR, ModelDirError
from conformer_asr.models import ASRModel, EncoderConfig, ModelConfig
from conformer_asr.models.config import ConfigError
from conformer_asr.text.tokenizer import Tokenizer
from conformer_asr.training.checkpoints import read_checkpoint_config
from conformer_asr.training.config import OptimConfig, load_config, parse_config
from conformer_asr.training.module import ASRTask
from conformer_asr.training.run import _without_lightning_chatter, train
from conformer_asr.training.schedule import noam_factor

DATA = Path(__file__).parent / "data"


def _config(tmp_path: Path, **trainer) -> Path:
    raw = {
        "model": {
            "encoder": {"d_model": 32, "n_layers": 1, "n_heads": 2, "conv_kernel_size": 7},
            "ctc_weight": 0.5, "pred_embed_dim": 16, "pred_hidden_dim": 32, "joint_dim": 32,
        },
        "data": {
            "train": str(DATA / "manifest.jsonl"), "dev": str(DATA / "manifest.jsonl"),
            "tokenizer": {"vocab_size": 30}, "max_duration": 3.3, "num_workers": 1,
            "augment": {"noise_prob": 0.5, "reverb_prob": 0.0, "vtlp": [0.9, 1.1]},
        },
        "optim": {"peak_lr": 0.003, "warmup_steps": 5,  # weight noise from before the kill
                  "decoder_weight_noise": 0.05, "weight_noise_start_step": 8},
        "trainer": {"max_steps": 24, "val_every_steps": 5, "checkpoint_every_steps": 5,
                    "average_last": 1, "log_every_steps": 2, **trainer},
        "out_dir": str(tmp_path / "exp"),
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _train(config: Path, *extra: str, kill: tuple[str, int] | None = None,
           signal_name: str = "SIGKILL", whole_job: bool = False,
           timeout: float = 300) -> subprocess.CompletedProcess:
    """``conformer-asr train`` in a subprocess, run to its end -> its return code and output
    (stderr merged). A run still going after ``timeout`` seconds fails the test, showing
    the Python stacks of all its processes. With ``kill=(hook, step)`` every training
    process sends itself ``signal_name`` (SIGINT: Ctrl-C) when the module's ``hook`` runs
    at that global step: ``on_train_batch_end`` comes right after Lightning saves the
    step's checkpoint and before it logs the step's row, ``validation_step`` during the
    step's validation; the moments a kill costs most. With ``whole_job`` the signal goes to
    every process of the run, DataLoader workers included, from another process (as a job
    scheduler sends it: a worker takes SIGTERM from its own main process as a request to
    exit cleanly), and the hook then waits for what the signal does. (A script file, not
    ``-c``: DDP starts the other ranks by running the same command again.)"""
    command = [sys.executable, "-m", "conformer_asr.cli"]
    if kill is not None:
        script = config.parent / "train_and_kill.py"
        send = ("subprocess.run([sys.executable, '-c', f'import os, signal; os.killpg("
                f"{{os.getpgid(0)}}, signal.{signal_name})'], start_new_session=True); "
                "time.sleep(10)" if whole_job
                else f"os.kill(os.getpid(), signal.{signal_name})")
        script.write_text(_KILL_AT_STEP.format(hook=kill[0], step=kill[1], send=send))
        command = [sys.executable, str(script)]
    args = [*command, "train", str(config), *extra]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"},
        start_new_session=True,  # one process group: the DDP ranks and DataLoader workers
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # a hang: each process of the run in turn prints its threads' Python stacks
        # (faulthandler, on SIGABRT), while the others stay stopped where they hung
        os.killpg(proc.pid, signal.SIGSTOP)
        for pid in _process_group(proc.pid):
            os.kill(pid, signal.SIGABRT)
            os.kill(pid, signal.SIGCONT)
            time.sleep(1)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"train did not end within {timeout:g} s; its output and stacks:\n"
                    f"{out[-20000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out)


def _process_group(group: int) -> list[int]:
    """The ids of the running processes in process group ``group``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # pid (name) state ppid pgrp ...; the name may hold spaces and parentheses
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[2]) == group:
            pids.append(int(stat.parent.name))
    return pids


_KILL_AT_STEP = """
import os, signal, subprocess, sys, time
from conformer_asr.cli import main
from conformer_asr.training.module import ASRTask

# Ctrl-C as in a terminal: a job a script starts in the background inherits SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
hook = ASRTask.{hook}

def kill_at_step(task, *args):
    if task.trainer.global_step == {step}:
        {send}
    return hook(task, *args)

ASRTask.{hook} = kill_at_step
sys.exit(main(sys.argv[1:]))
"""


def _weights(exp: Path) -> dict[str, torch.Tensor]:
    return load_file(str(exp / "model" / "model.safetensors"))


def _log_rows(exp: Path) -> list[tuple[int, str, float]]:
    """(step, metric, value) of every train_loss, val_loss and val_wer in metrics.csv."""
    with (exp / "logs" / "metrics.csv").open(newline="") as f:
        return [(int(r["step"]), name, float(r[name])) for r in csv.DictReader(f)
                for name in ("train_loss", "val_loss", "val_wer") if r.get(name)]


def _train_whole_killed_resumed(tmp_path: Path, hook: str, **trainer) -> tuple[Path, Path]:
    """The same run uninterrupted, and killed in ``hook`` at step 10 then resumed -> their
    out_dirs. Step 10 is due for a validation and, by default, a checkpoint (``_config``)."""
    whole = tmp_path / "whole"
    whole.mkdir()
    proc = _train(_config(whole, **trainer))
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]

    killed = tmp_path / "killed"
    killed.mkdir()
    config = _config(killed, **trainer)
    proc = _train(config, kill=(hook, 10))
    out = proc.stdout
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    # the step's checkpoint was written but not yet published: the run resumes before it
    state = torch.load(killed / "exp/checkpoints/last.ckpt", weights_only=False)
    every = trainer.get("checkpoint_every_steps", 5)
    assert state["global_step"] == 9 // every * every
    leftover = killed / "exp/logs/.metrics.csv.0badc0de.tmp.csv"  # as a killed write leaves
    leftover.write_text("step,train_loss\n")

    proc = _train(config)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert "resuming from" in out
    assert not list((killed / "exp/checkpoints").glob(".*")), "files left from the kill"
    assert not leftover.exists()
    for chatter in ("Tip:", "is deprecated", "exists and is not empty", "limit_val_batches"):
        assert chatter not in out, chatter
    return whole / "exp", killed / "exp"


def _assert_same_run(whole: Path, resumed: Path) -> None:
    """Same final weights, and the same log: each step's rows once, with the same values."""
    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    whole_log, resumed_log = _log_rows(whole), _log_rows(resumed)
    assert [row[:2] for row in resumed_log] == [row[:2] for row in whole_log]
    assert {name for _, name, _ in whole_log} == {"train_loss", "val_loss", "val_wer"}
    torch.testing.assert_close([v for *_, v in resumed_log], [v for *_, v in whole_log],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("hook", "every"), [
    ("on_train_batch_end", 5), ("validation_step", 5),
    # the test clips make epochs of 3 batches: a resume from step 9, an epoch's last batch,
    # where Lightning's epoch count skips one
    ("on_train_batch_end", 3),
])
def test_resume_after_kill_is_exact(tmp_path, hook, every):
    whole, resumed = _train_whole_killed_resumed(tmp_path, hook, checkpoint_every_steps=every)
    for name in ("curves.png", "logs/metrics.csv", "model/config.json", "checkpoints/last.ckpt"):
        assert (whole / name).is_file(), name
    _assert_same_run(whole, resumed)


@pytest.mark.slow
def test_ddp_resume_after_kill_is_exact(tmp_path):
    """Two CPU processes (gloo): each rank gets its own shard and its own random draws,
    and a resumed run restores every rank's, not only the first's."""
    whole, resumed = _train_whole_killed_resumed(tmp_path, "on_train_batch_end", devices=2,
                                                 accelerator="cpu")
    _assert_same_run(whole, resumed)
    state = torch.load(whole / "checkpoints/last.ckpt", weights_only=False)
    by_rank = state["resume"]["rng_by_rank"]
    assert len(by_rank) == 2 and not torch.equal(by_rank[0]["torch"], by_rank[1]["torch"])


def test_config_overrides_and_errors(tmp_path):
    config = _config(tmp_path)
    cfg = load_config(config, ["trainer.max_steps=7", "model.ctc_weight=1.0",
                               "optim.decoder_weight_noise=0"])
    assert cfg.trainer.max_steps == 7 and cfg.model.ctc_weight == 1.0
    with pytest.raises(ConfigError, match=r"^trainer\.bogus"):
        load_config(config, ["trainer.bogus=1"])
    with pytest.raises(ConfigError, match=r"^model\.encoder\.n_heads"):
        load_config(config, ["model.encoder.n_heads=0"])
    with pytest.raises(ConfigError, match=r"^data\.train"):
        parse_config({"model": {}, "data": {}})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    base = parse_config({"model": {"base": "conformer-m", "ctc_weight": 0.3},
                         "data": {"train": "x.jsonl"}})
    assert base.model.encoder.d_model == 256 and base.model.ctc_weight == 0.3
    noisy = load_config(config, ["optim.decoder_weight_noise=0.075",
                                 "optim.weight_noise_start_step=100"])  # the paper recipes' values
    assert [noisy.optim.weight_noise(s) for s in (0, 99, 100)] == [0.0, 0.0, 0.075]
    with pytest.raises(ConfigError, match=r"^optim\.decoder_weight_noise"):
        load_config(config, ["optim.decoder_weight_noise=-1"])
    with pytest.raises(ConfigError, match="no transducer decoder"):
        load_config(config, ["optim.decoder_weight_noise=0.1", "model.ctc_weight=1.0"])

    # YAML 1.1 reads 1e-4 as a string: a number field takes it; a wrong type is named
    small_lr = load_config(config, ["optim.peak_lr=1e-4", "optim.grad_clip=2"])
    assert small_lr.optim.peak_lr == 1e-4 and isinstance(small_lr.optim.grad_clip, float)
    for override, message in [("optim.peak_lr=fast", r"^optim\.peak_lr: expected a number"),
                              ("trainer.max_steps=1e4", r"^trainer\.max_steps: expected an int"),
                              ("trainer.max_steps=true", r"^trainer\.max_steps: expected an int"),
                              ("model.encoder.d_model=[1]",
                               r"^model\.encoder\.d_model: expected an int"),
                              ("model.name=3", r"^model\.name: expected a string"),
                              ("optim.betas=0.9", r"^optim\.betas: expected a list"),
                              ("optim.betas=[0.9,a]", r"^optim\.betas: expected a list"),
                              ("optim.betas=[0.9]", r"^optim\.betas: expected two numbers"),
                              ("data.train=5", r"^data\.train: expected a manifest path or a list"),
                              ("data.train=[5]", r"^data\.train: expected a path, got 5$"),
                              ("data.train=", r"^data\.train: give at least one"),
                              ("data.dev=[a]", r"^data\.dev: expected a path"),
                              ("data.tokenizer=3", r"^data\.tokenizer: expected a mapping"),
                              ("data.tokenizer.path=4", r"^data\.tokenizer\.path: expected a path"),
                              ("data=7", r"^data: expected a mapping, got 7$"),
                              ("model=5", r"^model: expected a mapping, got 5$"),
                              # was "expected a mapping, got NoneType"
                              ("model.spec_augment=null", r"^model\.spec_augment: null; give "
                               r"its settings, or leave it out for the defaults$"),
                              ("out_dir=", r"^out_dir: expected a path, got None$"),
                              ("out_dir=''", r"^out_dir: expected a path, got ''$"),
                              ("seed=abc", r"^seed: expected an integer, got 'abc'$"),
                              ("seed=1.5", r"^seed: expected an integer"),
                              ("seed=null", r"^seed: expected an integer")]:
        with pytest.raises(ConfigError, match=message):
            load_config(config, [override])


def test_data_paths_given_with_set_are_relative_to_the_current_folder(tmp_path, monkeypatch):
    """In the YAML they are relative to its folder; typed on the command line, to where the
    command runs (it looked for them beside the YAML)."""
    (tmp_path / "configs").mkdir()
    config = _config(tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(config, ["data.train=[a.jsonl, /abs/b.jsonl]", "data.dev=dev.jsonl",
                               "data.tokenizer.path=tok/tokenizer.model"])
    assert cfg.data.train == (str(tmp_path / "a.jsonl"), "/abs/b.jsonl")
    assert cfg.data.dev == str(tmp_path / "dev.jsonl")
    assert cfg.data.tokenizer.path == str(tmp_path / "tok" / "tokenizer.model")
    (tmp_path / "configs" / "in.yaml").write_text("data: {train: here.jsonl}\nmodel: {}\n")
    assert load_config(tmp_path / "configs" / "in.yaml").data.train == (
        str(tmp_path / "configs" / "here.jsonl"),)


def test_trainer_settings_that_lightning_refuses_are_config_errors(tmp_path, capsys):
    from conformer_asr.cli import main

    config = _config(tmp_path)
    # checked before Lightning, whose message on a GPU machine named no setting
    with pytest.raises(ConfigError, match=r"^trainer.devices: 'abc' is neither a number of "
                                          r"devices, nor GPU indices such as '0,1', nor 'auto'$"):
        train(load_config(config, ["trainer.devices=abc"]))
    for devices in ["auto", "1", "-1", "0,1", "1,"]:  # as Lightning reads them
        assert load_config(config, [f"trainer.devices='{devices}'"]).trainer.devices == devices
    with pytest.raises(ConfigError, match="^trainer: .*Precision 'fp64x' is invalid"):
        train(load_config(config, ["trainer.precision=fp64x"]))
    from conformer_asr.training.run import _precision  # Lightning's 16 and 32: "expected a string"

    assert [_precision(load_config(config, [f"trainer.precision={p}"])) for p in
            (16, 32, "bf16-mixed")] == ["16", "32", "bf16-mixed"]
    assert main(["train", str(config), "--set", f"data.train={tmp_path / 'none.jsonl'}"]) == 2
    assert capsys.readouterr().err == (  # with how it was found: a copied YAML names none
        f"error: {tmp_path / 'none.jsonl'}: no such manifest (data paths in a YAML file are "
        "read from the file's folder, those given with --set from the current one)\n")
    assert main(["train", str(config), "--set", f"data.train={tmp_path}"]) == 2  # was "no such"
    assert capsys.readouterr().err == f"error: {tmp_path}: a folder, not a manifest\n"


def test_decoder_weight_noise_trains_the_clean_weights():
    """Variational noise: the prediction network runs on w + n, and its gradients are
    those of a copy whose weights were set to w + n by hand (same draws)."""
    cfg = ModelConfig(encoder=EncoderConfig(d_model=32, n_layers=1, n_heads=2, dropout=0.0),
                      vocab_size=12, pred_embed_dim=8, pred_hidden_dim=16, joint_dim=16)
    model = ASRModel(cfg).train()
    targets = torch.randint(1, 12, (3, 5))
    weights = torch.randn(3, 6, 16)

    torch.manual_seed(1)
    out = model.predict(targets, weight_noise=0.1)
    (out * weights).sum().backward()

    reference = copy.deepcopy(model.predictor)
    reference.zero_grad()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    expected = reference(targets)
    (expected * weights).sum().backward()

    torch.testing.assert_close(out, expected)
    for (name, p), q in zip(model.predictor.named_parameters(), reference.parameters(),
                            strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert not torch.allclose(out, model.predict(targets))  # the noise does change the output
    model.eval()
    torch.testing.assert_close(model.predict(targets, weight_noise=0.1), model.predict(targets))


def test_train_cli_reports_bad_config_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {encoder: {d_model: 100, n_heads: 3}}\ndata: {train: x.jsonl}\n")
    proc = subprocess.run([sys.executable, "-m", "conformer_asr.cli", "train", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: model.encoder.d_model: 100 is not divisible by model.encoder.n_heads=3"
    ]


def _manifest_with_nan_clips(folder: Path, n: int, good: bool = True) -> Path:
    """The test clips (unless not ``good``) and ``n`` clips of NaN samples, 1.5 s each."""
    records = []
    if good:
        records = [json.loads(line) for line in (DATA / "manifest.jsonl").read_text().splitlines()]
        for record in records:
            record["audio"] = str(DATA / record["audio"])
    for i in range(n):
        sf.write(folder / f"nan{i}.wav", np.full(24000, np.nan, dtype=np.float32), 16000,
                 subtype="FLOAT")
        records.append({"id": f"nan{i}", "audio": str(folder / f"nan{i}.wav"), "text": "a cat"})
    manifest = folder / "with_nan.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return manifest


@pytest.mark.slow
def test_ddp_training_goes_on_past_a_batch_of_bad_data(tmp_path):
    """Two clips of NaN samples, one utterance per batch: a process whose batch held only
    bad data has nothing to learn from. Lightning cannot skip a step under DDP (it stopped
    the run with a traceback), so that process takes part with zero gradients."""
    manifest = _manifest_with_nan_clips(tmp_path, 2)
    config = _config(tmp_path, devices=2, accelerator="cpu", max_steps=12)
    proc = _train(config, "--set", f"data.train=[{manifest}]", "--set", "data.max_duration=1.9")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout
    skipped = re.findall(r"bad data skipped during training: NaN or infinite samples: (\d+)",
                         proc.stdout)
    assert len(skipped) == 2 and sum(map(int, skipped)) >= 2, skipped  # one line per process


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_a_step_without_any_data_leaves_the_weights_alone(tmp_path, devices):
    """Nothing but NaN clips to train on: no step may move the weights, not even by weight
    decay (under DDP every process takes part in each step with zero gradients, which
    Adam would still apply its weight decay and momentum to)."""
    manifest = _manifest_with_nan_clips(tmp_path, 4, good=False)
    config = _config(tmp_path, devices=devices, accelerator="cpu", max_steps=3,
                     checkpoint_every_steps=1, average_last=3)
    proc = _train(config, "--set", f"data.train=[{manifest}]", "--set", "data.max_duration=1.9",
                  "--set", "optim.weight_decay=0.1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    steps = [torch.load(tmp_path / "exp" / "checkpoints" / f"step-{n}.ckpt",
                        weights_only=False)["state_dict"] for n in (1, 3)]
    assert steps[0].keys() == steps[1].keys()
    for name, weight in steps[0].items():
        assert torch.equal(weight, steps[1][name]), name


def test_too_little_data_for_the_ddp_processes_is_a_one_line_error(tmp_path):
    """The 4 clips fit in one batch of 30 s, which the 2 processes cannot share."""
    config = _config(tmp_path, devices=2, accelerator="cpu")
    proc = _train(config, "--set", "data.max_duration=30")
    out = proc.stdout
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    # both processes share the pipe, so their lines can interleave: find each one's error
    pattern = (r"error: data: the sampler made no batch for process (\d) of 2: is "
               r"data\.max_duration shorter than every utterance, or the manifest too small\?")
    assert sorted(re.findall(pattern, out)) == ["0", "1"]


def test_a_folder_that_holds_no_run_is_not_trained_into(tmp_path):
    """out_dir naming another run's model/ filled it with checkpoints/, config.yaml, ..."""
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    cfg = load_config(_config(tmp_path))
    with pytest.raises(ConfigError, match=rf"^out_dir: {folder} is not empty and holds no "
                                          r"training run \(no config\.yaml\); give a new"):
        train(cfg)
    assert [p.name for p in folder.iterdir()] == ["config.json"]  # not even a lock


def test_a_second_run_in_the_same_folder_stops_at_once(tmp_path):
    config = _config(tmp_path)
    exp = tmp_path / "exp"
    exp.mkdir()
    with (exp / ".lock").open("w") as held:  # as a running `conformer-asr train` holds it
        fcntl.lockf(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        proc = _train(config)
        out = proc.stdout
    assert proc.returncode == 2, out[-3000:]
    assert out.strip().splitlines()[-1] == (
        f"error: out_dir: another run (process 4242) is using {exp}; wait for it, "
        "or stop it")
    assert sorted(p.name for p in exp.iterdir()) == [".lock"]  # nothing written


@pytest.mark.parametrize(("signal_name", "status", "whole_job"), [
    ("SIGINT", 130, False), ("SIGTERM", 143, False), ("SIGINT", 130, True), ("SIGTERM", 143, True)])
def test_ctrl_c_or_sigterm_says_where_the_run_will_resume(tmp_path, signal_name, status,
                                                          whole_job):
    """Stopped early is a failure to whoever waits on the command (SIGTERM: what a job
    scheduler sends; it exited 0). Ctrl-C in a terminal, and SIGTERM from a scheduler such
    as SLURM, reach the DataLoader workers too: the main process failed with a traceback
    when SIGTERM killed its worker."""
    config = _config(tmp_path)
    proc = _train(config, kill=("on_train_batch_end", 7), signal_name=signal_name,
                  whole_job=whole_job)
    out = proc.stdout
    assert proc.returncode == status, out[-3000:]
    last = tmp_path / "exp" / "checkpoints" / "last.ckpt"
    assert f"stopped: the same command resumes from {last} (step 5)\n" in out
    assert "Traceback" not in out


def test_a_run_stopped_before_its_first_checkpoint_takes_a_new_vocab_size(tmp_path):
    """Nothing was trained with its tokenizer yet: a new vocab_size trains a new one (with a
    checkpoint it is an error, below); the same vocab_size keeps it."""
    from conformer_asr.training.run import _tokenizer

    cfg = load_config(_config(tmp_path))
    texts = [c.supervisions[0].text for c in load_manifests(cfg.data.train, DataIssues())]
    exp = Path(cfg.out_dir)
    first = _tokenizer(cfg, texts, exp)
    (exp / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))  # as the run records it
    assert _tokenizer(cfg, texts, exp).sp.serialized_model_proto() == \
        first.sp.serialized_model_proto()
    bigger = load_config(_config(tmp_path), ["data.tokenizer.vocab_size=40"])
    assert first.vocab_size == 30 and _tokenizer(bigger, texts, exp).vocab_size == 40


def test_a_vocab_size_the_text_cannot_fill_is_said(tmp_path, capsys):
    """SentencePiece stops merging where the text runs out of pairs; the run used a smaller
    output layer than its config.yaml said, silently."""
    from conformer_asr.training.run import _tokenizer

    cfg = load_config(_config(tmp_path), ["data.tokenizer.vocab_size=5000"])
    texts = [c.supervisions[0].text for c in load_manifests(cfg.data.train, DataIssues())]
    made = _tokenizer(cfg, texts, Path(cfg.out_dir)).vocab_size
    assert made < 5000
    assert capsys.readouterr().out == (
        f"data.tokenizer.vocab_size: 5000, but the training text makes only {made} word "
        f"pieces; the model outputs those {made}\n")


def test_a_resume_that_cannot_fit_its_checkpoints_stops_before_writing(tmp_path):
    """Another model section, or the run's tokenizer gone: one line naming the problem,
    and config.yaml still describes the checkpoints."""
    config = _config(tmp_path, max_steps=5)
    assert _train(config).returncode == 0
    exp = tmp_path / "exp"
    recorded = (exp / "config.yaml").read_text()
    proc = _train(config, "--set", "trainer.max_steps=8", "--set", "model.encoder.d_model=48")
    assert proc.returncode == 2 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert re.search(r"^error: model: \S+step-5.ckpt|^error: model: \S+last.ckpt holds another "
                     r"model \(model\.\S+: \(\d+", proc.stdout, re.M), proc.stdout[-2000:]
    assert (exp / "config.yaml").read_text() == recorded
    for override, message in [
        ("data.tokenizer.vocab_size=40", "error: data.tokenizer.vocab_size: 40, but the "
         f"checkpoints in {exp} were trained with a tokenizer of vocab_size 30 "
         f"({exp / 'config.yaml'}); resume with 30, or use a new out_dir"),  # was ignored
        ("trainer.max_steps=4", f"error: trainer.max_steps: 4 is below the step "
         f"{exp / 'checkpoints' / 'last.ckpt'} has reached (5); give 5 or more (that many "
         "finishes the run: it averages the last checkpoints)"),  # rewrote config.yaml
        # the restored schedule kept the old peak, while config.yaml recorded the new one
        ("optim.peak_lr=0.1", f"error: optim.peak_lr: 0.1, but the run in {exp} started "
         f"with 0.003 ({exp / 'config.yaml'}); a resume keeps its settings: give those, or "
         "use a new out_dir"),
        ("model.encoder.dropout=0.3", f"error: model.encoder.dropout: 0.3, but the run in "
         f"{exp} started with 0.1 ({exp / 'config.yaml'}); a resume keeps its settings: give "
         "those, or use a new out_dir"),
        # a whole section switched off: its fields were compared, and it had none
        ("data.augment=null", f"error: data.augment: None, but the run in {exp} started "
         "with {"),
    ]:
        proc = _train(config, "--set", override)
        assert proc.returncode == 2, proc.stdout[-3000:]
        assert proc.stdout.strip().splitlines()[-1].startswith(message)
        assert (exp / "config.yaml").read_text() == recorded
    (exp / "tokenizer" / "tokenizer.model").unlink()
    proc = _train(config, "--set", "trainer.max_steps=8")
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == (
        f"error: {exp / 'tokenizer' / 'tokenizer.model'}: missing, and the checkpoints in {exp} "
        "need the tokenizer they were trained with; put it back, or use a new out_dir")


def test_a_run_resumes_on_its_corpus_moved_elsewhere(tmp_path):
    """Its manifests named anew once the old ones are gone; while they are there, another
    corpus is still refused."""
    corpus = Path(shutil.copytree(DATA, tmp_path / "corpus"))
    raw = yaml.safe_load(_config(tmp_path, max_steps=3).read_text())
    raw["data"].update(train=str(corpus / "manifest.jsonl"), dev=str(corpus / "manifest.jsonl"))
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert _train(config).returncode == 0
    elsewhere = Path(shutil.copytree(corpus, tmp_path / "elsewhere"))
    settings = [f"data.{key}={elsewhere / 'manifest.jsonl'}" for key in ("train", "dev")]
    args = [arg for setting in [*settings, "trainer.max_steps=4"] for arg in ("--set", setting)]
    proc = _train(config, *args)
    assert proc.returncode == 2 and "error: data.dev: " in proc.stdout, proc.stdout[-2000:]
    shutil.rmtree(corpus)
    proc = _train(config, *args)
    assert proc.returncode == 0 and "resuming from" in proc.stdout, proc.stdout[-3000:]


def test_a_short_run_without_a_dev_set_logs_and_draws_its_curves(tmp_path):
    """The README's fine-tuning example (10 steps, no dev set) left logs/ empty and drew
    no curves: rows were logged every 20 steps and the curves drawn after validations."""
    config = _config(tmp_path, max_steps=3, log_every_steps=20)
    proc = _train(config, "--set", "data.dev=null")
    assert proc.returncode == 0, proc.stdout[-3000:]
    with (tmp_path / "exp" / "logs" / "metrics.csv").open(newline="") as f:
        losses = [row["train_loss"] for row in csv.DictReader(f) if row["train_loss"]]
    assert len(losses) == 1 and np.isfinite(float(losses[0]))
    assert (tmp_path / "exp" / "curves.png").stat().st_size > 0


def test_log_rows_are_numbered_like_the_checkpoints(tmp_path):
    """metrics.csv numbered each step's rows from 0: the 10th step's validation said 9
    beside checkpoints/step-10.ckpt. A row's step is now the steps done, as the learning
    rate it logs shows (the Noam schedule's value at that step)."""
    config = _config(tmp_path, max_steps=10, average_last=2)
    proc = _train(config)
    assert proc.returncode == 0, proc.stdout[-3000:]
    with (tmp_path / "exp" / "logs" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["val_wer"]] == [5, 10]
    train_rows = [r for r in rows if r["lr"]]
    assert [int(r["step"]) for r in train_rows] == [2, 4, 6, 8, 10]
    for row in train_rows:
        assert float(row["lr"]) == pytest.approx(0.003 * noam_factor(int(row["step"]), 5))
    assert _checkpoint_files(tmp_path / "exp" / "checkpoints") == [
        "last.ckpt", "step-5.ckpt", "step-10.ckpt"]


def test_curves_that_cannot_be_drawn_do_not_stop_training(tmp_path):
    """A full disk at curves.png ended the run (its checkpoints were fine)."""
    config = _config(tmp_path, max_steps=5)
    (tmp_path / "exp" / "curves.png").mkdir(parents=True)  # cannot be written over
    proc = _train(config)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (f"warning: {tmp_path / 'exp' / 'curves.png'}: Is a directory; the curves are drawn "
            "again after the next validation") in proc.stdout
    assert (tmp_path / "exp" / "model" / "model.safetensors").is_file()


def test_settings_that_cannot_train_are_one_line_errors(tmp_path):
    """A dev set with no usable utterance (it failed at the first validation), a learning
    rate that is not finite (it trained a model of NaNs), a vocabulary smaller than the
    text's characters (a SentencePiece traceback)."""
    config = _config(tmp_path)
    missing = tmp_path / "dev.jsonl"
    missing.write_text('{"id": "a", "audio": "gone.wav", "text": "a cat"}\n')
    for override, message in [
        (f"data.dev={missing}", "error: data.dev: no usable utterances in the dev manifest"),
        ("optim.peak_lr=.inf", "error: optim.peak_lr: must be a positive number, got inf"),
        ("data.tokenizer.vocab_size=5", "error: data.tokenizer.vocab_size: 5 is too small: the "
                                        "training text needs 23 pieces for its characters and "
                                        "the special ones"),
    ]:
        proc = _train(config, "--set", override)
        assert proc.returncode == 2 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
        assert proc.stdout.strip().splitlines()[-1] == message
        # the out_dir it created held only its lock (and an empty tokenizer folder): gone
        assert not (tmp_path / "exp").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    proc = _train(config, "--set", f"out_dir={kept}", "--set", f"data.dev={missing}")
    assert proc.returncode == 2 and kept.is_dir()  # not created by the run: left as it was


def test_an_unreadable_checkpoint_is_passed_over(tmp_path):
    config = _config(tmp_path, max_steps=10)
    proc = _train(config)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    folder = tmp_path / "exp" / "checkpoints"
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # as a copy cut short leaves it

    proc = _train(config, "--set", "trainer.max_steps=12")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert (f"{last}: cannot be read (PytorchStreamReader failed reading zip archive: failed "
            "finding central directory); trying an older checkpoint") in out
    assert f"resuming from {folder / 'step-10.ckpt'}" in out
    assert torch.load(last, weights_only=False)["global_step"] == 12

    # one to average cut short: left out, named, where it ended the run with a traceback
    newest = folder / "step-12.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])
    proc = _train(config, "--set", "trainer.max_steps=12")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert (f"{newest}: cannot be read (PytorchStreamReader failed reading zip archive: "
            "failed finding central directory); averaging the others") in out
    info = json.loads((tmp_path / "exp" / "model" / "config.json").read_text())["info"]
    assert info["averaged_checkpoints"] == ["last.ckpt"]  # the same step, whole

    for path in folder.glob("*.ckpt"):
        path.write_bytes(b"not a checkpoint")
    proc = _train(config, "--set", "trainer.max_steps=14")
    out = proc.stdout
    assert f"{last}: cannot be read (not a PyTorch checkpoint); trying an older" in out  # (was
    # torch's advice to save with the zip format for mmap)
    assert proc.returncode == 2, out[-3000:]
    assert out.strip().splitlines()[-1] == (
        f"error: {folder}: none of its checkpoints can be read; move them away to start afresh")


def test_noam_schedule_peaks_at_warmup():
    assert noam_factor(50, 100) == pytest.approx(0.5)
    assert noam_factor(100, 100) == pytest.approx(1.0)
    assert noam_factor(400, 100) == pytest.approx(0.5)


def _cuts_and_tokenizer(count: int) -> tuple[list, Tokenizer]:
    """The first ``count`` cuts of the test manifest and a tokenizer trained on them."""
    cuts = list(load_manifests([str(DATA / "manifest.jsonl")], DataIssues()))[:count]
    tokenizer = Tokenizer.train([c.supervisions[0].text for c in cuts],
                                Path(tempfile.mkdtemp()) / "tok", vocab_size=30)
    return cuts, tokenizer


@pytest.mark.parametrize("rank", [0, 1])
def test_a_small_set_makes_batches_for_every_process(monkeypatch, rank):
    """80 s of audio in 20 s batches for 2 processes: the 8 buckets the set was cut into
    held 10 s each, none a whole batch, so each process's sampler made no batch at all
    (each bucket's partial batch is dropped, for equal batch counts)."""
    from types import SimpleNamespace

    from conformer_asr.data.datamodule import SpeechDataModule

    cuts, tokenizer = _cuts_and_tokenizer(4)
    many = CutSet.from_cuts(  # of 80 lengths, 0.5-1.2 s: buckets split them by length
        cuts[n % 4].truncate(duration=0.5 + 0.009 * n).with_id(f"u{n}") for n in range(80))
    monkeypatch.setenv("WORLD_SIZE", "2")  # what Lhotse's samplers read the shard from
    monkeypatch.setenv("RANK", str(rank))
    cfg = ModelConfig(encoder=EncoderConfig(d_model=32, n_layers=1, n_heads=2),
                      vocab_size=tokenizer.vocab_size)
    data = SpeechDataModule(many, None, tokenizer, cfg, None, max_duration=20, num_buckets=20,
                            num_workers=0, seed=0)
    data.trainer = SimpleNamespace(world_size=2)
    batches = list(data.train_dataloader().sampler)
    assert batches and all(sum(c.duration for c in b) <= 20 for _, b in batches)


def test_ddp_processes_share_out_an_epoch_without_overlap(monkeypatch):
    """Every process shuffles the epoch alike (seed + epoch), and Lhotse then deals the
    batches out: with a shuffle of their own, 2 processes met 66 of 400 utterances both."""
    from types import SimpleNamespace

    from conformer_asr.data.datamodule import SpeechDataModule

    cuts, tokenizer = _cuts_and_tokenizer(4)
    many = CutSet.from_cuts(cuts[n % 4].truncate(duration=0.5 + 0.7 * n / 400)
                            .with_id(f"u{n}") for n in range(400))
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = ModelConfig(encoder=EncoderConfig(d_model=32, n_layers=1, n_heads=2),
                      vocab_size=tokenizer.vocab_size)
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        data = SpeechDataModule(many, None, tokenizer, cfg, None, max_duration=20,
                                num_buckets=20, num_workers=0, seed=0)
        data.trainer = SimpleNamespace(world_size=2)
        shares.append({cut.id for _, batch in data.train_dataloader().sampler for cut in batch})
    assert len(shares[0]) > 150 and len(shares[1]) > 150 and not shares[0] & shares[1]


def test_each_epoch_draws_from_the_whole_training_set():
    """Lhotse's bucketing sampler takes cuts in their order, 20,000 at a time: given 20,500
    utterances of one manifest (or speaker) and then 2,000 of another, an epoch's first
    batches came from the first alone, and so did its first 5 batches."""
    from types import SimpleNamespace

    from conformer_asr.data.datamodule import SpeechDataModule

    cuts, tokenizer = _cuts_and_tokenizer(4)
    blocks = CutSet.from_cuts(
        cuts[n % 4].truncate(duration=0.5 + 0.0001 * (n % 7000)).with_id(f"{block}{n}")
        for block, count in (("a", 20500), ("b", 2000)) for n in range(count))
    cfg = ModelConfig(encoder=EncoderConfig(d_model=32, n_layers=1, n_heads=2),
                      vocab_size=tokenizer.vocab_size)
    data = SpeechDataModule(blocks, None, tokenizer, cfg, None, max_duration=20, num_buckets=4,
                            num_workers=0, seed=0)
    data.trainer = SimpleNamespace(world_size=1)
    sampler = data.train_dataloader().sampler
    for _ in range(2):  # epochs
        batches = iter(sampler)
        assert "b" in {cut.id[0] for _ in range(5) for cut in next(batches)[1]}


def test_a_manifest_listed_twice_is_read_once():
    issues = DataIssues()
    manifest = str(DATA / "manifest.jsonl")
    assert len(load_manifests([manifest, manifest], issues)) == 4
    assert issues.counts == {"duplicate id": 4}


def test_a_manifest_whose_ids_an_earlier_one_gave_is_an_error(tmp_path):
    """A second manifest with copied ids (e.g. the same sentences read by new voices)
    would otherwise be dropped whole, with only a count to show for it."""
    again = tmp_path / "again.jsonl"
    again.write_text("".join(
        json.dumps({**json.loads(line), "audio": str(DATA / json.loads(line)["audio"])}) + "\n"
        for line in (DATA / "manifest.jsonl").read_text().splitlines() if line.strip()))
    with pytest.raises(ManifestError, match=r"again.jsonl: all 4 utterance ids are already in"):
        load_manifests([str(DATA / "manifest.jsonl"), str(again)], DataIssues())


def test_dataset_skips_and_counts_audio_with_nan(tmp_path):
    """One NaN sample would make the step's loss and every weight NaN."""
    cuts, tokenizer = _cuts_and_tokenizer(2)
    audio, _ = sf.read(DATA / "clip1.wav", dtype="float32")
    audio[50] = np.nan
    sf.write(tmp_path / "nan.wav", audio, 16000, subtype="FLOAT")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "nan", "audio": "nan.wav", "text": "the cat"}) + "\n")
    cuts += list(load_manifests([str(manifest)], DataIssues()))
    cfg = ModelConfig(encoder=EncoderConfig(d_model=32, n_layers=1, n_heads=2),
                      vocab_size=tokenizer.vocab_size)
    batch = SpeechDataset(tokenizer, cfg)[(0, CutSet.from_cuts(cuts))]
    assert len(batch) == 2 and torch.isfinite(batch.waves).all()
    assert batch.issues.counts == {"NaN or infinite samples": 1}
    assert batch.issues.examples["NaN or infinite samples"] == ["nan"]


def test_dataset_warps_each_utterance_by_its_own_drawn_factor():
    """With VTLP on, each utterance's features are those of the filterbank warped by the
    factor its own (seed, epoch, id) stream draws (the waveform steps are off here and
    draw nothing, so the factor is the stream's first draw)."""
    cuts, tokenizer = _cuts_and_tokenizer(3)
    cfg = ModelConfig(encoder=EncoderConfig(d_model=32, n_layers=1, n_heads=2),
                      vocab_size=tokenizer.vocab_size)
    augment = AugmentConfig(speed=(1.0,), noise_prob=0.0, reverb_prob=0.0, gain_db=(0, 0),
                            vtlp=(0.85, 1.15))
    warped = SpeechDataset(tokenizer, cfg, Augmenter(augment), seed=3)[(2, CutSet.from_cuts(cuts))]
    plain = SpeechDataset(tokenizer, cfg)[(2, CutSet.from_cuts(cuts))]
    assert plain.warps is None
    task = ASRTask(cfg, OptimConfig(), tokenizer)
    (warped_feats, _), (plain_feats, _) = task.features(warped), task.features(plain)
    for i, cut in enumerate(cuts):
        factor = Augmenter(augment).warp_factor(utterance_rng(3, 2, cut.id))
        reference = LogMelFeatures(cfg.features)
        reference.filters = mel_filterbank(512, 80, 16000, factor)
        samples = torch.from_numpy(cut.load_audio().mean(axis=0))
        expected, n = reference(samples[None], torch.tensor([samples.numel()]))
        torch.testing.assert_close(warped_feats[i, : int(n)], expected[0], atol=1e-4, rtol=1e-4)
        assert (warped_feats[i] - plain_feats[i]).abs().max() > 0.1


def test_features_are_float32_in_a_bf16_step():
    """The task computes the batch's features itself (on the model's device): inside the
    step's bf16 autocast they must still be float32, the same as outside it (bf16 would
    round the mel energies before their logarithm)."""
    cuts, tokenizer = _cuts_and_tokenizer(2)
    cfg = ModelConfig(encoder=EncoderConfig(d_model=32, n_layers=1, n_heads=2),
                      vocab_size=tokenizer.vocab_size)
    batch = SpeechDataset(tokenizer, cfg)[(0, CutSet.from_cuts(cuts))]
    task = ASRTask(cfg, OptimConfig(), tokenizer)
    expected, expected_lengths = LogMelFeatures(cfg.features)(batch.waves, batch.wave_lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, lengths = task.features(batch)
    assert feats.dtype == torch.float32
    torch.testing.assert_close(feats, expected)
    assert lengths.tolist() == expected_lengths.tolist()


def test_validation_reports_the_mean_loss_per_utterance():
    """val_loss averages over utterances, whatever the batch sizes (it once divided the
    summed loss by the number of batches)."""
    cuts, tokenizer = _cuts_and_tokenizer(4)
    cfg = ModelConfig(encoder=EncoderConfig(d_model=32, n_layers=1, n_heads=2),
                      vocab_size=tokenizer.vocab_size, ctc_weight=1.0)
    task = ASRTask(cfg, OptimConfig(), tokenizer)
    dataset = SpeechDataset(tokenizer, cfg)
    batches = [dataset[(0, CutSet.from_cuts(part))] for part in (cuts[:3], cuts[3:4])]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    with _without_lightning_chatter():  # the warnings `train` hides
        metrics = trainer.validate(task, dataloaders=loader, verbose=False)[0]
    task.model.eval()
    with torch.no_grad():
        losses = [float(task.model(*task.features(b), b.targets, b.target_lengths).loss)
                  * len(b) for b in batches]
    assert metrics["val_loss"] == pytest.approx(sum(losses) / 4, rel=1e-5)


def _fit_boring(folder: Path, max_steps: int, every: int, keep: int, resume: bool = False,
                **trainer) -> None:
    """Lightning's BoringModel with only ``KeepLastCheckpoints`` writing to ``folder``."""
    from lightning.pytorch.demos.boring_classes import BoringModel

    from conformer_asr.training.checkpoints import KeepLastCheckpoints

    keeper = KeepLastCheckpoints(folder, every_steps=every, keep=keep)
    trainer = L.Trainer(
        max_steps=max_steps, callbacks=[keeper],
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=folder, **{"limit_val_batches": 0, **trainer},
    )
    with _without_lightning_chatter():  # the warnings `train` hides
        trainer.fit(BoringModel(), ckpt_path=str(folder / "last.ckpt") if resume else None)


def _checkpoint_files(folder: Path) -> list[str]:
    return sorted((p.name for p in folder.glob("*.ckpt")), key=lambda n: (len(n), n))


def _step_of(path: Path) -> int:
    return torch.load(path, weights_only=False)["global_step"]


def test_resume_with_other_checkpoint_settings_keeps_the_newest(tmp_path):
    _fit_boring(tmp_path, max_steps=6, every=1, keep=6)
    assert _checkpoint_files(tmp_path) == ["last.ckpt"] + [f"step-{i}.ckpt" for i in range(1, 7)]
    _fit_boring(tmp_path, max_steps=8, every=1, keep=2, resume=True)  # Lightning kept all 8
    assert _checkpoint_files(tmp_path) == ["last.ckpt", "step-7.ckpt", "step-8.ckpt"]
    # another interval: Lightning restores no callback state and wrote last-v1.ckpt
    _fit_boring(tmp_path, max_steps=12, every=2, keep=2, resume=True)
    assert _checkpoint_files(tmp_path) == ["last.ckpt", "step-10.ckpt", "step-12.ckpt"]
    assert _step_of(tmp_path / "last.ckpt") == 12


def test_checkpoints_come_at_their_steps_and_at_the_last(tmp_path):
    """Epochs of 3 batches, validation every 5 steps, a checkpoint every 3: Lightning, given
    a metric to rank checkpoints by, put off those due at an epoch's end to the next
    validation (step-5, step-10 instead of step-3, 6, 9, 12), and kept no final step."""
    _fit_boring(tmp_path, max_steps=13, every=3, keep=10, limit_train_batches=3,
                limit_val_batches=1, val_check_interval=5, check_val_every_n_epoch=None)
    assert _checkpoint_files(tmp_path) == [
        "last.ckpt", "step-3.ckpt", "step-6.ckpt", "step-9.ckpt", "step-12.ckpt", "step-13.ckpt"]
    assert [_step_of(tmp_path / f"step-{i}.ckpt") for i in (3, 13)] == [3, 13]
    assert _step_of(tmp_path / "last.ckpt") == 13


def _checkpoints_read_as_model_folders(run: Path, folder: Path, tuned: Path,
                                       tmp_path: Path) -> None:
    """design.md's `model-info NAME_OR_CHECKPOINT`; `--model` and `load_model` take one too.
    ``run`` averaged its last checkpoint alone into ``folder``; ``tuned`` started from that
    folder, moved away since."""
    from conformer_asr import load_model

    checkpoint = run / "checkpoints" / "last.ckpt"
    from_checkpoint, from_folder = load_model(checkpoint), load_model(folder)
    for name, value in from_folder.model.state_dict().items():
        torch.testing.assert_close(from_checkpoint.model.state_dict()[name], value, msg=name)
    clip = DATA / "clip1.wav"
    assert from_checkpoint.transcribe(clip) == from_folder.transcribe(clip)
    assert load_model(tuned / "checkpoints" / "last.ckpt").transcribe(clip)  # its own tokenizer
    proc = subprocess.run([sys.executable, "-m", "conformer_asr.cli", "model-info",
                           str(checkpoint)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["params"] == json.loads(subprocess.run(
        [sys.executable, "-m", "conformer_asr.cli", "model-info", str(folder)],
        capture_output=True, text=True, timeout=120).stdout)["params"]
    assert info["info"] == {"checkpoint": str(checkpoint)}
    alone = tmp_path / "alone.ckpt"  # away from its run: no architecture to read
    alone.write_bytes(checkpoint.read_bytes())
    with pytest.raises(ModelDirError, match=f"^{alone}: a checkpoint without its run's "):
        load_model(alone)


def test_init_from_starts_a_run_from_a_trained_model_folder(tmp_path):
    """A fine-tuning run takes the folder's architecture, tokenizer and weights; its model
    section may change dropout and the heads but not the encoder."""
    source = tmp_path / "source"
    source.mkdir()
    proc = _train(_config(source, max_steps=2, average_last=1))
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    folder = source / "exp" / "model"

    raw = yaml.safe_load(_config(source).read_text())
    raw["data"].pop("tokenizer")
    raw["model"] = {"encoder": {"dropout": 0.0}}
    raw.update(init_from=str(folder), out_dir=str(tmp_path / "tuned"),
               optim={"peak_lr": 1e-9, "warmup_steps": 1})  # the weights barely move
    raw["trainer"].update(max_steps=1)
    tuned_yaml = tmp_path / "tuned.yaml"
    tuned_yaml.write_text(yaml.safe_dump(raw))
    proc = _train(tuned_yaml)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert f"starting from the weights of {folder} (2 steps)" in out

    tuned, start = _weights(tmp_path / "tuned"), _weights(source / "exp")
    assert tuned.keys() == start.keys()
    batch_norm_stats = ("running_mean", "running_var", "num_batches_tracked")
    for name, value in start.items():
        if not name.endswith(batch_norm_stats):
            torch.testing.assert_close(tuned[name], value, atol=1e-6, rtol=0, msg=name)
    counters = [name for name in start if name.endswith("num_batches_tracked")]
    assert counters and all(tuned[n] == start[n] + 1 for n in counters)  # in train mode
    config = json.loads((tmp_path / "tuned" / "model" / "config.json").read_text())
    assert config["model"]["encoder"]["dropout"] == 0.0
    assert config["model"]["encoder"]["d_model"] == 32
    assert config["info"]["init_from"]["info"]["steps"] == 2
    assert (tmp_path / "tuned" / "model" / "tokenizer.model").read_bytes() == \
        (folder / "tokenizer.model").read_bytes()

    # the source folder is gone; the run resumes from its own folder and still records
    # what it started from
    folder.rename(tmp_path / "moved")
    raw["trainer"].update(max_steps=2)
    tuned_yaml.write_text(yaml.safe_dump(raw))
    proc = _train(tuned_yaml)
    out = proc.stdout
    assert proc.returncode == 0 and "resuming from" in out, out[-3000:]
    config = json.loads((tmp_path / "tuned" / "model" / "config.json").read_text())
    assert config["info"]["steps"] == 2 and config["info"]["init_from"]["info"]["steps"] == 2
    assert config["model"]["encoder"]["d_model"] == 32
    recorded = (tmp_path / "tuned" / "config.yaml").read_text()
    other = {**raw, "init_from": "default"}  # ignored by the resume, and recorded as the run's
    tuned_yaml.write_text(yaml.safe_dump(other))
    proc = _train(tuned_yaml)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith(
        f"error: init_from: '{BUNDLED_DIR.resolve()}', but the run in {tmp_path / 'tuned'} "
        f"started with '{folder}'")
    assert (tmp_path / "tuned" / "config.yaml").read_text() == recorded
    tuned_yaml.write_text(yaml.safe_dump(raw))
    _checkpoints_read_as_model_folders(source / "exp", tmp_path / "moved", tmp_path / "tuned",
                                       tmp_path)
    (tmp_path / "moved").rename(folder)

    with pytest.raises(ConfigError, match=r"^data\.tokenizer: init_from"):
        parse_config({**raw, "data": {**raw["data"], "tokenizer": {"vocab_size": 30}}})
    with pytest.raises(ConfigError, match=r"^init_from: .*no such model folder"):
        parse_config({**raw, "init_from": str(tmp_path / "missing"),
                      "out_dir": str(tmp_path / "new")})
    checkpoint = source / "exp" / "checkpoints" / "last.ckpt"  # a model, but not a start
    with pytest.raises(ConfigError, match=f"^init_from: {checkpoint}: a training checkpoint; "):
        parse_config({**raw, "init_from": str(checkpoint), "out_dir": str(tmp_path / "new")})
    with pytest.raises(ConfigError, match=r"^model\.base"):
        parse_config({**raw, "model": {"base": "conformer-s"}})
    # named before any work, not as a page of missing or mismatched weights
    with pytest.raises(ConfigError, match=r"^model\.encoder\.d_model: 64, but init_from's "
                                          r"encoder has 32; its weights keep their shapes "
                                          r"\(leave model\.encoder\.d_model out\)$"):
        parse_config({**raw, "model": {"encoder": {"d_model": 64}},
                      "out_dir": str(tmp_path / "wider")})
    with pytest.raises(ConfigError, match=r"^model\.encoder\.n_layers: 2, but init_from's "):
        parse_config({**raw, "model": {"encoder": {"n_layers": 2}},
                      "out_dir": str(tmp_path / "deeper")})
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    for name in ("config.json", "tokenizer.model"):
        (no_weights / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(ConfigError, match=r"^init_from: .*no model\.safetensors"):
        train(parse_config({**raw, "init_from": str(no_weights),
                            "out_dir": str(tmp_path / "no-weights-run")}))
    # a resume reads the architecture from the run's config.yaml, and so does a checkpoint
    # read as a model: damaged, the resume was a traceback
    recorded = tmp_path / "tuned" / "config.yaml"
    checkpoint = tmp_path / "tuned" / "checkpoints" / "last.ckpt"
    for damage in ("model: [1, 2\n", "model: {encoder: 3}\n", "- a list\n", "\xff\n"):
        recorded.write_bytes(damage.encode("latin-1"))
        message = f"^{re.escape(str(recorded))}: not a run's recorded settings"
        with pytest.raises(ConfigError, match=message):
            parse_config(raw)
        with pytest.raises(ModelDirError, match=message):
            read_checkpoint_config(checkpoint)

    # the heads may change: a narrower joint and the pruned loss's simple joint start new
    raw["model"] = {"joint_dim": 16, "rnnt_prune_range": 2}
    raw.update(out_dir=str(tmp_path / "pruned"))
    raw["trainer"].update(max_steps=1)
    tuned_yaml.write_text(yaml.safe_dump(raw))
    proc = _train(tuned_yaml)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert "(2 steps); new heads: joint, simple_joint" in out
    pruned = _weights(tmp_path / "pruned")
    kept = [n for n in start if n.startswith(("encoder.", "ctc_head.", "predictor."))]
    assert len(kept) == len([n for n in pruned if not n.startswith(("joint.", "simple_joint."))])
    for name in kept:
        if not name.endswith(batch_norm_stats):
            torch.testing.assert_close(pruned[name], start[name], atol=1e-6, rtol=0, msg=name)
    assert any(n.startswith("simple_joint.") for n in pruned)
