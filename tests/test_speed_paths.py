"""The fast paths compute what the plain reference paths compute; the benchmark runs."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import run as run_module
from benchmarks.plain import plain_encoder_like, plain_lm_like, plain_state_dict
from conformer_asr.inference.lm_dir import load_lm_dir
from conformer_asr.inference.model_dir import BUNDLED_DIR, LM_SUBDIR
from conformer_asr.losses.rnnt import rnnt_loss, rnnt_loss_reference
from conformer_asr.models import ASRModel, ConformerEncoder, EncoderConfig, ModelConfig, quantize
from conformer_asr.models.lm import LMConfig, WordPieceLM
from conformer_asr.models.lstm_step import FEW_ROWS, _float16_packed, lstm_step
from conformer_asr.models.quantize import (
    BF16Conv2d,
    Int8Linear,
    bf16_kernels_are_fast,
    full_range_int8_is_exact,
    quantize_int8,
)
from conformer_asr.models.transducer import JointNetwork

ROOT = Path(__file__).resolve().parent.parent
TINY = EncoderConfig(d_model=32, n_layers=2, n_heads=4, conv_kernel_size=7, dropout=0.0)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """feats (3, 90, 80) with two padded utterances, lengths (3,)."""
    return torch.randn(3, 90, 80), torch.tensor([90, 71, 40])


def test_encoder_matches_plain_in_eval_mode():
    torch.manual_seed(0)
    encoder = ConformerEncoder(TINY).eval()
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    plain = plain_encoder_like(encoder, TINY)
    feats, lengths = _inputs()
    with torch.no_grad():
        out, out_lengths = encoder(feats, lengths)
        expected, expected_lengths = plain(feats, lengths)
    assert torch.equal(out_lengths, expected_lengths)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_encoder_matches_plain_in_train_mode_with_gradients():
    torch.manual_seed(0)
    encoder = ConformerEncoder(TINY).train()
    plain = plain_encoder_like(encoder, TINY)
    feats, lengths = _inputs()
    out, _ = encoder(feats, lengths)
    expected, _ = plain(feats, lengths)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    grads = plain_state_dict({k: p.grad for k, p in encoder.named_parameters()})
    plain_grads = {k: p.grad for k, p in plain.named_parameters()}
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        if name.endswith("depthwise_conv.bias"):
            # Batch norm follows it, so its exact gradient is zero: both sides hold only
            # float32 rounding noise, which differs between the two summation orders.
            assert grad.abs().max() < 1e-3 and plain_grads[name].abs().max() < 1e-3, name
            continue
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-4, rtol=1e-4, msg=name)
    # Batch-norm running statistics were updated alike.
    for name, value in plain_state_dict(encoder.state_dict()).items():
        torch.testing.assert_close(value, plain.state_dict()[name], atol=1e-5, rtol=1e-5)


def test_rnnt_loss_matches_reference_value_and_gradient():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 5, 9, requires_grad=True)
    targets = torch.randint(1, 9, (3, 4), dtype=torch.int32)
    logit_lengths = torch.tensor([7, 5, 2], dtype=torch.int32)
    target_lengths = torch.tensor([4, 2, 0], dtype=torch.int32)
    args = (targets, logit_lengths, target_lengths)
    loss = rnnt_loss(logits, *args)
    (grad,) = torch.autograd.grad(loss, logits)
    expected = rnnt_loss_reference(logits, *args)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_joint_matches_the_textbook_joint_with_gradients():
    torch.manual_seed(0)
    joint = JointNetwork(enc_dim=12, pred_dim=10, joint_dim=16, vocab_size=9)
    enc, pred = torch.randn(2, 7, 12), torch.randn(2, 5, 10)
    fast = joint.full(enc, pred)
    plain = joint.out(torch.tanh(joint.enc_proj(enc)[:, :, None] + joint.pred_proj(pred)[:, None]))
    torch.testing.assert_close(fast, plain)
    weights = torch.randn_like(plain)
    fast_grads = torch.autograd.grad((fast * weights).sum(), list(joint.parameters()))
    plain_grads = torch.autograd.grad((plain * weights).sum(), list(joint.parameters()))
    for got, expected in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, expected)
    # The int8 joint (no weight tensor to multiply by) takes its own module's path.
    int8 = quantize_int8(joint)
    assert not isinstance(int8.out, nn.Linear)
    with torch.no_grad():
        assert _relative_error(int8.full(enc, pred), plain.detach()) < 0.05


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


def test_int8_model_is_close_to_float32():
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=TINY, vocab_size=16, pred_embed_dim=16, pred_hidden_dim=32,
                      joint_dim=32)
    model = ASRModel(cfg).eval()
    int8 = quantize_int8(model)
    assert not any(isinstance(m, nn.Linear | nn.LSTM) for m in int8.modules())
    assert isinstance(model.encoder.blocks[0].attn.qkv, nn.Linear)  # the original is kept
    feats, lengths = _inputs()
    targets = torch.randint(1, 16, (3, 4))
    with torch.no_grad():
        enc, _ = model.encode(feats, lengths)
        enc_int8, _ = int8.encode(feats, lengths)
        logits = model.joint.full(enc, model.predictor(targets))
        logits_int8 = int8.joint.full(enc_int8, int8.predictor(targets))
    assert _relative_error(enc_int8, enc) < 0.05
    assert _relative_error(logits_int8, logits) < 0.05
    # The subsampling's second convolution runs in bfloat16 where the CPU has the kernels;
    # the first, on the features, in float32.
    convs = [type(m) for m in int8.encoder.subsampling.conv if not isinstance(m, nn.ReLU)]
    assert convs == [nn.Conv2d, BF16Conv2d if bf16_kernels_are_fast() else nn.Conv2d]
    original = model.encoder.subsampling.conv[2]  # the original second convolution is kept
    assert isinstance(original, nn.Conv2d) and original.weight.dtype == torch.float32


FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines


def _round_to_float16(module: nn.Module) -> None:
    with torch.no_grad():
        for weight in module.parameters():
            weight.copy_(weight.half().float())


@pytest.mark.parametrize("float16_weights", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_step_matches_the_module_over_a_sequence(layers, float16_weights):
    """Stepping token by token, few rows (the arithmetic in ``lstm_step``: float32
    products, or float16-weight ones where the weights are float16 values) and many rows
    (the module), gives what ``nn.LSTM`` gives over the whole sequence."""
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 10, num_layers=layers, dropout=0.3 if layers > 1 else 0.0,
                   batch_first=True).eval()
    if float16_weights:
        _round_to_float16(lstm)
    assert (_float16_packed(lstm) is not None) == (float16_weights and FBGEMM)
    for rows in (3, FEW_ROWS):
        x = torch.randn(rows, 5, 6)
        with torch.no_grad():
            expected, (h, c) = lstm(x)
            state, outs = None, []
            for t in range(x.shape[1]):
                out, state = lstm_step(lstm, x[:, t], state)
                outs.append(out)
        torch.testing.assert_close(torch.stack(outs, dim=1), expected)
        torch.testing.assert_close(state, (h, c))


@pytest.mark.skipif(not FBGEMM, reason="float16-weight products need fbgemm (x86)")
def test_float16_packed_weights_follow_changes_to_the_weights():
    """The packed copy is remade when a weight changes in place or is replaced, and
    dropped when the weights are no longer float16 values."""
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 10, num_layers=2, batch_first=True).eval()
    _round_to_float16(lstm)
    x = torch.randn(3, 6)

    def check() -> None:
        with torch.no_grad():
            out, _ = lstm_step(lstm, x, None)
            torch.testing.assert_close(out, lstm(x[:, None])[0][:, 0])

    check()
    first = _float16_packed(lstm)
    assert first is not None and _float16_packed(lstm) is first  # kept between steps
    other = nn.LSTM(6, 10, num_layers=2, batch_first=True)
    _round_to_float16(other)
    lstm.load_state_dict(other.state_dict())  # copies in place
    assert _float16_packed(lstm) is not first
    check()
    lstm.weight_hh_l1 = nn.Parameter(lstm.weight_hh_l1.detach().half().float() * 2)
    check()
    with torch.no_grad():
        lstm.bias_ih_l0.add_(1e-3)  # no longer a float16 value
    assert _float16_packed(lstm) is None
    check()


def test_lstm_step_with_float16_weights_keeps_gradients_where_they_are_on():
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 10, batch_first=True).eval()
    _round_to_float16(lstm)
    x = torch.randn(3, 6, requires_grad=True)
    out, _ = lstm_step(lstm, x, None)
    expected = lstm(x[:, None])[0][:, 0]
    torch.testing.assert_close(out, expected)
    grad, = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, torch.autograd.grad(expected.sum(), x)[0])


@pytest.mark.skipif(not FBGEMM, reason="float16-weight products need fbgemm (x86)")
def test_the_bundled_lm_steps_with_float16_weights():
    """The bundled LM is stored in float16, so its steps read float16 weights."""
    lm, _, _ = load_lm_dir(BUNDLED_DIR / LM_SUBDIR)
    assert _float16_packed(lm.lstm) is not None


def test_lm_steps_as_the_plain_lm_steps():
    torch.manual_seed(0)
    lm = WordPieceLM(LMConfig(vocab_size=20, embed_dim=8, hidden_dim=12, n_layers=2)).eval()
    plain = plain_lm_like(lm)
    tokens, state, plain_state = torch.tensor([0, 0, 0]), None, None
    with torch.no_grad():
        for _ in range(4):
            log_probs, state = lm.step(tokens, state)
            expected, plain_state = plain.step(tokens, plain_state)
            torch.testing.assert_close(log_probs, expected)
            tokens = log_probs.argmax(dim=1)


def test_lstm_step_computes_few_rows_itself():
    lstm = nn.LSTM(6, 10, batch_first=True).eval()
    lstm.forward = None  # type: ignore[method-assign]  # calling the module would fail
    out, (h, c) = lstm_step(lstm, torch.randn(FEW_ROWS - 1, 6), None)
    assert out.shape == (FEW_ROWS - 1, 10) and h.shape == c.shape == (1, FEW_ROWS - 1, 10)


def test_lstm_step_under_cpu_autocast_matches_the_module():
    """Under bfloat16 autocast (validation in bf16 training) the module steps, as autocast
    runs it; stepping few rows here used to mix bfloat16 and float32 products."""
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 10, batch_first=True).eval()
    x = torch.randn(3, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = lstm_step(lstm, x, None)
        expected, expected_state = lstm(x[:, None])
    torch.testing.assert_close(out, expected[:, 0])
    torch.testing.assert_close(state, expected_state)


def _overflow_prone_linear() -> tuple[nn.Sequential, torch.Tensor]:
    """A layer and an input whose int8 product overflows 16-bit pair sums at 8-bit
    activations: every weight and activation quantises to its largest value."""
    layer = nn.Sequential(nn.Linear(64, 8, bias=False))
    nn.init.constant_(layer[0].weight, 0.5)
    x = torch.full((2, 64), 3.0)
    x[0, 0] = 0.0
    return layer, x


@pytest.mark.parametrize("full_range", [True, False])
def test_int8_activation_range_follows_the_probe(monkeypatch, full_range):
    """Activations get all 8 bits only where the probe found the products exact, and the
    int8 layer is exact either way on the case that overflows 16-bit sums."""
    if full_range and not full_range_int8_is_exact():
        pytest.skip("this CPU's int8 products overflow at 8-bit activations (no VNNI)")
    monkeypatch.setattr(quantize, "full_range_int8_is_exact", lambda: full_range)
    layer, x = _overflow_prone_linear()
    int8 = quantize_int8(layer)
    assert isinstance(int8[0], Int8Linear) and int8[0].reduce_range == (not full_range)
    with torch.no_grad():
        torch.testing.assert_close(int8(x), layer(x), rtol=0.01, atol=0.0)
    lstm = quantize_int8(nn.Sequential(nn.LSTM(8, 16, num_layers=2)))[0]
    for packed in lstm._all_weight_values:
        (_, _, _, (reduce_range,), _), _ = packed.param.__getstate__()
        assert reduce_range == (not full_range)


def test_int8_linear_passes_gradients_to_its_input_only():
    """Gradients reach an int8 layer's input (for test-time adaptation): close to those of
    the float32 layer it came from, within the int8 rounding of the gradient and weights;
    the int8 weights get none. Without gradients the output is the same."""
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(48, 80))
    int8 = quantize_int8(layer)
    x = torch.randn(3, 7, 48, requires_grad=True)
    upstream = torch.randn(3, 7, 80)
    out = int8(x)
    (int8_grad,) = torch.autograd.grad(out, x, upstream)
    (float_grad,) = torch.autograd.grad(layer(x), x, upstream)
    assert int8_grad.shape == x.shape
    assert 0 < _relative_error(int8_grad, float_grad) < 0.02
    assert not [p for p in int8.parameters() if p.requires_grad]
    with torch.no_grad():
        torch.testing.assert_close(out, int8(x), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated")
def test_full_range_int8_halves_the_activation_error():
    """On CPUs where it is exact, 8-bit activations round half as coarsely as torch's
    default 7: the int8 Linear and LSTM outputs are closer to float32."""
    if not full_range_int8_is_exact():
        pytest.skip("this CPU's int8 products overflow at 8-bit activations (no VNNI)")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.LSTM(256, 128, batch_first=True))
    x = torch.randn(4, 50, 64)
    default = torch.ao.quantization.quantize_dynamic(model, {nn.Linear, nn.LSTM},
                                                      dtype=torch.qint8)
    with torch.no_grad():
        expected = model(x)[0]
        error_full = _relative_error(quantize_int8(model)(x)[0], expected)
        error_default = _relative_error(default(x)[0], expected)
    assert error_full < 0.75 * error_default, (error_full, error_default)


def test_bf16_convolution_is_close_to_float32():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2)
    x = torch.randn(2, 8, 21, 40)
    with torch.no_grad():
        expected = conv(x)
        out = BF16Conv2d(copy.deepcopy(conv))(x)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert 0 < _relative_error(out, expected) < 0.01  # bfloat16 rounding, nothing more


def test_encoder_compiles_whole_and_matches_eager():
    """torch.compile traces the encoder as one graph (the benchmark's compiled rows); the
    traced graph, run by aot_eager (no C++ compiler needed), gives the same outputs and
    gradients."""
    torch.manual_seed(0)
    encoder = ConformerEncoder(TINY).train()
    feats, lengths = _inputs()
    explained = torch._dynamo.explain(encoder)(feats, lengths)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(encoder, backend="aot_eager")
    out, out_lengths = compiled(feats, lengths)
    expected, expected_lengths = encoder(feats, lengths)
    assert torch.equal(out_lengths, expected_lengths)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), list(encoder.parameters()))
    expected_grads = torch.autograd.grad((expected * weights).sum(), list(encoder.parameters()))
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-4, rtol=1e-4)


def test_quick_benchmark_writes_json(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--sizes", "s", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    machine = results["machine"]
    assert machine["matmul_peak_flops"] > 0
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["int8_activation_bits"] in (7, 8)
    rows = results["rows"]
    assert {r["benchmark"] for r in rows} == {
        "encoder forward", "int8 encoder forward", "int8 Linear layers", "train step",
        "train step, pruned S=2", "transcribe", "transcribe, bundled", "int8 transcribe, bundled",
        "adapted encoder, bundled", "int8 adapted encoder, bundled", "int8 LM step, bundled",
        "rnnt loss fwd+bwd", "loader batch",
    }
    for row in rows:
        assert row["fast_s"] > 0 and row["baseline_s"] > 0
        assert row["speedup"] == pytest.approx(row["baseline_s"] / row["fast_s"])
        if row["benchmark"] in ("encoder forward", "train step"):
            assert row["gflop"] > 0 and row["mfu_fast"] > 0 and row["peak_mb_baseline"] > 0
            # MFU against the larger of the run's first peak and one measured at the row
            peak = row["extra"]["peak_flops"]
            assert peak >= results["machine"]["matmul_peak_flops"]
            assert row["mfu_fast"] == pytest.approx(row["gflop"] * 1e9 / row["fast_s"] / peak)
        if row["benchmark"].startswith("train step"):  # 2 utterances of 1 s per step
            assert row["extra"]["audio_h_per_h_fast"] == pytest.approx(2.0 / row["fast_s"])
    [loss] = [r for r in rows if r["benchmark"] == "rnnt loss fwd+bwd"]
    assert loss["extra"]["peak_over_logits_fast"] < loss["extra"]["peak_over_logits_baseline"]
    [transcribe] = [r for r in rows if r["benchmark"] == "transcribe"]
    assert transcribe["extra"]["rtf_fast"] > 0
    [lm_step] = [r for r in rows if r["benchmark"] == "int8 LM step, bundled"]
    assert lm_step["batch"] == 2  # rows a step
    assert lm_step["extra"]["ms_per_step_fast"] == pytest.approx(lm_step["fast_s"] * 1e3 / 20)
    [loader] = [r for r in rows if r["benchmark"] == "loader batch"]  # 2 utterances of 1 s
    assert loader["extra"]["audio_s_per_s_fast"] == pytest.approx(2.0 / loader["fast_s"])
    for name in ("adapted encoder, bundled", "int8 adapted encoder, bundled"):
        adapted = [r for r in rows if r["benchmark"] == name]
        assert [r["batch"] for r in adapted] == [1, 2]
        assert all(r["extra"]["adapt_steps"] > 0 for r in adapted)
    for name in ("transcribe, bundled", "int8 transcribe, bundled"):
        # all four examples in one call, and one call per file
        bundled = [r for r in rows if r["benchmark"] == name]
        assert [r["batch"] for r in bundled] == [4, 1]
        for row in bundled:
            assert row["extra"]["audio_seconds"] == pytest.approx(10.95, abs=0.01)
    assert "encoder forward" in proc.stdout and "rnnt loss" in proc.stdout


def test_quick_benchmark_in_bf16(tmp_path):
    """``--precision bf16`` (the GPU table's) runs both paths of every row but the int8
    ones under bfloat16 autocast and measures MFU against a bfloat16 matmul."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--sizes", "s", "--precision",
         "bf16", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["settings"]["precision"] == "bf16" and "bf16 matmul peak" in proc.stdout
    assert "int8 rows skipped" in proc.stdout  # int8 against float32 only
    assert results["complete"] and results["failures"] == []
    assert {r["benchmark"] for r in results["rows"]} == {
        "encoder forward", "train step", "train step, pruned S=2", "transcribe",
        "transcribe, bundled", "adapted encoder, bundled", "rnnt loss fwd+bwd", "loader batch",
    }
    for row in results["rows"]:
        assert row["fast_s"] > 0 and row["baseline_s"] > 0


def test_a_failing_row_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    def out_of_memory(*args: object) -> None:
        raise RuntimeError("CUDA out of memory (a stand-in)")

    monkeypatch.setattr(run_module.cases, "encoder_forward", out_of_memory)
    out = tmp_path / "results.json"
    code = run_module.main(["--quick", "--sizes", "s", "--only", "encoder", "loss",
                            "--json", str(out)])
    assert code == 1
    results = json.loads(out.read_text())
    assert [r["benchmark"] for r in results["rows"]] == ["rnnt loss fwd+bwd"]
    assert results["failures"] == [
        f"encoder forward, conformer-s-quick, batch {batch}: RuntimeError: CUDA out of memory "
        "(a stand-in)" for batch in (1, 2)
    ]
    assert results["complete"]
    assert "2 row(s) failed" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_graph_rows_are_skipped_without_a_gpu(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert run_module.main(["--quick", "--sizes", "s", "--only", "graphs", "--json",
                            str(out)]) == 0
    assert "CUDA graph rows skipped: they need a CUDA GPU" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"] == []


def test_a_json_file_that_cannot_be_written_is_found_out_before_the_first_row(tmp_path, capsys):
    """It used to end the run in a traceback after the first row."""
    assert run_module.main(["--quick", "--only", "loss", "--json", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: --json {tmp_path}: a folder, not a file\n"
    if os.path.ismount("/sys"):  # takes no new files, even from root
        assert run_module.main(["--quick", "--only", "loss", "--json", "/sys/x.json"]) == 2
        assert capsys.readouterr().err == "error: --json /sys/x.json: Permission denied\n"


@pytest.mark.parametrize(("flag", "value", "why"), [
    ("--threads", "0", "must be 1 or more, got 0"),  # was torch's traceback
    ("--repeats", "0", "must be 1 or more, got 0"),  # was the default, silently
    ("--repeats", "-2", "must be 1 or more, got -2"),  # every row failed
    ("--train-batch", "x", "not a whole number: 'x'")])
def test_benchmark_counts_are_checked(flag, value, why, capsys):
    parse_args = run_module.parse_args
    with pytest.raises(SystemExit) as stop:
        parse_args([flag, value])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"argument {flag}: {why}")
    assert parse_args([flag, "3"]).__dict__[flag[2:].replace("-", "_")] == 3
