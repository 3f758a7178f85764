"""Per-row token selection for a batch: greedy or temperature + top-p, each row with its own settings.

Why not transformers' TopPLogitsWarper: it sorts the whole 152k-token vocabulary of every row at
every step, which costs several times the tiny model's forward pass and does not get cheaper with
batching. Here each row's nucleus is found by a threshold search: a histogram of the probabilities
over log-spaced buckets (one batched pass) says which bucket holds the top-p boundary, and only the
tokens of that bucket are sorted (refined with another histogram when it is still large). The
nucleus is then every token at or above the threshold, the same set the full sort keeps (ties at
the boundary are all kept), and the token is drawn by inverse-CDF sampling from the renormalised
nucleus. Log-spaced buckets keep the candidate set small for flat distributions (random weights)
and peaked ones alike.

Django-free; plain torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

_BUCKETS = 4096
# Below this many candidates a plain sort is cheaper than another histogram pass.
_SORT_BELOW = 4096
# Probabilities that underflow to 0 would make log() -inf; any value below every real probability works.
_TINY = 1e-38


@dataclass(frozen=True)
class RowSampling:
    """How one row picks its next token. temperature 0 means greedy."""

    temperature: float
    top_p: float
    generator: torch.Generator | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def _log_buckets(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket index of each probability on a log scale spanning the row (last dim), and masses per bucket."""
    log_probs = torch.log(probs.clamp_min(_TINY))
    low = log_probs.min(dim=-1, keepdim=True).values
    high = log_probs.max(dim=-1, keepdim=True).values
    buckets = ((log_probs - low) / (high - low).clamp_min(1e-12) * (_BUCKETS - 1)).long()
    masses = probs.new_zeros((*probs.shape[:-1], _BUCKETS), dtype=torch.float64)
    masses.scatter_add_(-1, buckets, probs.double())
    return buckets, masses


def _boundary_bucket(masses: torch.Tensor, mass_above: float, top_p: float) -> tuple[int, float]:
    """The highest bucket whose mass, with everything above it, reaches top_p; and the mass strictly above it."""
    reaching = torch.flip(torch.cumsum(torch.flip(masses, (0,)), 0), (0,)) + mass_above >= top_p
    indices = torch.nonzero(reaching)
    bucket = int(indices[-1]) if indices.numel() else 0
    return bucket, mass_above + float(masses[bucket + 1 :].sum())


def _threshold_among(candidates: torch.Tensor, mass_above: float, top_p: float) -> torch.Tensor:
    """Threshold for one row, given the candidates that can hold it and the mass of the tokens above them."""
    while candidates.numel() > _SORT_BELOW:
        buckets, masses = _log_buckets(candidates)
        if int(buckets.max()) == 0:
            break  # all candidates equal: the sort below settles it
        bucket, mass_above = _boundary_bucket(masses, mass_above, top_p)
        candidates = candidates[buckets == bucket]
    ordered = torch.sort(candidates, descending=True).values
    cumulative = mass_above + torch.cumsum(ordered.double(), dim=0)
    reached = torch.nonzero(cumulative >= top_p)
    # Rounding can leave the total a hair under top_p: then every candidate is in.
    index = int(reached[0]) if reached.numel() else ordered.numel() - 1
    return ordered[index]


def nucleus_thresholds(probs: torch.Tensor, top_ps: Sequence[float]) -> torch.Tensor:
    """Smallest probability kept by top-p, per row of `probs` (batch x vocab, rows sum to 1).

    Row i's nucleus is every token with probability >= result[i]: the smallest set of most likely
    tokens whose mass reaches top_ps[i].
    """
    buckets, masses = _log_buckets(probs)
    thresholds = []
    for row, top_p in enumerate(top_ps):
        if top_p >= 1.0:
            thresholds.append(probs[row].min())
            continue
        bucket, mass_above = _boundary_bucket(masses[row], 0.0, top_p)
        thresholds.append(_threshold_among(probs[row][buckets[row] == bucket], mass_above, top_p))
    return torch.stack(thresholds)


def select_next_tokens(logits: torch.Tensor, rows: Sequence[RowSampling]) -> torch.Tensor:
    """Pick one token per row from `logits` (batch x vocab, float32): argmax or nucleus sampling."""
    next_tokens = torch.argmax(logits, dim=-1)
    sampled = [index for index, row in enumerate(rows) if not row.greedy]
    if not sampled:
        return next_tokens
    temperatures = logits.new_tensor([rows[index].temperature for index in sampled])
    probs = torch.softmax(logits[sampled] / temperatures[:, None], dim=-1)
    thresholds = nucleus_thresholds(probs, [rows[index].top_p for index in sampled])
    nucleus = torch.where(probs >= thresholds[:, None], probs, torch.zeros_like(probs))
    cdf = torch.cumsum(nucleus, dim=-1)
    draws = torch.stack([torch.rand((), generator=rows[index].generator, device=logits.device) for index in sampled])
    picks = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None]).squeeze(1)
    # searchsorted can land one past the end when the draw rounds to the total.
    next_tokens[sampled] = picks.clamp_max(logits.shape[-1] - 1)
    return next_tokens
