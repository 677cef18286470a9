import torch

from conformer_asr.audio.spec_augment import SpecAugment
from conformer_asr.models.config import SpecAugmentConfig


def _masked(seed: int, lengths: torch.Tensor, t: int = 400) -> torch.Tensor:
    aug = SpecAugment().train()
    gen = torch.Generator().manual_seed(seed)
    ones = torch.ones(len(lengths), t, 80)
    return aug(ones, lengths, generator=gen) == 0  # (B, T, F) True where masked


def test_identity_in_eval_mode():
    feats = torch.randn(2, 50, 80)
    assert torch.equal(SpecAugment().eval()(feats, torch.tensor([50, 30])), feats)


def test_reproducible_under_seed():
    lengths = torch.tensor([400, 250])
    assert torch.equal(_masked(7, lengths), _masked(7, lengths))
    assert not torch.equal(_masked(7, lengths), _masked(8, lengths))


def test_masks_sized_and_placed_by_true_length():
    lengths = torch.tensor([400, 100])
    cfg = SpecAugmentConfig()
    for seed in range(30):
        masked = _masked(seed, lengths)
        for b, length in enumerate(lengths.tolist()):
            time_masked = masked[b].all(dim=1)  # whole frame masked
            freq_masked = masked[b].all(dim=0)  # whole channel masked
            frames = time_masked.nonzero().flatten()
            if len(frames):
                assert int(frames.max()) < length, "time mask outside the true length"
            # every run of masked frames is a union of at most 10 bands of width <= 5% of length
            runs = _runs(time_masked)
            assert sum(runs) <= cfg.time_masks * int(length * cfg.time_width_ratio)
            assert max(runs, default=0) <= cfg.time_masks * int(length * cfg.time_width_ratio)
            assert int(freq_masked.sum()) <= cfg.freq_masks * cfg.freq_width
    # the short utterance's bands are bounded by 5% of 100 frames, not of the padded 400
    short_runs = [r for seed in range(30) for r in _runs(_masked(seed, lengths)[1].all(dim=1))]
    assert max(short_runs) <= 10 * 5 and len(short_runs) > 0


def _runs(flags: torch.Tensor) -> list[int]:
    runs, current = [], 0
    for flag in flags.tolist():
        if flag:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs + ([current] if current else [])


def test_single_time_band_width_bound_uses_true_length():
    aug = SpecAugment(SpecAugmentConfig(freq_masks=0, time_masks=1)).train()
    widths: dict[int, set[int]] = {0: set(), 1: set()}
    for seed in range(300):
        out = aug(torch.ones(2, 400, 80), torch.tensor([200, 100]),
                  generator=torch.Generator().manual_seed(seed))
        for b in (0, 1):
            masked = (out[b, :, 0] == 0).nonzero().flatten()
            widths[b].add(len(masked))
            if len(masked):
                assert int(masked.max()) < (200, 100)[b]
    # floor(0.05 * length), inclusive of 0 and the maximum
    assert widths[0] == set(range(11)) and widths[1] == set(range(6))
