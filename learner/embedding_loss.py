"""The ranking loss of Wang & Gupta 2015 (5.2, 5.3) for tracked-patch embeddings.

For a pair (query q, tracked t) and a negative n: max(0, D(q, t) - D(q, n) + M), cosine distance
D = 1 - cos (the embeddings are unit vectors already), M = 0.5. Negatives are the other pairs'
patches in the batch (queries and tracked patches alike) whose group (camera, shot) differs: a
patch of the same shot may show the same object. During warm-up every such negative counts
(the paper samples them at random: the mean over all of them is that draw's expectation, without
the noise); afterwards only the K hardest, those with the largest loss, as in the paper's hard
negative mining.
"""

from __future__ import annotations

import torch


def negative_mask(group: torch.Tensor) -> torch.Tensor:
    """n x 2n bool: candidate j (queries, then tracked patches) is a negative for pair i."""
    cand = torch.cat([group, group])
    return group.view(-1, 1) != cand.view(1, -1)


def hardest_negatives(hinge: torch.Tensor, negatives: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair, the k candidates with the largest hinge loss among its negatives:
    (n x k indices into the candidates, n x k bool: a real negative, false where a pair has fewer)."""
    k = min(k, hinge.shape[1])
    scored = hinge.masked_fill(~negatives, float("-inf"))
    _, idx = scored.topk(k, dim=1)
    return idx, negatives.gather(1, idx)


def triplet_loss(
    query: torch.Tensor,
    tracked: torch.Tensor,
    group: torch.Tensor,
    margin: float = 0.5,
    hard_negatives: int | None = None,
) -> torch.Tensor:
    """Mean ranking loss over the pairs that have a negative in the batch (0 when none has one;
    no host sync: the trainer checks the groups on the host before it calls this).

    query, tracked: n x D unit vectors; group: n ints. hard_negatives: K, or None for all negatives."""
    query, tracked = query.float(), tracked.float()
    negatives = negative_mask(group)
    has = negatives.any(1).float()
    cand = torch.cat([query, tracked])
    d_pos = 1 - (query * tracked).sum(1)  # n
    d_neg = 1 - query @ cand.T  # n x 2n
    hinge = (d_pos.unsqueeze(1) - d_neg + margin).clamp_min(0)
    if hard_negatives is None:
        use = negatives.float()
        per_pair = (hinge * use).sum(1) / use.sum(1).clamp_min(1)
    else:
        idx, real = hardest_negatives(hinge.detach(), negatives, hard_negatives)
        use = real.float()
        per_pair = (hinge.gather(1, idx) * use).sum(1) / use.sum(1).clamp_min(1)
    return (per_pair * has).sum() / has.sum().clamp_min(1)
