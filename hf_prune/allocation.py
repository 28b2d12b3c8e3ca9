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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

GQA_MODES = ("auto", "kv_groups", "query_heads")
RANKINGS = ("uniform", "global")


# The kinds of the positional LayerPlan(keep_heads, keep_kv_heads, keep_neurons) of earlier versions.
_POSITIONAL_KINDS = ("heads", "kv_heads", "neurons")


class LayerPlan:
    """What one block keeps: ``keep[kind]`` lists the unit indices of each kind it keeps.

    Built as ``LayerPlan(keep={"heads": [...], "kv_heads": [...], "neurons": [...]})``, from a report's
    ``keep_<kind>`` entries (``LayerPlan(**report.kept[i])``), or positionally as ``(heads, kv_heads, neurons)``.
    """

    def __init__(self, *positional: list[int], keep: dict[str, list[int]] | None = None, **named: list[int]) -> None:
        if len(positional) > len(_POSITIONAL_KINDS):
            raise TypeError(f"LayerPlan takes at most {len(_POSITIONAL_KINDS)} positional lists {_POSITIONAL_KINDS}.")
        self.keep: dict[str, list[int]] = {}
        self.keep.update(zip(_POSITIONAL_KINDS, positional, strict=False))
        for key, value in named.items():
            if not key.startswith("keep_"):
                raise TypeError(f"LayerPlan got an unexpected argument '{key}' (kept units are keep_<kind>=[...]).")
            self.keep[key[len("keep_") :]] = value
        self.keep.update(keep or {})
        self.keep = {kind: list(units) for kind, units in self.keep.items()}

    def to_dict(self) -> dict[str, list[int]]:
        """``{"keep_<kind>": [...]}``: what reports store per block (and what the constructor takes back)."""
        return {f"keep_{kind}": list(units) for kind, units in self.keep.items()}

    def counts(self) -> dict[str, int]:
        return {kind: len(units) for kind, units in self.keep.items()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerPlan) and self.keep == other.keep

    def __repr__(self) -> str:
        return f"LayerPlan({self.keep})"

    # Read-only names for the shipped kinds.
    @property
    def keep_heads(self) -> list[int]:
        return self.keep["heads"]

    @property
    def keep_kv_heads(self) -> list[int]:
        return self.keep["kv_heads"]

    @property
    def keep_neurons(self) -> list[int]:
        return self.keep["neurons"]


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


def min_kept(units: int, multiple: int = 1) -> int:
    """The fewest of ``units`` a block may keep: one ``multiple`` when the block is larger, else one unit."""
    return multiple if units > multiple else 1


def count_to_remove(fraction: float, units: int, multiple: int = 1) -> int:
    """How many of ``units`` to remove for ``fraction``, keeping at least one and a multiple of ``multiple``."""
    # Ties round towards keeping more (0.5 of 3 KV groups removes 1): never overshoot the target by half a unit.
    if units <= multiple:
        return min(max(0, math.ceil(fraction * units - 0.5)), units - 1)
    keep = max(multiple, multiple * math.floor(units * (1.0 - fraction) / multiple + 0.5))
    return max(0, units - min(keep, units))


def _prepare(scores: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
    """Normalise a block's scores to unit L2 norm, so that blocks compare under global ranking (Michel et al.
    2019), and put already-removed groups below every live one (scores are non-negative, removed ones -1)."""
    scores = scores.detach().float().cpu().clamp_min(0.0)
    live = scores if masked is None else scores[~masked]
    norm = live.norm()
    scores = scores / norm if norm > 0 else scores
    if masked is not None:
        scores = torch.where(masked, torch.full_like(scores, -1.0), scores)
    return scores


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
    masked_heads: Sequence[torch.Tensor] | None = None,
    masked_neurons: Sequence[torch.Tensor] | None = None,
    tied_heads: bool = False,
) -> list[LayerPlan]:
    """Choose the heads and neurons every block keeps.

    Args:
        head_scores: per block, one score per query head (higher = more important).
        kv_heads: per block, its number of KV heads.
        neuron_scores: per block, one score per neuron.
        heads_fraction / neurons_fraction: fraction of head units / neurons to remove, in [0, 1).
        ranking: ``"uniform"`` removes the fraction from every block; ``"global"`` ranks scores across blocks
            after scaling each block's scores to unit L2 norm (Michel et al. 2019), so a block whose importance
            is concentrated in a few groups loses more of the others, whatever the block's overall scale.
        gqa_mode: ``"auto"``, ``"kv_groups"`` or ``"query_heads"`` (see module docstring).
        neuron_multiple: kept neurons per block are rounded to a multiple of this (hardware efficiency).
        protected_layers: blocks that keep everything.
        masked_heads / masked_neurons: per block, bool tensors of groups already removed (gradual pruning);
            they stay removed whatever the fractions (nothing masked ever comes back), and the rest of the
            removal comes from the live groups.
        tied_heads: every block keeps the same heads (a per-head tensor outside the blocks is shared by all of
            them): the blocks' normalised head scores are summed and the head fraction is removed uniformly,
            whatever ``ranking`` says (it still applies to neurons). Needs the same head layout in every block.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}.")
    n_layers = len(head_scores)
    protected = set(protected_layers)
    head_scores = [_prepare(s, None if masked_heads is None else masked_heads[i]) for i, s in enumerate(head_scores)]
    if tied_heads:
        if len({s.numel() for s in head_scores}) > 1 or len(set(kv_heads)) > 1:
            raise ValueError("tied_heads needs the same number of query and KV heads in every block.")
        tied = torch.stack(head_scores).sum(0)
        head_scores = [tied] * n_layers
    neuron_scores = [
        _prepare(s, None if masked_neurons is None else masked_neurons[i]) for i, s in enumerate(neuron_scores)
    ]
    # Without head pruning, no unit layout is needed (and an MQA model with gqa_mode='kv_groups' is fine). The
    # callback always passes masks, all False until a head is removed: only a removed head asks for units.
    prune_heads = heads_fraction > 0 or (masked_heads is not None and any(bool(m.any()) for m in masked_heads))
    if tied_heads and prune_heads and protected:
        raise ValueError(
            "protected layers keep all their heads, but tied_heads needs the same heads in every block: protect no "
            "layer, or remove no heads."
        )
    units = [
        head_units(s, kv, gqa_mode) if prune_heads else HeadUnits([], [], [])
        for s, kv in zip(head_scores, kv_heads, strict=True)
    ]
    n_heads_units = [len(u.scores) for u in units]
    n_neurons = [s.numel() for s in neuron_scores]

    if ranking == "uniform" or tied_heads:
        remove_units = [
            0 if i in protected else count_to_remove(heads_fraction, n) for i, n in enumerate(n_heads_units)
        ]
    else:
        remove_units = _global_counts([torch.tensor(u.scores) for u in units], heads_fraction, protected, multiple=1)
    if ranking == "uniform":
        remove_neurons = [
            0 if i in protected else count_to_remove(neurons_fraction, n, neuron_multiple)
            for i, n in enumerate(n_neurons)
        ]
    else:
        remove_neurons = _global_counts(list(neuron_scores), neurons_fraction, protected, multiple=neuron_multiple)

    # What is already removed stays removed, whatever the new counts say: a smaller head fraction (a cost target
    # may trade heads for neurons between updates), or a global budget below what rounding to the neuron
    # multiple removed last time. Removed groups sort first (see _prepare), so they are the first ones taken.
    for i in range(n_layers):
        remove_units[i] = max(
            remove_units[i], _removed_units(units[i], None if masked_heads is None else masked_heads[i])
        )
        if masked_neurons is not None:
            remove_neurons[i] = max(remove_neurons[i], int(masked_neurons[i].sum()))

    plans = []
    for i in range(n_layers):
        removed_heads = {h for unit in units[i].heads[: remove_units[i]] for h in unit}
        removed_kv = {h for unit in units[i].kv_heads[: remove_units[i]] for h in unit}
        order = torch.argsort(neuron_scores[i], stable=True).tolist()
        removed_neurons = set(order[: remove_neurons[i]])
        plans.append(
            LayerPlan(
                keep={
                    "heads": [h for h in range(head_scores[i].numel()) if h not in removed_heads],
                    "kv_heads": [h for h in range(kv_heads[i]) if h not in removed_kv],
                    "neurons": [n for n in range(n_neurons[i]) if n not in removed_neurons],
                }
            )
        )
    return plans


def _removed_units(units: HeadUnits, masked: torch.Tensor | None) -> int:
    """How many of a block's head units are already removed (all their heads masked); they come first."""
    if masked is None:
        return 0
    return sum(1 for heads in units.heads if bool(masked[heads].all()))


def _global_counts(scores: Sequence[torch.Tensor], fraction: float, protected: set[int], multiple: int) -> list[int]:
    """Per-block removal counts from one global ranking of (normalised) scores, at least one unit kept."""
    eligible = [i for i in range(len(scores)) if i not in protected]
    counts = [0] * len(scores)
    if not eligible:
        return counts
    total = sum(scores[i].numel() for i in eligible)
    budget = round(fraction * total)
    values = torch.cat([scores[i].float() for i in eligible])
    layer = torch.cat([torch.full((scores[i].numel(),), i) for i in eligible])
    order = torch.argsort(values, stable=True)
    layer_sorted = layer[order]
    # Rank of each entry within its own block, in global order. A block gives at most all but min_kept units:
    # a choice below one multiple would be rounded back up to a whole multiple, far short of the budget.
    rank = torch.zeros_like(layer_sorted)
    for i in eligible:
        where = layer_sorted == i
        rank[where] = torch.arange(int(where.sum()))
    caps = torch.tensor([scores[i].numel() - min_kept(scores[i].numel(), multiple) for i in range(len(scores))])
    chosen = layer_sorted[rank < caps[layer_sorted]][:budget]
    for i, c in enumerate(torch.bincount(chosen, minlength=len(scores)).tolist()):
        counts[i] = c
    if multiple > 1:
        for i in eligible:
            n = scores[i].numel()
            kept = n - counts[i]
            if n > multiple:
                kept = min(n, max(multiple, multiple * math.floor(kept / multiple + 0.5)))
                counts[i] = n - kept
    return counts


def budget_fractions(
    head_scores: Sequence[torch.Tensor],
    kv_heads: Sequence[int],
    neuron_scores: Sequence[torch.Tensor],
    removed_cost: Callable[[list[LayerPlan]], float],
    target: float,
    heads_fraction: float | None = None,
    **kwargs: object,
) -> tuple[float, float]:
    """The head and neuron fractions for :func:`plan_pruning` whose plan removes ``target`` of a cost.

    Head fractions on a grid (or ``heads_fraction`` when given) are each completed with the neuron fraction
    that lands closest below the target; of the candidates that come closest, the one whose head and neuron
    fractions are most alike wins (no kind of group is sacrificed to spare the other). ``kwargs`` are those of
    :func:`plan_pruning` (masks of removed groups included: they count towards the cost).
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"a cost target must be a fraction in [0, 1), got {target!r}.")

    def plan(h: float, n: float) -> list[LayerPlan]:
        return plan_pruning(head_scores, kv_heads, neuron_scores, h, n, **kwargs)  # type: ignore[arg-type]

    def largest_neurons(h: float) -> float:
        low, high = 0.0, 0.999
        if removed_cost(plan(h, low)) > target:
            return -1.0  # this head fraction alone overshoots
        for _ in range(25):  # bisection on a step function: resolves a single neuron in any realistic block
            middle = (low + high) / 2
            low, high = (middle, high) if removed_cost(plan(h, middle)) <= target else (low, middle)
        return low

    grid = [heads_fraction] if heads_fraction is not None else [i / 20 for i in range(20)]
    candidates = []
    seen: set[tuple[int, ...]] = set()
    for h in grid:
        key = tuple(len(p.keep_heads) for p in plan(h, 0.0))
        if key in seen:
            continue
        seen.add(key)
        n = largest_neurons(h)
        if n >= 0.0:
            candidates.append((removed_cost(plan(h, n)), h, n))
    if not candidates:
        return 0.0, 0.0
    best = max(c[0] for c in candidates)
    close = [c for c in candidates if c[0] >= best - 0.005]
    _, h, n = min(close, key=lambda c: abs(c[1] - c[2]))
    return h, n
