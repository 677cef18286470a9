"""The CPU dropout: its mask's statistics, its gradient, and attention with it."""

import math

import pytest
import torch
import torch.nn.functional as F

from conformer_asr.models import ConformerEncoder, EncoderConfig
from conformer_asr.models.attention import attention_with_dropout
from conformer_asr.models.dropout import Dropout, drop_mask, dropout


def _assert_rate(dropped: torch.Tensor, rate: float) -> None:
    """The fraction of True in ``dropped`` is within 5 standard errors of ``rate``."""
    n = dropped.numel()
    assert abs(dropped.float().mean().item() - rate) < 5 * math.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize("keep", [58982, 32768, 6554])
def test_mask_drops_at_its_rate_in_every_16_bit_lane(keep):
    torch.manual_seed(0)
    dropped = drop_mask(torch.Size([4, 500_000]), keep)
    assert dropped.dtype == torch.bool and dropped.shape == (4, 500_000)
    rate = 1 - keep / 2**16
    _assert_rate(dropped, rate)
    # Each int64 word gives 4 elements; all 4 of its 16-bit lanes are uniform (a draw
    # that leaves the sign bit 0 would make every 4th element biased).
    for lane in range(4):
        _assert_rate(dropped.flatten()[lane::4], rate)
    # Neighbours are independent: both dropped about rate**2 of the time.
    flat = dropped.flatten()
    _assert_rate(flat[:-1] & flat[1:], rate**2)


def test_odd_sizes_empty_tensors_and_p_near_1():
    for shape in [(0,), (1,), (3, 5, 7)]:
        x = torch.randn(*shape)
        assert dropout(x, 0.3).shape == x.shape
    # p too close to 1 for 16 bits (keep rounds to 0) is torch's dropout.
    assert dropout(torch.ones(1000), 1.0).eq(0).all()
    near_1 = dropout(torch.ones(1000), 1 - 2**-18)
    assert (near_1.eq(0) | near_1.eq(2**18)).all()


def test_dropout_zeroes_or_scales_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.rand(1_000_000) + 0.5  # no zeros of its own
    y = dropout(x, 0.1)
    dropped = y == 0
    _assert_rate(dropped, 1 - 58982 / 2**16)
    scale = 2**16 / 58982  # the exact inverse of the keep probability
    torch.testing.assert_close(y[~dropped], x[~dropped] * scale)
    ones = dropout(torch.ones(1_000_000), 0.1)
    assert abs(ones.mean().item() - 1.0) < 5 * math.sqrt(0.1 / 0.9 / 1_000_000)


def test_gradient_uses_the_forward_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 33, dtype=torch.float64, requires_grad=True)
    y = dropout(x, 0.25)
    weights = torch.randn_like(y)
    (grad,) = torch.autograd.grad((y * weights).sum(), x)
    kept = y != 0
    scale = 2**16 / round(0.75 * 2**16)
    torch.testing.assert_close(grad, torch.where(kept, weights * scale, 0.0))

    def same_mask_every_call(t: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(1)
        return dropout(t, 0.25)

    torch.autograd.gradcheck(same_mask_every_call, x[:4, :5].detach().requires_grad_())


def test_module_is_identity_in_eval_mode_or_at_zero_and_follows_the_seed():
    x = torch.randn(10, 20)
    module = Dropout(0.1)
    assert module.state_dict() == {} and "p=0.1" in repr(module)
    assert module.eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    module.train()
    torch.manual_seed(3)
    first = module(x)
    torch.manual_seed(3)
    assert torch.equal(module(x), first)
    assert not torch.equal(module(x), first)


def test_attention_with_dropout_is_sdpa_with_the_mask_applied_to_the_weights():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 4, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    bias = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    bias[1, :, :, 5:] = -math.inf  # padded keys
    # Without dropout: torch's fused attention, values and gradients.
    out = attention_with_dropout(q, k, v, bias, 0.5, 0.0)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.5)
    torch.testing.assert_close(out, expected)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)
    # With dropout: the attention weights, masked by the mask the same seed draws.
    torch.manual_seed(5)
    out = attention_with_dropout(q, k, v, bias, 0.5, 0.2)
    torch.manual_seed(5)
    dropped = drop_mask(torch.Size([2, 3, 7, 7]), round(0.8 * 2**16))
    probs = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * 0.5 + bias, dim=-1)
    probs = probs.masked_fill(dropped, 0.0) * (2**16 / round(0.8 * 2**16))
    torch.testing.assert_close(out, probs @ v)


def test_encoder_with_dropout_traces_as_one_graph():
    """Under torch.compile, dropout is F.dropout (the 16-bit mask's in-place draw would
    break the graph at every dropout)."""
    cfg = EncoderConfig(d_model=32, n_layers=2, n_heads=4, conv_kernel_size=7, dropout=0.1)
    encoder = ConformerEncoder(cfg).train()
    feats, lengths = torch.randn(2, 60, 80), torch.tensor([60, 41])
    explained = torch._dynamo.explain(encoder)(feats, lengths)
    assert explained.graph_break_count == 0, explained.break_reasons
