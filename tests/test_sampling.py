"""The per-row sampler: its nucleus is the one a full sort finds, and it samples from it in proportion."""

from __future__ import annotations

import pytest
import torch

from inference.sampling import RowSampling, nucleus_thresholds, select_next_tokens

VOCAB = 152064


def sorted_reference_threshold(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    ordered = torch.sort(probs, descending=True).values
    cumulative = torch.cumsum(ordered.double(), dim=0)
    return ordered[int((cumulative < top_p).sum())]


@pytest.mark.parametrize("scale", [0.02, 1.0, 5.0, 30.0], ids=["flat", "gaussian", "peaked", "one-hot-ish"])
@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.999])
def test_nucleus_matches_the_full_sort(scale, top_p):
    generator = torch.Generator().manual_seed(7)
    probs = torch.softmax(torch.randn(3, VOCAB, generator=generator) * scale, dim=-1)
    thresholds = nucleus_thresholds(probs, [top_p] * 3)
    for row in range(3):
        assert thresholds[row] == sorted_reference_threshold(probs[row], top_p)


def test_top_p_one_keeps_every_token():
    probs = torch.softmax(torch.randn(2, 1000), dim=-1)
    assert (probs >= nucleus_thresholds(probs, [1.0, 1.0])[:, None]).all()


def test_greedy_rows_take_the_argmax_and_sampled_rows_stay_in_their_nucleus():
    logits = torch.randn(4, VOCAB) * 3
    rows = [RowSampling(0.0, 1.0), RowSampling(0.7, 0.5), RowSampling(0.0, 0.9), RowSampling(1.0, 0.05)]
    for _ in range(5):
        tokens = select_next_tokens(logits, rows)
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
        counts[select_next_tokens(logits, [row])[0]] += 1
    # The nucleus of top_p 0.8 is {0.5, 0.3}: renormalised 0.625 / 0.375, nothing else.
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / 4000 - 0.625) < 0.03


def test_a_seeded_generator_makes_sampling_repeatable():
    logits = torch.randn(1, VOCAB)

    def draw(seed):
        row = RowSampling(0.8, 0.9, torch.Generator().manual_seed(seed))
        return [int(select_next_tokens(logits, [row])[0]) for _ in range(5)]

    assert draw(3) == draw(3)
