"""Per-row token selection for a batch: greedy or temperature + top-p, each row with its own settings.

Why not transformers' TopPLogitsWarper: it sorts the whole 152k-token vocabulary of every row at
every step, which costs several times the tiny model's forward pass and does not get cheaper with
batching. Here each row's nucleus is found by a threshold search: one batched pass buckets every
token by its log-probability (buckets spanning each row's own range, so flat and peaked
distributions both spread out) and sums the mass per bucket; the bucket holding the top-p boundary
is the only part that is sorted. The nucleus is every token at or above the threshold, the set a
full sort keeps (ties at the boundary are all kept), and the token is drawn by inverse-CDF sampling
from the renormalised nucleus. Bulk work is done in place on one buffer: at 16 rows x 152k tokens,
fresh temporaries cost more in page faults than the arithmetic.

Django-free; plain torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

_BUCKETS = 4096
# Temperatures below this are greedy, as in vLLM (_SAMPLING_EPS): dividing logits by a subnormal temperature
# gives infinities, and the distribution it stands for is the argmax anyway.
GREEDY_BELOW_TEMPERATURE = 1e-5
# Below this many candidates a plain sort is cheaper than another histogram pass.
_SORT_BELOW = 4096


@dataclass(frozen=True)
class RowSampling:
    """How one row picks its next token. temperature 0 means greedy."""

    temperature: float
    top_p: float
    generator: torch.Generator | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE


def _bucketize(log_weights: torch.Tensor) -> torch.Tensor:
    """Bucket index (0 = least likely) of each entry, over each row's own [min, max] (last dim)."""
    low = log_weights.amin(dim=-1, keepdim=True)
    high = log_weights.amax(dim=-1, keepdim=True)
    scale = (_BUCKETS - 1) / (high - low).clamp_min(1e-12)
    # Masked tokens (-inf) make the span infinite and their positions NaN: those land in bucket 0 (least
    # likely) instead of becoming an out-of-range index.
    positions = (log_weights - low).mul_(scale).nan_to_num_(nan=0.0, posinf=_BUCKETS - 1, neginf=0.0)
    return positions.clamp_(0, _BUCKETS - 1).long()


def _threshold_in_bucket(candidates: torch.Tensor, mass_above: float, target: float) -> torch.Tensor:
    """The smallest weight kept, given the candidates that hold the boundary and the mass above them."""
    while candidates.numel() > _SORT_BELOW:
        buckets = _bucketize(candidates.log())
        if int(buckets.max()) == 0:
            break  # all candidates equal: the sort below settles it
        masses = candidates.new_zeros(_BUCKETS, dtype=torch.float64).scatter_add_(0, buckets, candidates.double())
        reaching = torch.nonzero(masses.flip(0).cumsum(0).flip(0) + mass_above >= target)
        bucket = int(reaching[-1]) if reaching.numel() else 0
        mass_above += float(masses[bucket + 1 :].sum())
        candidates = candidates[buckets == bucket]
    ordered = torch.sort(candidates, descending=True).values
    reached = torch.nonzero(mass_above + torch.cumsum(ordered.double(), dim=0) >= target)
    # Rounding can leave the total a hair under the target: then every candidate is in.
    return ordered[int(reached[0]) if reached.numel() else -1]


def nucleus_weights(scaled_logits: torch.Tensor, top_ps: Sequence[float]) -> torch.Tensor:
    """Turn `scaled_logits` (batch x vocab, already divided by temperature) IN PLACE into each row's
    nucleus: unnormalised probabilities, zero outside the smallest set of most likely tokens whose
    mass reaches that row's top_p. Returns the same tensor."""
    buckets = _bucketize(scaled_logits)
    weights = scaled_logits.sub_(scaled_logits.amax(dim=-1, keepdim=True)).exp_()
    masses = weights.new_zeros(weights.shape[0], _BUCKETS).scatter_add_(1, buckets, weights)
    at_or_above = masses.flip(1).cumsum(1).flip(1)
    thresholds = weights.new_zeros(weights.shape[0], 1)
    for row, top_p in enumerate(top_ps):
        if top_p >= 1.0:
            continue
        # At least float32's smallest normal number: the masses are float32, and a top_p of 1e-110 would round
        # to a target of 0 there, which every bucket, empty ones too, "reaches". The nucleus is the top token.
        target = max(top_p * float(at_or_above[row, 0]), torch.finfo(torch.float32).tiny)
        reaching = torch.nonzero(at_or_above[row] >= target)
        bucket = int(reaching[-1]) if reaching.numel() else 0
        mass_above = float(at_or_above[row, bucket] - masses[row, bucket])
        candidates = weights[row][buckets[row] == bucket]
        thresholds[row] = _threshold_in_bucket(candidates, mass_above, target)
    return weights.masked_fill_(weights < thresholds, 0.0)


def select_next_tokens(logits: torch.Tensor, rows: Sequence[RowSampling]) -> torch.Tensor:
    """Pick one token per row from `logits` (batch x vocab, float32): argmax or nucleus sampling.
    `logits` may be overwritten."""
    next_tokens = torch.argmax(logits, dim=-1)
    sampled = [index for index, row in enumerate(rows) if not row.greedy]
    if not sampled:
        return next_tokens
    index = torch.tensor(sampled, device=logits.device)
    temperatures = logits.new_tensor([rows[row].temperature for row in sampled])
    # The logits are the caller's to give away (a fresh float32 copy per step): when every row samples,
    # work on them in place rather than copying 152k floats per row.
    every_row = len(sampled) == len(rows)
    scaled = (logits if every_row else logits.index_select(0, index)).div_(temperatures[:, None])
    cdf = nucleus_weights(scaled, [rows[row].top_p for row in sampled]).cumsum_(dim=-1)
    draws = torch.stack([torch.rand((), generator=rows[row].generator, device=logits.device) for row in sampled])
    picks = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None]).squeeze(1)
    # searchsorted can land one past the end when the draw rounds to the total.
    next_tokens[index] = picks.clamp_max(logits.shape[-1] - 1)
    return next_tokens
