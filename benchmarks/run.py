"""Run every benchmark, print a table and write JSON.

    python -m benchmarks.run [--sizes s m] [--threads 2] [--repeats 5]
                             [--json results.json] [--only train ...] [--quick]
                             [--device cuda] [--precision bf16] [--train-batch 64]

See benchmarks/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import platform
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from conformer_asr.cli import positive_count
from conformer_asr.device import device_flag
from conformer_asr.files import check_writable, write_atomically
from conformer_asr.malloc import keep_freed_memory
from conformer_asr.models import ASRModel
from conformer_asr.models.quantize import bf16_kernels_are_fast, full_range_int8_is_exact

from . import cases
from .cases import Row, Settings
from .workloads import FULL, QUICK, model_config


def _number(value: float | None, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.1f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _notes(row: Row) -> str:
    extra, parts = row.extra, []
    if "peak_over_logits_fast" in extra:
        parts.append(f"peak {extra['peak_over_logits_fast']:.2f}x / "
                     f"{extra['peak_over_logits_baseline']:.2f}x logits")
    elif "logits_mb" in extra:
        parts.append(f"logits {extra['logits_mb']:.0f} MB")
    if "peak_flops" in extra:
        parts.append(f"MFU of {extra['peak_flops'] / 1e9:.1f} GFLOP/s")
    if "max_abs_diff" in extra:
        parts.append(f"output differs by {extra['max_abs_diff']:.2g} at most")
    if "compile_s" in extra:
        parts.append(f"first call {extra['compile_s']:.0f} s (compiling)")
    if "rtf_fast" in extra:
        parts.append(f"RTF {extra['rtf_fast']:.3f} / {extra['rtf_baseline']:.3f}")
    if "audio_s_per_s_fast" in extra:
        parts.append(f"{extra['audio_s_per_s_fast']:.0f} / "
                     f"{extra['audio_s_per_s_baseline']:.0f} audio s/s per worker")
    if "audio_h_per_h_fast" in extra:
        parts.append(f"{extra['audio_h_per_h_fast']:.0f} / "
                     f"{extra['audio_h_per_h_baseline']:.0f} audio h/h")
    if "tokens_per_frame" in extra:
        parts.append(f"{extra['tokens_per_frame']:.2f} tokens/frame")
    if "ms_per_step_fast" in extra:
        parts.append(f"{extra['ms_per_step_fast']:.2f} / {extra['ms_per_step_baseline']:.2f} "
                     "ms a step")
    if "audio_seconds" in extra:
        parts.append(f"{extra['audio_seconds']:.1f} s of audio")
    parts += [f"{goal}: {'yes' if met else 'NO'}" for goal, met in row.targets.items()]
    return "; ".join(parts)


# (header, width, cell) of each column; widths are minimums.
COLUMNS: list[tuple[str, int, Callable[[Row], str]]] = [
    ("benchmark", 27, lambda r: r.benchmark),
    ("size / shape", 19, lambda r: r.size),
    ("batch", 5, lambda r: str(r.batch)),
    ("baseline", 9, lambda r: r.baseline),
    ("fast ms", 9, lambda r: _number(r.fast_s, scale=1e3)),
    ("base ms", 9, lambda r: _number(r.baseline_s, scale=1e3)),
    ("speed-up", 8, lambda r: f"{r.speedup:.2f}x"),
    ("GFLOP", 7, lambda r: _number(r.gflop)),
    ("MFU fast", 8, lambda r: _percent(r.mfu_fast)),
    ("MFU base", 8, lambda r: _percent(r.mfu_baseline)),
    ("peak MB fast", 12, lambda r: _number(r.peak_mb_fast)),
    ("peak MB base", 12, lambda r: _number(r.peak_mb_baseline)),
    ("notes and targets", 0, _notes),
]


def format_line(cells: list[str]) -> str:
    return "  ".join(cell.rjust(width) if i > 1 and width else cell.ljust(width)
                     for i, (cell, (_, width, _)) in enumerate(zip(cells, COLUMNS, strict=True)))


def format_row(row: Row) -> str:
    return format_line([cell(row) for _, _, cell in COLUMNS])


BENCHMARKS = ["encoder", "int8", "train", "transcribe", "adapt", "loss", "loader"]
# Opt-in: inductor spends minutes compiling each model on a CPU; CUDA graphs need a GPU.
OPTIONAL = ["compile", "graphs"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=["s", "m", "l"], default=["s", "m"],
                        help="model sizes (conformer-s, -m, -l)")
    # counts >= 1: 0 threads was a torch traceback, 0 repeats the default, silently
    parser.add_argument("--threads", type=positive_count, default=None,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=positive_count, default=None,
                        help="timed calls of each path; the median is reported "
                             f"(default {FULL.repeats}, {QUICK.repeats} with --quick)")
    parser.add_argument("--json", type=Path, default=None,
                        help="write the results here too (default: only the printed table, "
                             "so that a --quick or --only run overwrites no saved results)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS + OPTIONAL, default=BENCHMARKS,
                        help="run only these benchmarks (default: all but compile, the "
                             "torch.compile rows, and graphs, the CUDA graph rows)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny models and inputs, one repeat: checks that everything runs")
    parser.add_argument("--device", type=device_flag, default="cpu",
                        help="torch device, e.g. cuda (the int8 rows run on the CPU in fp32 "
                             "only)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="fp32, or bf16 autocast for both paths (auto: bf16 on a GPU)")
    parser.add_argument("--train-batch", type=positive_count, default=None,
                        help="utterances per training step (default: the workload's, 8)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.json is not None:  # found out now, not after the first row
        try:
            if args.json.is_dir():
                raise IsADirectoryError(errno.EISDIR, "a folder, not a file")
            args.json.parent.mkdir(parents=True, exist_ok=True)
            check_writable(args.json)
        except OSError as error:
            print(f"error: --json {args.json}: {error.strerror or error}", file=sys.stderr)
            return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # as the command line does: both paths measured with it
    device = torch.device(args.device)
    if device.type != "cpu":  # the default-device mode costs every torch call some time
        torch.set_default_device(device)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type != "cpu")
    torch.manual_seed(0)
    work = QUICK if args.quick else FULL
    if args.train_batch is not None:
        work = dataclasses.replace(work, train_batch=args.train_batch)
    matmul_size = work.matmul_size if device.type == "cpu" else 2 * work.matmul_size
    repeats = work.repeats if args.repeats is None else args.repeats
    settings = Settings(work, repeats, 0.0, matmul_size, bf16)
    peak = settings.measure_peak()
    settings = dataclasses.replace(settings, peak_flops=peak)
    where = (f"{torch.get_num_threads()} threads" if device.type == "cpu"
             else torch.cuda.get_device_name(device))
    cpu = {"cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "int8_activation_bits": 8 if full_range_int8_is_exact() else 7,
           "bf16_convolutions": bf16_kernels_are_fast(), "keep_freed_memory": kept}
    print(f"torch {torch.__version__}, {where}, {'bf16' if bf16 else 'float32'} matmul "
          f"peak {peak / 1e9:.1f} GFLOP/s ({matmul_size}^2 mm), "
          f"median of {settings.repeats} interleaved calls; CPU {cpu}", flush=True)
    only = [b for b in args.only if b != "int8" or (device.type == "cpu" and not bf16)]
    if "int8" in args.only and "int8" not in only:
        print("int8 rows skipped: they compare int8 with float32, on the CPU", flush=True)
    if "graphs" in only and device.type != "cuda":
        only.remove("graphs")
        print("CUDA graph rows skipped: they need a CUDA GPU", flush=True)
    print(format_line([header for header, _, _ in COLUMNS]), flush=True)
    rows: list[Row] = []
    failures: list[str] = []
    configs = {}
    results = {
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(),
                    "platform": platform.platform(), "device": where,
                    "matmul_peak_flops": peak, "matmul_size": matmul_size, **cpu},
        "settings": {"quick": args.quick, "sizes": args.sizes, "only": only,
                     "precision": "bf16" if bf16 else "fp32",
                     "repeats": settings.repeats,
                     "workload": dataclasses.asdict(work), "models": configs},
        "rows": rows,
        "failures": failures,
        "complete": False,
    }

    def save() -> None:
        if args.json is not None:
            write_atomically(args.json, json.dumps(results, indent=2, default=_as_dict) + "\n")

    def add(label: str, measure: Callable[..., Row], *args: object, **kwargs: object) -> None:
        """Runs one row, ``measure(*args, **kwargs)``; a row that fails is reported and the
        others still run. The JSON is rewritten after each row, so a run stopped at a time
        limit keeps the rows it measured."""
        try:
            row = measure(*args, **kwargs)
        except Exception as error:  # any failure of one row
            traceback.print_exc()
            failures.append(f"{label}: {type(error).__name__}: {error}")
            print(f"{label}: FAILED, {failures[-1]}", flush=True)
        else:
            rows.append(row)
            print(format_row(row), flush=True)
        save()

    for size in args.sizes:
        cfg = model_config(size, args.quick)
        configs[cfg.name] = cfg.to_dict()
        model = ASRModel(cfg)
        for batch in work.encoder_batches if "encoder" in only else ():
            add(f"encoder forward, {cfg.name}, batch {batch}",
                cases.encoder_forward, model, batch, settings)
        for batch in work.encoder_batches if "int8" in only else ():
            add(f"int8 encoder forward, {cfg.name}, batch {batch}",
                cases.int8_encoder_forward, model, batch, settings)
        if "int8" in only:
            add(f"int8 Linear layers, {cfg.name}",
                cases.int8_linear_layers, model, max(work.encoder_batches),
                settings)
        if "train" in only:
            add(f"train step, {cfg.name}", cases.train_step, model, settings)
            add(f"train step, pruned, {cfg.name}",
                cases.train_step, model, settings, pruned=True)
        if "transcribe" in only:
            add(f"transcribe, {cfg.name}", cases.transcription, model, settings)
        if "compile" in only:
            for batch in work.encoder_batches:
                add(f"encoder forward, compiled, {cfg.name}, batch {batch}",
                    cases.compiled_encoder_forward, model, batch, settings)
            add(f"train step, compiled, {cfg.name}",
                cases.compiled_train_step, model, settings)
        for batch in work.encoder_batches if "graphs" in only else ():
            add(f"encoder forward, CUDA graph, {cfg.name}, batch {batch}",
                cases.graphed_encoder_forward, model, batch, settings)
    for batch in work.encoder_batches if "adapt" in only else ():
        add(f"adapted encoder, bundled, batch {batch}", cases.adapted_encoder, batch, settings)
    for batch in work.encoder_batches if "int8" in only else ():
        add(f"int8 adapted encoder, bundled, batch {batch}",
            cases.int8_adapted_encoder, batch, settings)
    for one_at_a_time in (False, True):
        batch_name = "one file at a time" if one_at_a_time else "all files at once"
        if "transcribe" in only:
            add(f"transcribe, bundled, {batch_name}",
                cases.bundled_transcription, settings, one_at_a_time)
        if "int8" in only:
            add(f"int8 transcribe, bundled, {batch_name}",
                cases.int8_bundled_transcription, settings, one_at_a_time)
    for lm_rows in work.lm_rows if "int8" in only else ():
        add(f"int8 LM step, bundled, {lm_rows} rows", cases.int8_lm_step, lm_rows, settings)
    if "loss" in only:
        add("rnnt loss fwd+bwd", cases.rnnt_loss_step, settings)
    if "loader" in only:
        add("loader batch", cases.loader_batch, settings)

    results["complete"] = True
    save()
    if args.json is not None:
        print(f"wrote {args.json}")
    if failures:
        print(f"{len(failures)} row(s) failed:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def _as_dict(row: Row) -> dict:
    """JSON for a ``Row``."""
    return dataclasses.asdict(row)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows. VMs of
    one capability differ: an AMD EPYC and an Intel Xeon with AMX both read AVX512."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())
