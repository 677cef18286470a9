import itertools
import math

import pytest
import torch

from conformer_asr.losses import rnnt as rnnt_module
from conformer_asr.losses.pruned_rnnt import prune_windows, pruned_rnnt_loss, simple_rnnt_loss
from conformer_asr.losses.rnnt import logsumexp_over_vocab, rnnt_loss, rnnt_loss_reference

LOSSES = [rnnt_loss, rnnt_loss_reference]


def random_batch(
    seed: int,
    batch: int,
    max_t: int,
    max_u: int,
    vocab: int,
    blank: int = 0,
    dtype: torch.dtype = torch.float64,
    lengths: tuple[list[int], list[int]] | None = None,
):
    """Random logits (B, T, U+1, V), non-blank targets padded with -1, and lengths.

    Lengths are ``lengths`` (T_b and U_b lists) if given, else random with both maxima present.
    """
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, max_t, max_u + 1, vocab, generator=gen, dtype=dtype)
    labels = [v for v in range(vocab) if v != blank]
    targets = torch.tensor(labels)[torch.randint(len(labels), (batch, max_u), generator=gen)]
    logit_lengths = torch.randint(1, max_t + 1, (batch,), generator=gen)
    target_lengths = torch.randint(0, max_u + 1, (batch,), generator=gen)
    logit_lengths[0], target_lengths[-1] = max_t, max_u
    if lengths is not None:
        logit_lengths, target_lengths = torch.tensor(lengths[0]), torch.tensor(lengths[1])
    padding = torch.arange(max_u) >= target_lengths[:, None]
    targets = targets.masked_fill(padding, -1).int()
    return logits.requires_grad_(), targets, logit_lengths.int(), target_lengths.int()


def brute_force_nll(logits, targets, n_frames, n_labels, blank):
    """-log sum over every alignment of one utterance: logits (T, U+1, V), targets (U,)."""
    log_probs = logits.log_softmax(-1)
    scores = []
    # An alignment emits n_frames blanks and n_labels labels, the last symbol being the
    # blank at the final frame; choose which of the other slots hold the labels.
    for label_slots in itertools.combinations(range(n_frames + n_labels - 1), n_labels):
        t = u = 0
        score = 0.0
        for slot in range(n_frames + n_labels - 1):
            if slot in label_slots:
                score += float(log_probs[t, u, int(targets[u])])
                u += 1
            else:
                score += float(log_probs[t, u, blank])
                t += 1
        assert (t, u) == (n_frames - 1, n_labels)
        scores.append(score + float(log_probs[t, u, blank]))
    return -math.log(sum(math.exp(s) for s in scores))


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize(
    ("seed", "batch", "max_t", "max_u", "vocab", "blank"),
    [(0, 2, 4, 3, 5, 0), (1, 3, 4, 3, 3, 2), (2, 3, 3, 2, 4, 1), (3, 2, 1, 3, 5, 4),
     (4, 3, 4, 0, 3, 0), (5, 3, 2, 1, 4, 3), (6, 3, 4, 3, 4, 0)],
)
def test_matches_brute_force_enumeration(loss_fn, seed, batch, max_t, max_u, vocab, blank):
    logits, targets, logit_lengths, target_lengths = random_batch(
        seed, batch, max_t, max_u, vocab, blank
    )
    losses = loss_fn(logits, targets, logit_lengths, target_lengths, blank, reduction="none")
    expected = [
        brute_force_nll(logits[b].detach(), targets[b], int(logit_lengths[b]),
                        int(target_lengths[b]), blank)
        for b in range(batch)
    ]
    assert losses.shape == (batch,)
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-10, atol=1e-10)


def test_no_targets_is_sum_of_blanks():
    logits = torch.randn(2, 5, 1, 4, dtype=torch.float64)
    targets = torch.zeros(2, 0, dtype=torch.long)
    lengths = torch.tensor([5, 3])
    expected = -torch.stack([logits[0, :5, 0].log_softmax(-1)[:, 2].sum(),
                             logits[1, :3, 0].log_softmax(-1)[:, 2].sum()])
    for loss_fn in LOSSES:
        losses = loss_fn(logits, targets, lengths, torch.zeros(2, dtype=torch.long), blank=2,
                         reduction="none")
        torch.testing.assert_close(losses, expected)


def test_gradcheck():
    logits, targets, logit_lengths, target_lengths = random_batch(
        7, 3, 4, 3, 4, blank=1, lengths=([4, 2, 3], [1, 0, 3])
    )
    assert torch.autograd.gradcheck(
        lambda x: rnnt_loss(x, targets, logit_lengths, target_lengths, blank=1, reduction="none"),
        logits,
    )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("blank", [0, 7])
def test_fast_matches_reference_float32(reduction, blank):
    logits, targets, logit_lengths, target_lengths = random_batch(
        3, 4, 30, 10, 20, blank, dtype=torch.float32
    )
    results = []
    for loss_fn in LOSSES:
        loss = loss_fn(logits, targets, logit_lengths, target_lengths, blank, reduction)
        weights = torch.linspace(0.5, 2.0, loss.numel()).reshape(loss.shape)
        (grad,) = torch.autograd.grad((loss * weights).sum(), logits)
        results.append((loss, grad))
    (fast, fast_grad), (ref, ref_grad) = results
    assert fast.dtype == torch.float32 and fast_grad.dtype == torch.float32
    assert fast.shape == ((4,) if reduction == "none" else ())
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fast_grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_float32_gradient_stays_accurate_on_long_lattices():
    logits, *args = random_batch(9, 2, 200, 40, 8, lengths=([200, 150], [40, 25]))
    grads = []
    for dtype in (torch.float64, torch.float32):
        x = (3 * logits.detach()).to(dtype).requires_grad_()
        rnnt_loss(x, *args, reduction="sum").backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0].float(), rtol=0, atol=2e-4)


def test_loss_is_unchanged_when_the_logsumexp_runs_one_frame_at_a_time(monkeypatch):
    logits, *labels = random_batch(10, 3, 9, 4, 6, dtype=torch.float32)
    whole = logits.logsumexp(dim=-1)
    monkeypatch.setattr(rnnt_module, "_LSE_SLICE_BYTES", 1)  # one frame per slice
    torch.testing.assert_close(logsumexp_over_vocab(logits), whole, rtol=0, atol=0)
    infinite = logits.clone()
    infinite[0, 1, 2] = -math.inf  # a row of -inf: -inf
    infinite[1, 2, 0, 3] = math.inf  # a +inf entry: +inf
    infinite[2, 0, 1, :2] = -math.inf  # some -inf entries: finite
    torch.testing.assert_close(logsumexp_over_vocab(infinite), infinite.logsumexp(dim=-1))
    loss = rnnt_loss(logits, *labels, reduction="sum")
    expected = rnnt_loss_reference(logits, *labels, reduction="sum")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(loss, logits)[0],
                               torch.autograd.grad(expected, logits)[0], rtol=1e-4, atol=1e-5)


def test_gradient_written_over_the_logits_is_the_same_gradient():
    """``overwrite_logits``: the logits' memory holds the gradient after backward, and
    what flows back to the tensors the logits came from is unchanged."""
    source, *labels = random_batch(11, 3, 7, 4, 6, dtype=torch.float32)
    source.requires_grad_()
    expected = rnnt_loss_reference(source * 2.0, *labels)
    (expected_grad,) = torch.autograd.grad(expected, source)
    logits = source * 2.0  # an intermediate, as the joint network's output is
    loss = rnnt_loss(logits, *labels, overwrite_logits=True)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(loss, source)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits * 2.0, grad)  # d loss / d logits, in the logits


def test_reductions_are_consistent():
    args = random_batch(4, 3, 6, 4, 5)
    losses = rnnt_loss(*args, reduction="none")
    torch.testing.assert_close(rnnt_loss(*args, reduction="sum"), losses.sum())
    torch.testing.assert_close(rnnt_loss(*args), losses.mean())


def test_gradient_is_zero_outside_each_lattice():
    logits, targets, logit_lengths, target_lengths = random_batch(
        5, 3, 8, 5, 6, lengths=([8, 3, 5], [2, 5, 0])
    )
    rnnt_loss(logits, targets, logit_lengths, target_lengths).backward()
    for b in range(3):
        t_b, u_b = int(logit_lengths[b]), int(target_lengths[b])
        assert logits.grad[b, t_b:].eq(0).all() and logits.grad[b, :, u_b + 1:].eq(0).all()
        assert logits.grad[b, :t_b, : u_b + 1].abs().sum(-1).gt(0).all()
        # The gradient of each (t, u) softmax sums to 0 over the vocabulary.
        torch.testing.assert_close(logits.grad[b].sum(-1), torch.zeros(8, 6, dtype=torch.float64))


def saved_tensors(loss_fn, logits, *args):
    """Runs forward + backward; returns the tensors autograd saved between them."""
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn(logits, *args)
    loss.backward()
    return saved


def test_fast_path_keeps_no_vocab_sized_tensor_but_the_logits():
    logits, *args = random_batch(6, 2, 12, 5, 32, dtype=torch.float32)
    big = logits.numel()
    fast_saved = saved_tensors(rnnt_loss, logits, *args)
    assert any(t.data_ptr() == logits.data_ptr() for t in fast_saved)
    assert all(t.numel() < big for t in fast_saved if t.data_ptr() != logits.data_ptr())
    assert logits.grad.shape == logits.shape and logits.grad.dtype == logits.dtype
    # Control: the textbook version does keep a (B, T, U+1, V) log-softmax.
    logits.grad = None
    ref_saved = saved_tensors(rnnt_loss_reference, logits, *args)
    assert any(t.numel() >= big and t.data_ptr() != logits.data_ptr() for t in ref_saved)


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize(
    ("change", "name"),
    [
        (lambda a: {**a, "logits": a["logits"][0]}, "logits"),
        (lambda a: {**a, "logits": a["logits"].half()}, "logits"),
        (lambda a: {**a, "targets": a["targets"][:, :-1]}, "targets"),
        (lambda a: {**a, "targets": a["targets"].float()}, "targets"),
        (lambda a: {**a, "targets": a["targets"].fill_(9)}, "targets"),
        (lambda a: {**a, "logit_lengths": a["logit_lengths"][:1]}, "logit_lengths"),
        (lambda a: {**a, "logit_lengths": a["logit_lengths"].fill_(0)}, "logit_lengths"),
        (lambda a: {**a, "logit_lengths": a["logit_lengths"].fill_(5)}, "logit_lengths"),
        (lambda a: {**a, "target_lengths": a["target_lengths"].fill_(4)}, "target_lengths"),
        (lambda a: {**a, "target_lengths": a["target_lengths"][None]}, "target_lengths"),
        (lambda a: {**a, "blank": 5}, "blank"),
        (lambda a: {**a, "reduction": "avg"}, "reduction"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(loss_fn, change, name):
    logits, targets, logit_lengths, target_lengths = random_batch(8, 2, 4, 3, 5)
    args = dict(logits=logits, targets=targets, logit_lengths=logit_lengths,
                target_lengths=target_lengths, blank=0, reduction="mean")
    with pytest.raises(ValueError, match=f"^{name} "):
        loss_fn(**change(args))


# --- Pruned RNN-T -----------------------------------------------------------------------


def simple_batch(seed: int, batch: int = 4, max_t: int = 6, max_u: int = 4, vocab: int = 5):
    """Random per-frame (B, T, V) and per-label (B, U+1, V) logits, targets and lengths."""
    logits, targets, logit_lengths, target_lengths = random_batch(seed, batch, max_t, max_u, vocab)
    am = logits[:, :, 0].detach().clone().requires_grad_()
    lm = logits[:, 0].detach().clone().requires_grad_()
    return am, lm, targets, logit_lengths, target_lengths


def gather_windows(logits: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Full logits (B, T, U+1, V) at the windows' positions -> (B, T, S, V)."""
    return logits.gather(2, windows[..., None].expand(-1, -1, -1, logits.shape[-1]))


@pytest.mark.parametrize("seed", range(3))
def test_simple_loss_equals_the_full_loss_of_the_summed_logits(seed: int) -> None:
    am, lm, *labels = simple_batch(seed)
    loss, _ = simple_rnnt_loss(am, lm, *labels, reduction="none")
    expected = rnnt_loss_reference(am[:, :, None] + lm[:, None], *labels, reduction="none")
    torch.testing.assert_close(loss, expected)
    weights = torch.arange(1.0, loss.shape[0] + 1, dtype=loss.dtype)  # per-utterance grads
    grads = torch.autograd.grad((loss * weights).sum(), (am, lm))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (am, lm))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_occupancy_is_the_brute_force_probability_of_passing_each_state() -> None:
    am, lm, targets, _, _ = simple_batch(0, batch=1, max_t=4, max_u=3)
    n_frames, n_labels = 4, 3
    _, occupancy = simple_rnnt_loss(am, lm, targets, torch.tensor([n_frames]),
                                    torch.tensor([n_labels]))
    log_probs = (am[0, :, None] + lm[0, None]).log_softmax(-1).detach()
    visits = torch.zeros(n_frames, n_labels + 1, dtype=torch.float64)
    total = 0.0
    for label_slots in itertools.combinations(range(n_frames + n_labels - 1), n_labels):
        t = u = 0
        path, score = [(0, 0)], 0.0
        for slot in range(n_frames + n_labels - 1):
            symbol = int(targets[0, u]) if slot in label_slots else 0
            score += float(log_probs[t, u, symbol])
            u, t = (u + 1, t) if slot in label_slots else (u, t + 1)
            path.append((t, u))
        probability = math.exp(score + float(log_probs[t, u, 0]))
        total += probability
        for state in path:
            visits[state] += probability
    torch.testing.assert_close(occupancy[0], visits / total)


def check_windows(windows, logit_lengths, target_lengths) -> None:
    """The guarantees of prune_windows, which make a complete alignment fit inside."""
    width = windows.shape[-1]
    starts = windows[..., 0]
    assert torch.equal(windows - starts[..., None], torch.arange(width).expand_as(windows))
    assert bool((starts[:, 0] == 0).all())
    steps = starts[:, 1:] - starts[:, :-1]
    assert bool((steps >= 0).all()) and bool((steps <= width - 1).all())
    for b, (t_b, u_b) in enumerate(zip(logit_lengths.tolist(), target_lengths.tolist(),
                                       strict=True)):
        assert starts[b, t_b - 1] <= u_b < starts[b, t_b - 1] + width


@pytest.mark.parametrize("seed", range(20))
def test_prune_windows_keep_a_complete_alignment_inside(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    batch, max_t, max_u, size = 5, 9, 12, 3
    occupancy = torch.rand(batch, max_t, max_u + 1, generator=gen) ** 8
    logit_lengths = torch.randint(6, max_t + 1, (batch,), generator=gen)
    target_lengths = torch.randint(0, max_u + 1, (batch,), generator=gen)
    windows = prune_windows(occupancy, logit_lengths, target_lengths, size)
    assert windows.shape == (batch, max_t, size)
    check_windows(windows, logit_lengths, target_lengths)


def test_prune_windows_follow_a_sharp_alignment() -> None:
    # One alignment with at most 2 labels per frame: windows of 3 contain its states.
    path = [(0, 0), (0, 1), (1, 1), (2, 1), (2, 2), (2, 3), (3, 3), (4, 3), (4, 4), (5, 4)]
    occupancy = torch.zeros(1, 6, 5)
    for state in path:
        occupancy[0][state] = 1.0
    windows = prune_windows(occupancy, torch.tensor([6]), torch.tensor([4]), 3)
    for t, u in path:
        assert u in windows[0, t].tolist()


def test_prune_windows_reject_impossible_requests() -> None:
    occupancy = torch.ones(1, 2, 6)
    with pytest.raises(ValueError, match="at least 2"):
        prune_windows(occupancy, torch.tensor([2]), torch.tensor([5]), 1)
    with pytest.raises(ValueError, match="too small"):
        prune_windows(occupancy, torch.tensor([2]), torch.tensor([5]), 3)  # 5 > 2 * (3 - 1)


@pytest.mark.parametrize("seed", range(3))
def test_pruned_loss_with_windows_covering_everything_is_the_full_loss(seed: int) -> None:
    logits, targets, logit_lengths, target_lengths = random_batch(seed, 4, 6, 4, 5)
    occupancy = torch.rand(logits.shape[:3], generator=torch.Generator().manual_seed(seed))
    windows = prune_windows(occupancy, logit_lengths, target_lengths, 5)
    assert bool((windows == torch.arange(5)).all())
    labels = (targets, logit_lengths, target_lengths)
    pruned = pruned_rnnt_loss(gather_windows(logits, windows), windows, *labels,
                              reduction="none")
    full = rnnt_loss(logits, *labels, reduction="none")
    torch.testing.assert_close(pruned, full)
    torch.testing.assert_close(torch.autograd.grad(pruned.sum(), logits)[0],
                               torch.autograd.grad(full.sum(), logits)[0])


@pytest.mark.parametrize("seed", range(3))
def test_pruned_loss_counts_only_the_alignments_inside_the_windows(seed: int) -> None:
    logits, targets, logit_lengths, target_lengths = random_batch(
        seed, 4, 6, 4, 5, lengths=([6, 5, 6, 4], [4, 3, 0, 4])
    )
    labels = (targets, logit_lengths, target_lengths)
    occupancy = torch.rand(logits.shape[:3], generator=torch.Generator().manual_seed(seed))
    windows = prune_windows(occupancy, logit_lengths, target_lengths, 2)
    check_windows(windows, logit_lengths, target_lengths)
    pruned = pruned_rnnt_loss(gather_windows(logits, windows), windows, *labels,
                              reduction="none")
    # Reference: the textbook loss with one extra "sink" symbol that takes all the
    # probability at the states outside the windows and none inside them.
    inside = torch.zeros(logits.shape[:3], dtype=torch.bool).scatter_(2, windows, True)
    sink = torch.zeros(inside.shape, dtype=logits.dtype).masked_fill(inside, -math.inf)
    blocked = torch.cat([logits.detach().masked_fill(~inside[..., None], -math.inf),
                         sink[..., None]], dim=-1)
    expected = rnnt_loss_reference(blocked, *labels, reduction="none")
    torch.testing.assert_close(pruned, expected)
    assert bool((pruned >= rnnt_loss(logits, *labels, reduction="none") - 1e-9).all())
    assert torch.autograd.gradcheck(
        lambda x: pruned_rnnt_loss(x, windows, *labels, reduction="sum"),
        gather_windows(logits, windows).detach().requires_grad_(),
    )


def test_losses_name_a_wrong_dtype():
    t, u, v = 3, 2, 4
    targets, lengths = torch.ones(1, u, dtype=torch.int64), torch.tensor([t])
    target_lengths = torch.tensor([u])
    with pytest.raises(ValueError, match="logits must be float32 or float64, got torch.float16"):
        rnnt_loss(torch.zeros(1, t, u + 1, v, dtype=torch.float16), targets, lengths,
                  target_lengths)
    with pytest.raises(ValueError, match=r"am and lm must be float32 or float64 \(one dtype\)"):
        simple_rnnt_loss(torch.zeros(1, t, v), torch.zeros(1, u + 1, v, dtype=torch.float64),
                         targets, lengths, target_lengths)
