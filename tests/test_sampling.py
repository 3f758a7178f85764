"""The per-row sampler: its nucleus is the one a full sort finds, and it samples from it in proportion."""

from __future__ import annotations

import pytest
import torch

from inference.sampling import RowSampling, nucleus_weights, select_next_tokens

VOCAB = 152064


def sorted_reference_threshold(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    ordered = torch.sort(probs, descending=True).values
    cumulative = torch.cumsum(ordered.double(), dim=0)
    return ordered[int((cumulative < top_p).sum())]


def assert_is_the_nucleus(kept: torch.Tensor, probs: torch.Tensor, top_p: float) -> None:
    """`kept` (bool mask) is the smallest top set whose mass reaches top_p, ties at the boundary all in:
    what a full sort finds, up to float32 rounding (transformers' own warper sums in float32 too)."""
    smallest = probs[kept].min()
    if not kept.all():
        assert probs[~kept].max() < smallest  # a top set
    mass = probs[kept].double().sum()
    without_the_boundary = mass - smallest * (probs[kept] == smallest).sum()
    assert mass >= top_p - 1e-4
    assert without_the_boundary < top_p + 1e-4
    # And it is the set the sort-based threshold gives, but for float32 rounding at the boundary.
    reference = probs >= sorted_reference_threshold(probs, top_p)
    assert probs[kept != reference].double().sum() < 1e-4


@pytest.mark.parametrize("scale", [0.02, 1.0, 5.0, 30.0], ids=["flat", "gaussian", "peaked", "one-hot-ish"])
@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.999])
def test_nucleus_matches_the_full_sort(scale, top_p):
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(3, VOCAB, generator=generator) * scale
    probs = torch.softmax(logits, dim=-1)
    nucleus = nucleus_weights(logits.clone(), [top_p] * 3)
    for row in range(3):
        assert_is_the_nucleus(nucleus[row] > 0, probs[row], top_p)
        renormalised = nucleus[row] / nucleus[row].sum()
        expected = torch.where(nucleus[row] > 0, probs[row], 0.0)
        assert torch.allclose(renormalised, expected / expected.sum(), atol=1e-6)


def test_a_boundary_bucket_with_many_tokens_is_refined():
    # Half the vocabulary within 1e-4 of each other, far above the rest: one bucket holds 76k candidates.
    logits = torch.full((1, VOCAB), -1.0)
    logits[0, : VOCAB // 2] = 1e-4 * torch.arange(VOCAB // 2) / VOCAB
    logits[0, -5:] = 3.0
    probs = torch.softmax(logits, dim=-1)
    nucleus = nucleus_weights(logits.clone(), [0.5])
    assert_is_the_nucleus(nucleus[0] > 0, probs[0], 0.5)


def test_top_p_one_keeps_every_token():
    logits = torch.randn(2, 1000)
    assert (nucleus_weights(logits, [1.0, 1.0]) > 0).all()


def test_greedy_rows_take_the_argmax_and_sampled_rows_stay_in_their_nucleus():
    logits = torch.randn(4, VOCAB) * 3
    rows = [RowSampling(0.0, 1.0), RowSampling(0.7, 0.5), RowSampling(0.0, 0.9), RowSampling(1.0, 0.05)]
    for _ in range(5):
        tokens = select_next_tokens(logits.clone(), rows)
        assert tokens[0] == logits[0].argmax() and tokens[2] == logits[2].argmax()
        for row in (1, 3):
            probs = torch.softmax(logits[row] / rows[row].temperature, dim=-1)
            assert probs[tokens[row]] >= sorted_reference_threshold(probs, rows[row].top_p)


def test_samples_follow_the_renormalised_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    row = RowSampling(temperature=1.0, top_p=0.8, generator=generator)
    counts = torch.zeros(4)
    for _ in range(4000):
        counts[select_next_tokens(logits.clone(), [row])[0]] += 1
    # The nucleus of top_p 0.8 is {0.5, 0.3}: renormalised 0.625 / 0.375, nothing else.
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / 4000 - 0.625) < 0.03


def test_a_seeded_generator_makes_sampling_repeatable():
    logits = torch.randn(1, VOCAB)

    def draw(seed):
        row = RowSampling(0.8, 0.9, torch.Generator().manual_seed(seed))
        return [int(select_next_tokens(logits.clone(), [row])[0]) for _ in range(5)]

    assert draw(3) == draw(3)


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-6])
def test_a_vanishing_temperature_is_greedy(temperature):
    """Found by the fuzz: logits divided by a subnormal temperature are infinities, which broke the buckets."""
    logits = torch.randn(2, VOCAB)
    expected = torch.argmax(logits, dim=-1)
    rows = [RowSampling(temperature=temperature, top_p=6e-139), RowSampling(temperature=temperature, top_p=0.9)]
    assert torch.equal(select_next_tokens(logits.clone(), rows), expected)


def test_masked_tokens_never_break_the_nucleus_nor_get_picked():
    logits = torch.randn(3, VOCAB)
    logits[:, ::2] = float("-inf")  # a logits processor's mask: half the vocabulary ruled out
    logits[2, 2:] = float("-inf")  # one row with a single token left (1: 0 is masked above)
    rows = [RowSampling(temperature=0.7, top_p=0.5), RowSampling(temperature=1.3, top_p=1.0)] + [
        RowSampling(temperature=1.0, top_p=0.9)
    ]
    for _ in range(20):
        picks = select_next_tokens(logits.clone(), rows)
        assert all(torch.isfinite(logits[row, picks[row]]) for row in range(3))
    assert int(picks[2]) == 1


@pytest.mark.parametrize("top_p", [1.2117266163396931e-110, 1e-45, 1e-30])
def test_a_vanishing_top_p_keeps_only_the_most_likely_token(top_p):
    """Found by the fuzz: a target under float32's range made an empty bucket the boundary."""
    for scale in (1.0, 4.0, 16.0):  # spreads under which the most likely token's bucket rounds below the top
        logits = torch.randn(8, VOCAB, generator=torch.Generator().manual_seed(int(scale))) * scale
        expected = torch.argmax(logits, dim=-1)
        rows = [RowSampling(temperature=1.4204559694970535, top_p=top_p)] * 8
        assert torch.equal(select_next_tokens(logits.clone(), rows), expected)
