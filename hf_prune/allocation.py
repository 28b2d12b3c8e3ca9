"""Allocation: turn per-group scores and targets into the heads and neurons each block keeps.

Pure functions of tensors, so they are tested without a model. Under GQA heads are removed in units that
keep the query-to-KV mapping valid:

- ``kv_groups``: a unit is a KV head with all its query heads;
- ``query_heads``: a unit is one query head from *every* KV group (the r-th least important of each group),
  so all groups keep the same size;
- without GQA a unit is simply a head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

GQA_MODES = ("auto", "kv_groups", "query_heads")
RANKINGS = ("uniform", "global")


@dataclass
class LayerPlan:
    """What one block keeps."""

    keep_heads: list[int]
    keep_kv_heads: list[int]
    keep_neurons: list[int]


@dataclass
class HeadUnits:
    """The removable head units of one block, least important first within the block."""

    scores: list[float]  # one per unit, ascending
    heads: list[list[int]]  # query heads each unit removes
    kv_heads: list[list[int]] = field(default_factory=list)  # KV heads each unit removes


def resolve_gqa_mode(mode: str, heads: int, kv_heads: int) -> str:
    """Pick the unit kind for a block: whole KV groups by default, query heads under MQA."""
    if mode not in GQA_MODES:
        raise ValueError(f"gqa_mode must be one of {GQA_MODES}, got {mode!r}.")
    if kv_heads == heads:
        return "heads"
    if mode == "auto":
        return "query_heads" if kv_heads == 1 else "kv_groups"
    if mode == "kv_groups" and kv_heads == 1:
        raise ValueError(
            "gqa_mode='kv_groups' cannot prune a layer with a single KV head (MQA): removing it empties the "
            "layer. Use gqa_mode='query_heads' (or 'auto')."
        )
    return mode


def head_units(scores: torch.Tensor, kv_heads: int, mode: str) -> HeadUnits:
    """Group the query-head ``scores`` of one block into removable units (see module docstring)."""
    heads = scores.numel()
    group = heads // kv_heads
    kind = resolve_gqa_mode(mode, heads, kv_heads)
    if kind == "heads":
        order = torch.argsort(scores, stable=True).tolist()
        return HeadUnits([float(scores[h]) for h in order], [[h] for h in order], [[h] for h in order])
    by_group = scores.view(kv_heads, group)
    if kind == "kv_groups":
        totals = by_group.sum(1)
        order = torch.argsort(totals, stable=True).tolist()
        return HeadUnits(
            [float(totals[g]) for g in order],
            [list(range(g * group, (g + 1) * group)) for g in order],
            [[g] for g in order],
        )
    # query_heads: slot r removes the r-th least important query head of every group.
    ranked = torch.argsort(by_group, dim=1, stable=True)
    units = HeadUnits([], [], [])
    for r in range(group):
        members = [g * group + int(ranked[g, r]) for g in range(kv_heads)]
        units.scores.append(float(scores[members].sum()))
        units.heads.append(members)
        units.kv_heads.append([])
    return units


def count_to_remove(fraction: float, units: int, multiple: int = 1) -> int:
    """How many of ``units`` to remove for ``fraction``, keeping at least one and a multiple of ``multiple``."""
    # Ties round towards keeping more (0.5 of 3 KV groups removes 1): never overshoot the target by half a unit.
    if units <= multiple:
        return min(max(0, math.ceil(fraction * units - 0.5)), units - 1)
    keep = max(multiple, multiple * math.floor(units * (1.0 - fraction) / multiple + 0.5))
    return max(0, units - min(keep, units))


def _normalise(scores: torch.Tensor) -> torch.Tensor:
    """Scale a block's scores to unit L2 norm so that blocks compare under global ranking (Michel et al.)."""
    norm = scores.float().norm()
    return scores.float() / norm if norm > 0 else scores.float()


def plan_pruning(
    head_scores: Sequence[torch.Tensor],
    kv_heads: Sequence[int],
    neuron_scores: Sequence[torch.Tensor],
    heads_fraction: float,
    neurons_fraction: float,
    ranking: str = "uniform",
    gqa_mode: str = "auto",
    neuron_multiple: int = 1,
    protected_layers: Sequence[int] = (),
) -> list[LayerPlan]:
    """Choose the heads and neurons every block keeps.

    Args:
        head_scores: per block, one score per query head (higher = more important).
        kv_heads: per block, its number of KV heads.
        neuron_scores: per block, one score per neuron.
        heads_fraction / neurons_fraction: fraction of head units / neurons to remove, in [0, 1).
        ranking: ``"uniform"`` removes the fraction from every block; ``"global"`` ranks normalised scores
            across blocks, so unimportant blocks lose more.
        gqa_mode: ``"auto"``, ``"kv_groups"`` or ``"query_heads"`` (see module docstring).
        neuron_multiple: kept neurons per block are rounded to a multiple of this (hardware efficiency).
        protected_layers: blocks that keep everything.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}.")
    n_layers = len(head_scores)
    protected = set(protected_layers)
    units = [head_units(s, kv, gqa_mode) for s, kv in zip(head_scores, kv_heads, strict=True)]
    n_heads_units = [len(u.scores) for u in units]
    n_neurons = [s.numel() for s in neuron_scores]

    if ranking == "uniform":
        remove_units = [
            0 if i in protected else count_to_remove(heads_fraction, n) for i, n in enumerate(n_heads_units)
        ]
        remove_neurons = [
            0 if i in protected else count_to_remove(neurons_fraction, n, neuron_multiple)
            for i, n in enumerate(n_neurons)
        ]
    else:
        remove_units = _global_counts(
            [torch.tensor(u.scores) for u in units], heads_fraction, protected, multiple=1, sorted_scores=True
        )
        remove_neurons = _global_counts(list(neuron_scores), neurons_fraction, protected, multiple=neuron_multiple)

    plans = []
    for i in range(n_layers):
        removed_heads = {h for unit in units[i].heads[: remove_units[i]] for h in unit}
        removed_kv = {h for unit in units[i].kv_heads[: remove_units[i]] for h in unit}
        order = torch.argsort(neuron_scores[i], stable=True).tolist()
        removed_neurons = set(order[: remove_neurons[i]])
        plans.append(
            LayerPlan(
                keep_heads=[h for h in range(head_scores[i].numel()) if h not in removed_heads],
                keep_kv_heads=[h for h in range(kv_heads[i]) if h not in removed_kv],
                keep_neurons=[n for n in range(n_neurons[i]) if n not in removed_neurons],
            )
        )
    return plans


def _global_counts(
    scores: Sequence[torch.Tensor], fraction: float, protected: set[int], multiple: int, sorted_scores: bool = False
) -> list[int]:
    """Per-block removal counts from one global ranking of normalised scores (at least one unit kept)."""
    eligible = [i for i in range(len(scores)) if i not in protected]
    total = sum(scores[i].numel() for i in eligible)
    budget = round(fraction * total)
    entries = []
    for i in eligible:
        normalised = _normalise(scores[i])
        values = normalised if sorted_scores else torch.sort(normalised).values
        entries.extend((float(v), i) for v in values)
    entries.sort(key=lambda e: e[0])
    counts = [0] * len(scores)
    for _, i in entries:
        if budget == 0:
            break
        if counts[i] < scores[i].numel() - 1:
            counts[i] += 1
            budget -= 1
    if multiple > 1:
        for i in eligible:
            n = scores[i].numel()
            kept = n - counts[i]
            if n > multiple:
                kept = min(n, max(multiple, multiple * math.floor(kept / multiple + 0.5)))
                counts[i] = n - kept
    return counts
