"""Allocation: turn per-unit scores and targets into the units of every kind each block keeps.

Pure functions of tensors, so they are tested without a model. Each leading kind (:mod:`hf_prune.kinds`) hands
:func:`plan_units` a :class:`KindRequest`: its scores, a fraction, and how its indices group into removable units.
Neurons are one unit each. Under GQA heads are removed in units that keep the query-to-KV mapping valid:

- ``kv_groups``: a unit is a KV head with all its query heads, which also shrinks the KV cache;
- ``query_heads``: a unit is one query head from *every* KV group (the r-th least important of each group), so all
  groups keep the same size and every KV head stays;
- without GQA a unit is simply a head.

``auto`` depends on what follows the removal (:func:`auto_gqa_mode`), as measured on SmolLM2-135M (9 heads over
3 KV heads, README "Quality without retraining"): with reconstruction, query heads beat whole KV groups at every
measured point; without it, whole KV groups were far better (Taylor, 20%: perplexity 91 against 161).
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


def auto_gqa_mode(mode: str, reconstructs: bool) -> str:
    """What ``auto`` means for one pruning run: query heads when reconstruction follows the removal, otherwise
    ``auto`` stays (whole KV groups; query heads under MQA, see :func:`resolve_gqa_mode`)."""
    return "query_heads" if mode == "auto" and reconstructs else mode


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


@dataclass
class Units:
    """The removable units of one leading kind in one block, least important first.

    ``members[kind]`` lists, per unit, the indices of each kind of its part that the unit removes (a KV group
    removes query heads and one KV head). Without ``members`` a unit is one index of the leading kind:
    ``order[j]`` is what unit ``j`` removes.
    """

    scores: torch.Tensor  # one per unit, ascending
    members: dict[str, list[list[int]]] | None = None
    order: list[int] | None = None

    def removed(self, leader: str, count: int) -> dict[str, set[int]]:
        """The indices, per kind, that removing the first ``count`` units removes."""
        if self.members is None:
            return {leader: set((self.order or [])[:count])}
        return {kind: {i for unit in units[:count] for i in unit} for kind, units in self.members.items()}

    def _orders_every_index(self, size: int) -> bool:
        """Whether units are single indices and ``order`` lists all ``size`` of them (the fast paths below)."""
        return self.members is None and self.order is not None and len(self.order) == size

    def kept(self, leader: str, count: int, sizes: dict[str, int]) -> dict[str, list[int]]:
        """The indices, per kind, that stay when the first ``count`` units go (``sizes``: indices per kind)."""
        if self.order is not None and self._orders_every_index(sizes[leader]):
            return {leader: sorted(self.order[count:])}
        removed = self.removed(leader, count)
        return {kind: [j for j in range(size) if j not in removed.get(kind, set())] for kind, size in sizes.items()}

    def kept_counts(self, leader: str, count: int, sizes: dict[str, int]) -> dict[str, int]:
        """How many indices of each kind :meth:`kept` keeps, without listing them."""
        if self._orders_every_index(sizes[leader]):
            return {leader: sizes[leader] - min(count, sizes[leader])}
        removed = self.removed(leader, count)
        return {kind: size - len(removed.get(kind, ())) for kind, size in sizes.items()}

    def already_removed(self, leader: str, masked: torch.Tensor | None) -> int:
        """How many units are masked already (every index of the leading kind they remove); they come first."""
        if masked is None:
            return 0
        if self.members is None:
            return int(masked.sum())
        return sum(1 for unit in self.members[leader] if bool(masked[unit].all()))


def single_units(scores: torch.Tensor) -> Units:
    """Units of one index each (neurons), least important first."""
    order = torch.argsort(scores, stable=True)
    return Units(scores[order], order=order.tolist())


def grouped_units(heads: HeadUnits) -> Units:
    """:func:`head_units`' GQA units as :class:`Units` of the attention part."""
    return Units(torch.tensor(heads.scores), {"heads": heads.heads, "kv_heads": heads.kv_heads})


@dataclass
class KindRequest:
    """What :func:`plan_units` needs about one leading kind (built by the kind, :mod:`hf_prune.kinds`)."""

    name: str
    scores: Sequence[torch.Tensor]  # per block, one per index of the leading kind (higher = more important)
    sizes: dict[str, Sequence[int]]  # per kind of the part (the leader first): indices per block
    fraction: float  # of the units to remove, in [0, 1)
    units: Callable[[int, torch.Tensor], Units]  # (block, prepared scores) -> removable units
    multiple: int = 1  # kept units per block are rounded to a multiple of this
    min_kept: int = 1  # no block keeps fewer units than this (an MoE block keeps its top-k experts)
    masked: Sequence[torch.Tensor] | None = None  # per block, indices already removed (they stay removed)
    tied: bool = False  # every block keeps the same units (uniform removal, whatever the ranking)
    # With ``tied``: the groups of blocks that keep the same units (each stack of an encoder-decoder); unset: one group
    # of every block.
    tie_groups: Sequence[Sequence[int]] = ()
    # Build units only when something is removed: GQA units refuse some layouts that are fine to leave alone.
    lazy: bool = False
    label: str = ""  # what people call the units (messages)
    # Adjusts one block's merged plan once every kind is planned, for a kind whose indices depend on another kind's
    # choice: (block, kept indices per kind) and (block, kept counts per kind), both changed in place.
    finish: Callable[[int, dict[str, list[int]]], None] | None = None
    finish_counts: Callable[[int, dict[str, int]], None] | None = None


def plan_units(
    requests: Sequence[KindRequest], ranking: str = "uniform", protected_layers: Sequence[int] = ()
) -> list[LayerPlan]:
    """Choose, per leading kind, the units every block keeps, and from them the kept indices of every kind.

    One kind's removal does not depend on another's: each request is planned on its own (see
    :func:`plan_pruning` for the ranking, protection and already-removed rules), then the blocks' kept indices
    are merged into one :class:`LayerPlan` per block.
    """
    return Planner(requests, ranking, protected_layers).plan({r.name: r.fraction for r in requests})


class Planner:
    """:func:`plan_units` for many fractions on the same scores. A cost target searches hundreds of fractions: what
    does not depend on the fraction (normalised scores, units, the global order) is built once per kind, and each
    kind's plan once per fraction."""

    def __init__(
        self, requests: Sequence[KindRequest], ranking: str = "uniform", protected_layers: Sequence[int] = ()
    ) -> None:
        if ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}.")
        self.kinds = [_KindPlanner(r, ranking, set(protected_layers)) for r in requests]
        self.n_layers = len(requests[0].scores) if requests else 0

    def plan(self, fractions: dict[str, float]) -> list[LayerPlan]:
        """The plans that remove ``fractions[kind]`` of each leading kind's units (none of a kind not named)."""
        keep: list[dict[str, list[int]]] = [{} for _ in range(self.n_layers)]
        for kind in self.kinds:
            for i, kept in enumerate(kind.keep(fractions.get(kind.request.name, 0.0))):
                keep[i].update(kept)
        for kind in self.kinds:
            if kind.request.finish is not None:
                for i, block in enumerate(keep):
                    kind.request.finish(i, block)
        return [LayerPlan(keep=block) for block in keep]  # LayerPlan copies the lists: the cache stays intact

    def counts(self, fractions: dict[str, float]) -> list[dict[str, int]]:
        """Per block, how many units of every kind :meth:`plan` keeps (what a cost depends on), without listing
        them: the cheap question a search over fractions asks."""
        counts: list[dict[str, int]] = [{} for _ in range(self.n_layers)]
        for kind in self.kinds:
            for i, kept in enumerate(kind.kept_counts(fractions.get(kind.request.name, 0.0))):
                counts[i].update(kept)
        for kind in self.kinds:
            if kind.request.finish_counts is not None:
                for i, block in enumerate(counts):
                    kind.request.finish_counts(i, block)
        return counts


class _KindPlanner:
    """One leading kind's part of :class:`Planner`."""

    def __init__(self, request: KindRequest, ranking: str, protected: set[int]) -> None:
        self.request, self.ranking, self.protected = request, ranking, protected
        masked = request.masked
        scores = [_prepare(s, None if masked is None else masked[i]) for i, s in enumerate(request.scores)]
        if request.tied:
            scores = list(scores)
            for group in request.tie_groups or [range(len(scores))]:
                # Blocks without units of the kind (an encoder's cross-attention heads) stay out of the tie.
                filled = [i for i in group if scores[i].numel()]
                if any(len({sizes[i] for i in filled}) > 1 for sizes in request.sizes.values()):
                    raise ValueError(
                        f"tied_{request.name} needs the same number of {' and '.join(request.sizes)} in every block."
                    )
                if filled:
                    total = torch.stack([scores[i] for i in filled]).sum(0)
                    for i in filled:
                        scores[i] = total
        self.scores = scores
        # The callback always passes masks, all False until a unit is removed: only a removed unit asks for units.
        self.any_masked = masked is not None and any(bool(m.any()) for m in masked)
        self._units: dict[bool, list[Units]] = {}
        self._global_order: dict[bool, torch.Tensor] = {}
        self._removals: dict[float, list[int]] = {}

    def keep(self, fraction: float) -> list[dict[str, list[int]]]:
        """Per block, the kept indices of every kind of the part when ``fraction`` of the units go."""
        blocks = zip(self._units_for(self._active(fraction)), self._removal(fraction), strict=True)
        return [block.kept(self.request.name, n, self._sizes(i)) for i, (block, n) in enumerate(blocks)]

    def kept_counts(self, fraction: float) -> list[dict[str, int]]:
        """Per block, how many indices of every kind :meth:`keep` keeps."""
        blocks = zip(self._units_for(self._active(fraction)), self._removal(fraction), strict=True)
        return [block.kept_counts(self.request.name, n, self._sizes(i)) for i, (block, n) in enumerate(blocks)]

    def _sizes(self, block: int) -> dict[str, int]:
        return {kind: sizes[block] for kind, sizes in self.request.sizes.items()}

    def _active(self, fraction: float) -> bool:
        return fraction > 0 or self.any_masked

    def _units_for(self, active: bool) -> list[Units]:
        if active not in self._units:
            request = self.request
            empty = Units(torch.zeros(0), {kind: [] for kind in request.sizes})
            self._units[active] = [
                request.units(i, s) if active or not request.lazy else empty for i, s in enumerate(self.scores)
            ]
        return self._units[active]

    def _removal(self, fraction: float) -> list[int]:
        """Per block, how many units go (once per fraction)."""
        if fraction not in self._removals:
            self._removals[fraction] = self._count_removal(fraction)
        return self._removals[fraction]

    def _count_removal(self, fraction: float) -> list[int]:
        request, protected, masked = self.request, self.protected, self.request.masked
        name, label = request.name, request.label or request.name
        active = self._active(fraction)
        if request.tied and active and protected:
            raise ValueError(
                f"protected layers keep all their {label}, but tied_{name} needs the same {label} in every block: "
                f"protect no layer, or remove no {label}."
            )
        units = self._units_for(active)
        counts = [len(u.scores) for u in units]
        if self.ranking == "uniform" or request.tied:
            remove = [
                0 if i in protected else count_to_remove(fraction, n, request.multiple) for i, n in enumerate(counts)
            ]
        else:
            remove = self._global_counts(units, active, fraction)
        remove = [max(0, min(r, n - request.min_kept)) for r, n in zip(remove, counts, strict=True)]
        # What is already removed stays removed, whatever the new counts say: a smaller fraction (a cost target may
        # trade heads for neurons between updates), or a global budget below what rounding to the multiple removed
        # last time. Removed units sort first (see _prepare), so they are the first ones taken.
        return [
            max(remove[i], block.already_removed(name, None if masked is None else masked[i]))
            for i, block in enumerate(units)
        ]

    def _global_counts(self, units: list[Units], active: bool, fraction: float) -> list[int]:
        """Per-block removal counts from one global ranking of (normalised) scores: the order is built once, and a
        fraction takes a prefix of it."""
        scores = [u.scores for u in units]
        eligible = [i for i in range(len(scores)) if i not in self.protected]
        if not eligible:
            return [0] * len(scores)
        multiple = self.request.multiple
        if active not in self._global_order:
            self._global_order[active] = _global_order(scores, eligible, multiple, self.request.min_kept)
        budget = round(fraction * sum(scores[i].numel() for i in eligible))
        counts = torch.bincount(self._global_order[active][:budget], minlength=len(scores)).tolist()
        if multiple > 1:
            for i in eligible:
                n = scores[i].numel()
                kept = n - counts[i]
                if n > multiple:
                    kept = min(n, max(multiple, multiple * math.floor(kept / multiple + 0.5)))
                    counts[i] = n - kept
        return counts


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
    """Choose the heads and neurons every block keeps (the shipped kinds' requests for :func:`plan_units`).

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
    requests = [
        head_request(head_scores, kv_heads, heads_fraction, gqa_mode, masked_heads, tied_heads),
        neuron_request(neuron_scores, neurons_fraction, neuron_multiple, masked_neurons),
    ]
    return plan_units(requests, ranking, protected_layers)


def head_request(
    scores: Sequence[torch.Tensor],
    kv_heads: Sequence[int],
    fraction: float,
    gqa_mode: str = "auto",
    masked: Sequence[torch.Tensor] | None = None,
    tied: bool = False,
    tie_groups: Sequence[Sequence[int]] = (),
) -> KindRequest:
    """Query heads in GQA units (module docstring); the KV heads go with the units that remove them."""
    return KindRequest(
        name="heads",
        scores=scores,
        sizes={"heads": [s.numel() for s in scores], "kv_heads": list(kv_heads)},
        fraction=fraction,
        units=lambda i, s: grouped_units(head_units(s, kv_heads[i], gqa_mode)),
        masked=masked,
        tied=tied,
        tie_groups=tie_groups,
        lazy=True,
        label="heads",
    )


def neuron_request(
    scores: Sequence[torch.Tensor],
    fraction: float,
    multiple: int = 1,
    masked: Sequence[torch.Tensor] | None = None,
) -> KindRequest:
    """MLP neurons, one unit each, kept in multiples of ``multiple``."""
    return single_unit_request("neurons", scores, fraction, multiple=multiple, masked=masked)


def single_unit_request(
    name: str,
    scores: Sequence[torch.Tensor],
    fraction: float,
    multiple: int = 1,
    masked: Sequence[torch.Tensor] | None = None,
    min_kept: int = 1,
) -> KindRequest:
    """A kind whose every index is a unit of its own (neurons, experts): ``fraction`` of each block's units, kept in
    multiples of ``multiple`` and never fewer than ``min_kept``."""
    return KindRequest(
        name=name,
        scores=scores,
        sizes={name: [s.numel() for s in scores]},
        fraction=fraction,
        units=lambda i, s: single_units(s),
        multiple=multiple,
        masked=masked,
        min_kept=min_kept,
        label=name,
    )


def expert_neuron_units(scores: torch.Tensor, experts: int) -> Units:
    """The removable units of the neurons inside one block's ``experts`` (``scores``: one per neuron, expert ``e``'s
    neuron ``j`` at ``e * width + j``). Every expert keeps the same number of neurons (its weights are one 3-D
    tensor), so, as GQA's query-head units do, slot ``r`` removes the ``r``-th least important neuron of *every*
    expert, and scores as their sum. Removed neurons (score -1, see ``_prepare``) count as 0, so a removed expert's
    neurons do not lower every slot of its block against other blocks."""
    by_expert = scores.view(experts, -1)
    ranked = torch.argsort(by_expert, dim=1, stable=True)
    width = by_expert.shape[1]
    slot_scores = by_expert.clamp_min(0.0).gather(1, ranked).sum(0)  # non-decreasing in r: ascending units
    offsets = (torch.arange(experts) * width)[:, None]
    members = (ranked + offsets).t().tolist()  # slot r: one neuron of every expert
    return Units(slot_scores, {"expert_neurons": members})


def expert_neuron_request(
    scores: Sequence[torch.Tensor],
    experts: Sequence[int],
    fraction: float,
    multiple: int = 1,
    masked: Sequence[torch.Tensor] | None = None,
) -> KindRequest:
    """Neurons inside MoE experts: ``fraction`` of each expert's neurons, the same number from every expert of a
    block (:func:`expert_neuron_units`), each expert's width kept in multiples of ``multiple``.

    The plan keeps only the neurons of the experts the block keeps (its ``experts`` entry): a removed expert's
    neurons go with it, so that the counts are the pruned block's.
    """
    widths = [s.numel() // e for s, e in zip(scores, experts, strict=True)]

    def finish(block: int, keep: dict[str, list[int]]) -> None:
        if "experts" in keep and len(keep["experts"]) != experts[block]:
            kept = set(keep["experts"])
            keep["expert_neurons"] = [n for n in keep["expert_neurons"] if n // widths[block] in kept]

    def finish_counts(block: int, counts: dict[str, int]) -> None:
        if "experts" in counts:
            counts["expert_neurons"] = counts["expert_neurons"] // experts[block] * counts["experts"]

    return KindRequest(
        name="expert_neurons",
        scores=scores,
        sizes={"expert_neurons": [s.numel() for s in scores]},
        fraction=fraction,
        units=lambda i, s: expert_neuron_units(s, experts[i]),
        multiple=multiple,
        masked=masked,
        label="neurons inside experts",
        finish=finish,
        finish_counts=finish_counts,
    )


def _global_order(scores: Sequence[torch.Tensor], eligible: list[int], multiple: int, least: int) -> torch.Tensor:
    """The blocks of the removable units in one global ranking of (normalised) scores, least important first: the
    first ``budget`` entries, counted per block, are what a global budget removes."""
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
    caps = torch.tensor(
        [max(0, scores[i].numel() - max(least, min_kept(scores[i].numel(), multiple))) for i in range(len(scores))]
    )
    return layer_sorted[rank < caps[layer_sorted]]


def budget_fractions(
    plan: Callable[[float, float], list[dict[str, int]]],
    removed_cost: Callable[[list[dict[str, int]]], float],
    target: float,
    heads_fraction: float | None = None,
) -> tuple[float, float]:
    """The head and neuron fractions whose ``plan(heads, neurons)`` (per block, the units kept of every kind)
    removes ``target`` of a cost.

    Head fractions on a grid (or ``heads_fraction`` when given) are each completed with the neuron fraction
    that lands closest below the target; of the candidates that come closest, the one whose head and neuron
    fractions are most alike wins (no kind of group is sacrificed to spare the other). ``plan`` plans on fixed
    scores and masks (masks of removed groups included: they count towards the cost).
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"a cost target must be a fraction in [0, 1), got {target!r}.")

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
    seen: set[tuple[tuple[int, ...], ...]] = set()
    for h in grid:
        key = tuple(tuple(counts.values()) for counts in plan(h, 0.0))
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
