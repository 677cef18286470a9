import dataclasses
import math
import subprocess
import sys

import pytest
import torch

from conformer_asr.models import (
    ASRModel,
    ConfigError,
    EncoderConfig,
    ModelConfig,
    build_encoder,
    count_parameters,
    get_config,
    load_encoder_and_heads,
)
from conformer_asr.models.attention import (
    RelPositionMultiHeadAttention,
    relative_positions,
    relative_shift,
)
from conformer_asr.models.config import NAMED_CONFIGS, PAPER_PARAMS
from conformer_asr.models.conformer import ConvolutionModule, MaskedBatchNorm1d, Swish
from conformer_asr.models.subsampling import SLICE_FRAMES, Conv2dSubsampling

TINY = EncoderConfig(d_model=32, n_layers=2, n_heads=4, conv_kernel_size=7, dropout=0.0)


def test_relative_shift_indexes_distance():
    t = 5
    distances = torch.arange(t - 1, -t, -1).float()  # column k holds distance T-1-k
    scores = distances.expand(2, 3, t, 2 * t - 1)
    shifted = relative_shift(scores)
    i, j = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    assert torch.equal(shifted[1, 2], (i - j).float())


def test_relative_shift_equals_pad_and_reshape():
    t = 6
    scores = torch.randn(2, 3, t, 2 * t - 1)
    padded = torch.nn.functional.pad(scores, (1, 0)).view(2, 3, 2 * t, t)
    reference = padded[:, :, 1:].reshape(2, 3, t, 2 * t - 1)[..., :t]
    torch.testing.assert_close(relative_shift(scores), reference)


def test_relative_shift_of_a_wider_buffer_is_a_view():
    t = 5
    buffer = torch.randn(3, t, 16)  # 2T-1 = 9 distance columns, then 7 ignored ones
    shifted = relative_shift(buffer)
    assert shifted.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
    torch.testing.assert_close(shifted, relative_shift(buffer[..., : 2 * t - 1].clone()))


def test_attention_matches_transformer_xl_formula():
    torch.manual_seed(0)
    d, h, t = 16, 2, 5
    attn = RelPositionMultiHeadAttention(d, h, dropout=0.0).eval()
    x = torch.randn(1, t, d)
    lengths = 4
    pad = torch.arange(t)[None] >= lengths
    pos = relative_positions(t, d)
    out = attn(x, pos, pad)

    dh = d // h
    q, k, v = attn.qkv(x)[0].view(t, 3, h, dh).unbind(1)
    r = attn.pos_proj(pos).view(2 * t - 1, h, dh)
    expected = torch.zeros(t, h, dh)
    for head in range(h):
        for i in range(t):
            scores = torch.full((t,), float("-inf"))
            for j in range(lengths):
                rel = r[(t - 1) - (i - j), head]  # row for distance i - j
                scores[j] = ((q[i, head] + attn.pos_bias_u[head]) @ k[j, head]
                             + (q[i, head] + attn.pos_bias_v[head]) @ rel) / math.sqrt(dh)
            expected[i, head] = scores.softmax(0) @ v[:, head]
    expected = attn.out(expected.reshape(t, d))
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)


def test_positions_are_sinusoids_of_distance():
    pos = relative_positions(4, 8)
    assert pos.shape == (7, 8)
    torch.testing.assert_close(pos[3], torch.tensor([0.0, 1.0] * 4))  # distance 0
    torch.testing.assert_close(pos[0, 0], torch.tensor(math.sin(3.0)))  # distance 3


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("extra", [1, 9, 40])
def test_padding_invariance(extra, factor):
    torch.manual_seed(0)
    encoder = build_encoder(dataclasses.replace(TINY, subsampling_factor=factor))
    # give BatchNorm non-trivial running statistics, then freeze
    encoder.train()
    encoder(torch.randn(4, 120, 80), torch.tensor([120, 100, 80, 60]))
    encoder.eval()
    feats = torch.randn(1, 57, 80)
    alone, n_alone = encoder(feats, torch.tensor([57]))
    batch = torch.randn(3, 57 + extra, 80) * 5.0  # garbage everywhere, then our utterance
    batch[1, :57] = feats[0]
    out, n = encoder(batch, torch.tensor([57 + extra, 57, 57 + extra // 2]))
    assert int(n[1]) == int(n_alone[0]) == alone.shape[1]
    assert (out[1, : int(n[1])] - alone[0]).abs().max() <= 1e-5
    assert torch.all(out[1, int(n[1]):] == 0)


def test_masked_batch_norm_uses_valid_frames_only():
    torch.manual_seed(0)
    bn = MaskedBatchNorm1d(4).train()
    x = torch.randn(2, 4, 10)
    valid = torch.arange(10)[None] < torch.tensor([[10], [6]])
    x_garbage = x.clone()
    x_garbage[1, :, 6:] = 1e3
    y = bn(x_garbage, valid)
    reference = torch.nn.BatchNorm1d(4, affine=False).train()
    flat = torch.cat([x[0], x[1, :, :6]], dim=1)  # (C, 16) valid frames
    expected = reference(flat.T[None].transpose(1, 2))[0]
    torch.testing.assert_close(torch.cat([y[0], y[1, :, :6]], dim=1), expected,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_mean, reference.running_mean)
    torch.testing.assert_close(bn.running_var, reference.running_var)


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("out_frames", [1, SLICE_FRAMES, SLICE_FRAMES + 1, 3 * SLICE_FRAMES - 1])
def test_sliced_subsampling_is_the_whole_convolution(factor, out_frames):
    """Slice by slice, the stack gives what it gives run once over the whole input,
    forward and backward: one short slice, one full slice, a 1-frame tail, several."""
    torch.manual_seed(0)
    sub = Conv2dSubsampling(n_mels=20, channels=8, d_model=16, dropout=0.0, factor=factor)
    frames = out_frames * factor + 2 * (factor - 1)  # the longest input giving out_frames
    feats = torch.randn(2, frames, 20, requires_grad=True)
    out, _ = sub(feats, torch.tensor([frames, frames]))
    whole = sub.conv(feats.unsqueeze(1))  # (B, C, T', F')
    b, c, t, f = whole.shape
    expected = sub.out(whole.transpose(1, 2).reshape(b, t, c * f))
    assert out.shape[1] == out_frames
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    weights = torch.randn_like(out)
    grad, = torch.autograd.grad((out * weights).sum(), feats)
    expected_grad, = torch.autograd.grad((expected * weights).sum(), feats)
    torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-6)


def test_channels_last_depthwise_is_the_conv1d():
    torch.manual_seed(0)
    module = ConvolutionModule(d_model=12, kernel_size=7, dropout=0.0)
    x = torch.randn(3, 20, 12, requires_grad=True)  # (B, T, D)
    y = module.depthwise_channels_last(x, module.depthwise.weight, module.depthwise.bias)
    expected = module.depthwise(x.transpose(1, 2))  # (B, D, T)
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-6)
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), [x, module.depthwise.weight])
    expected_grads = torch.autograd.grad((expected * weights).sum(),
                                         [x, module.depthwise.weight])
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)  # float32 sums in another order


BFLOAT16_DEPTHWISE = """
import torch
from conformer_asr.models.conformer import ConvolutionModule
torch.manual_seed(0)
module = ConvolutionModule(d_model=144, kernel_size=31, dropout=0.0)
x, pad = torch.randn(1, 250, 144), torch.zeros(1, 250, dtype=torch.bool)
for training in (True, False):
    module.train(training)
    expected = module(x, pad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = module(x, pad)
    in_bf16 = module.bfloat16()(x.bfloat16(), pad)
    module.float()
    for y in (autocast, in_bf16):
        assert y.dtype == torch.bfloat16, y.dtype
        torch.testing.assert_close(y.float(), expected, atol=0.1, rtol=0.05)
print("ok")
"""


def test_depthwise_in_bfloat16_on_the_cpu_finishes_and_matches_float32():
    """conformer-s's width (144) in bfloat16, by autocast and by a bfloat16 module, one
    utterance of 250 frames: oneDNN's bfloat16 channels-last depthwise kernel never
    finished for this case on an Intel AMX Xeon, so the convolution runs in float32. In a
    subprocess, so that a hang is a failure after two minutes rather than a stuck suite."""
    proc = subprocess.run([sys.executable, "-c", BFLOAT16_DEPTHWISE], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_eval_mode_folds_batch_norm_into_the_depthwise_convolution():
    """Eval mode's folded kernel gives the convolution followed by the batch norm with its
    running statistics."""
    torch.manual_seed(0)
    module = ConvolutionModule(d_model=12, kernel_size=7, dropout=0.0)
    norm = module.batch_norm
    with torch.no_grad():  # statistics and affine parameters far from the identity
        norm.running_mean.uniform_(-2, 2)
        norm.running_var.uniform_(0.1, 5)
        norm.weight.uniform_(-2, 2)
        norm.bias.uniform_(-1, 1)
    module.eval()
    x = torch.randn(3, 20, 12)
    conv = module.depthwise
    expected = norm(module.depthwise_channels_last(x, conv.weight, conv.bias), None)
    folded = module.depthwise_channels_last(x, *module.depthwise_with_batch_norm())
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)


def test_swish_writes_over_its_input_only_where_autograd_does_not_track_it():
    """Without autograd, Swish is SiLU written over its input; with it, the input is left
    as it is and the gradient is SiLU's (gradcheck)."""
    x = torch.randn(4, 6, dtype=torch.float64)
    expected = torch.nn.functional.silu(x)
    with torch.no_grad():
        given = x.clone()
        out = Swish()(given)
    assert out.data_ptr() == given.data_ptr()
    torch.testing.assert_close(out, expected)
    leaf = x.clone().requires_grad_()
    out = Swish()(leaf)
    assert out.data_ptr() != leaf.data_ptr()
    torch.testing.assert_close(leaf.detach(), x)
    torch.testing.assert_close(out.detach(), expected)
    assert torch.autograd.gradcheck(Swish(), (leaf,))


def test_encoder_contract_shapes():
    encoder = build_encoder("conformer-s").eval()
    out, lengths = encoder(torch.randn(2, 200, 80), torch.tensor([200, 150]))
    assert out.shape == (2, 49, 144)
    assert lengths.tolist() == [49, 36]  # ((T - 1) // 2 - 1) // 2


def test_eightfold_subsampling_lengths_and_minimum():
    cfg = ModelConfig(encoder=dataclasses.replace(TINY, subsampling_factor=8))
    encoder = build_encoder(cfg.encoder).eval()
    out, lengths = encoder(torch.randn(2, 200, 80), torch.tensor([200, 15]))
    assert lengths.tolist() == [24, 1] and out.shape == (2, 24, 32)
    assert cfg.min_samples == 400 + 14 * 160 and cfg.encoder_frame_seconds == 0.08


@pytest.mark.parametrize("name", list(NAMED_CONFIGS))
def test_named_sizes_match_paper_within_3_percent(name):
    counts = count_parameters(ASRModel(get_config(name)))
    assert abs(counts["total"] / PAPER_PARAMS[name] - 1) < 0.03
    assert counts["total"] == counts["encoder"] + counts["decoder"] + counts["joint"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"d_model": 100, "n_heads": 3}, "model.encoder.d_model"),
        ({"conv_kernel_size": 32}, "model.encoder.conv_kernel_size"),
        ({"dropout": 1.5}, "model.encoder.dropout"),
        ({"subsampling_factor": 6}, "model.encoder.subsampling_factor"),
    ],
)
def test_bad_encoder_config_names_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        EncoderConfig(**kwargs)


def test_bad_model_configs_name_field():
    with pytest.raises(ConfigError, match="unknown model 'conformer-xl'"):
        get_config("conformer-xl")
    with pytest.raises(ConfigError, match=r"^model\.ctc_weight"):
        ModelConfig(ctc_weight=2.0)
    with pytest.raises(ConfigError, match=r"^model\.bogus"):
        ModelConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match=r"^model\.encoder\.n_heads"):
        ModelConfig.from_dict({"encoder": {"n_heads": 0}})
    with pytest.raises(ConfigError, match=r"^model\.rnnt_prune_range"):
        ModelConfig(rnnt_prune_range=1)
    with pytest.raises(ConfigError, match=r"^model\.rnnt_prune_range"):
        ModelConfig(rnnt_prune_range=4, ctc_weight=1.0)


def _transducer_batch(vocab: int):
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 90, 80, generator=gen)
    feat_lengths = torch.tensor([90, 75, 60])
    targets = torch.randint(1, vocab, (3, 6), generator=gen)
    return feats, feat_lengths, targets, torch.tensor([6, 4, 0])


def test_pruned_transducer_with_full_windows_is_the_full_loss():
    full_cfg = ModelConfig(encoder=TINY, vocab_size=12, pred_embed_dim=8, pred_hidden_dim=16,
                           joint_dim=16)
    torch.manual_seed(0)
    full = ASRModel(full_cfg).eval()
    pruned = ASRModel(dataclasses.replace(full_cfg, rnnt_prune_range=7, rnnt_simple_weight=0.0))
    pruned.load_state_dict(full.state_dict(), strict=False)
    pruned.eval()
    batch = _transducer_batch(12)
    torch.testing.assert_close(pruned(*batch).loss, full(*batch).loss)


def test_pruned_transducer_trains_both_joints():
    cfg = ModelConfig(encoder=TINY, vocab_size=12, pred_embed_dim=8, pred_hidden_dim=16,
                      joint_dim=16, rnnt_prune_range=2, ctc_weight=0.3)
    torch.manual_seed(0)
    model = ASRModel(cfg)
    out = model(*_transducer_batch(12))
    assert out.rnnt is not None and bool(torch.isfinite(out.loss))
    out.loss.backward()
    assert model.simple_joint is not None and model.joint is not None
    for module in (model.simple_joint, model.joint, model.predictor, model.encoder):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)


def test_a_ctc_model_starts_a_transducer_with_its_encoder_and_ctc_head():
    ctc_cfg = ModelConfig(encoder=TINY, vocab_size=12, ctc_weight=1.0)
    torch.manual_seed(0)
    source = ASRModel(ctc_cfg).state_dict()
    hybrid = ASRModel(dataclasses.replace(ctc_cfg, ctc_weight=0.3, pred_embed_dim=8,
                                          pred_hidden_dim=16, joint_dim=16, rnnt_prune_range=2))
    fresh = {k: v.clone() for k, v in hybrid.state_dict().items()}
    assert load_encoder_and_heads(hybrid, source) == ["predictor", "joint", "simple_joint"]
    for name, value in hybrid.state_dict().items():
        expected = source[name] if name.split(".")[0] in ("encoder", "ctc_head") else fresh[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)

    # back to CTC alone: the transducer is left out; a head of another shape starts fresh
    assert load_encoder_and_heads(ASRModel(ctc_cfg), hybrid.state_dict()) == []
    wider_joint = ASRModel(dataclasses.replace(hybrid.cfg, joint_dim=24))
    assert load_encoder_and_heads(wider_joint, hybrid.state_dict()) == ["joint"]
    torch.testing.assert_close(wider_joint.predictor.state_dict(), hybrid.predictor.state_dict())
    torch.manual_seed(1)  # with one seed, the full-loss model draws the same transducer
    full_loss = ASRModel(dataclasses.replace(hybrid.cfg, rnnt_prune_range=0))
    torch.manual_seed(1)
    pruned_state = ASRModel(hybrid.cfg).state_dict()
    for name, value in full_loss.state_dict().items():
        torch.testing.assert_close(value, pruned_state[name], rtol=0, atol=0, msg=name)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_encoder_and_heads(ASRModel(dataclasses.replace(
            ctc_cfg, encoder=dataclasses.replace(TINY, d_model=48))), source)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_encoder_and_heads(ASRModel(dataclasses.replace(
            ctc_cfg, encoder=dataclasses.replace(TINY, n_layers=3))), source)


def test_config_round_trip():
    cfg = get_config("conformer-m")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
