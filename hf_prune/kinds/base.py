"""What a kind of prunable unit is, and the registry the pipeline reads the kinds from.

A unit kind (a query head, a KV head, an MLP neuron) is one object that knows, from the recipe, where its weights
are, how many units a block has, how to sum a per-element quantity over each unit (for scores), how a unit is
masked, how units are removed and restored, what the count is called in the config, and what one unit costs.
Everything downstream (structure, importance, masks, allocation, costs, checkpoints) iterates over the kinds a
recipe has instead of naming them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .. import surgery
from ..recipe import Recipe

if TYPE_CHECKING:
    from ..allocation import KindRequest
    from ..config import PruningConfig
    from ..structure import ModelStructure

# rows(role) / cols(role): a per-element quantity of the projection playing ``role``, summed to one value per output
# row / input column (``None`` when the quantity skips that module, e.g. no gradient yet).
Reducer = Callable[[str], "torch.Tensor | None"]
# A sublayer's surgery step that shrinks a dense-shaped block to recorded counts (hf_prune.surgery.RESTORERS).
Restorer = Callable[[nn.Module, dict[str, Any], int, dict[str, int]], None]
# multiplier(like): a kind's keep mask of one block (1 kept, 0 masked), one entry per input feature of its mask module,
# on ``like``'s device and dtype; ``None`` when the block keeps every unit (the hook then changes nothing).
Multiplier = Callable[[torch.Tensor], "torch.Tensor | None"]


class UnitParameter:
    """A parameter whose slices along ``axis`` belong to units (the 3-D expert parameters of an MoE block, or a
    router's rows), seen as a module with a ``weight``: per-element criteria (magnitude, Taylor), the frozen-weights
    backward and the cost count read it like a projection. It holds no FLOPs of its own (see ``context_flops``).
    ``axis`` may be two axes, ``(expert axis, neuron axis)``: a unit is then one neuron of one expert."""

    def __init__(self, owner: nn.Module, name: str, axis: int | tuple[int, int]) -> None:
        self.owner, self.name, self.axis = owner, name, axis

    @property
    def weight(self) -> nn.Parameter:
        return getattr(self.owner, self.name)  # read live: surgery replaces the parameter

    @property
    def bias(self) -> nn.Parameter | None:
        """A router's bias (one entry per expert, sliced with its rows); ``None`` for other unit parameters."""
        bias = getattr(self.owner, "bias", None) if self.name == "weight" else None
        return bias if isinstance(bias, nn.Parameter) else None

    def parameters(self) -> Iterator[nn.Parameter]:
        yield self.weight


class UnitKind:
    """One kind of prunable unit of a transformer block. Subclass it and register an instance with
    :func:`register_kind`.

    Kinds that are removed by the same surgery call form a *part* (``"attention"``, ``"mlp"``). The first kind of a
    part leads it: it is scored, masked and removed, and it carries the part's :meth:`remove` and :meth:`restorer`. A
    *coupled* kind (``follows`` names its leader) is counted, recorded and costed, but its kept units follow from the
    leader's (the KV heads that the kept query heads read).
    """

    #: Registry key; also the key of the kind's count in recorded metadata, reports and callback states.
    name: ClassVar[str] = ""
    #: What people call the units, plural ("KV heads"), for the CLI and the card.
    label: ClassVar[str] = ""
    #: The sublayer whose surgery removes this kind.
    part: ClassVar[str] = ""
    #: The leading kind whose kept units decide this one's (``None``: the kind is scored and masked itself).
    follows: ClassVar[str | None] = None
    #: Whether the input of :meth:`mask_module` holds one slice per unit: criteria that gate that input (fisher,
    #: activation) score the kind, and reconstruction refits that module. False for experts (masked at the router).
    gated: ClassVar[bool] = True
    #: Whether the kind is removed by its own fraction (``PruningConfig`` field or ``kinds={name: f}``, recipe
    #: ``targets``), which a cost target counts but does not choose. Heads and neurons are what a cost target chooses.
    own_fraction: ClassVar[bool] = True
    #: How the card's prose names the units ("MoE experts"); the label when unset.
    prose: ClassVar[str] = ""

    # -- where it lives ---------------------------------------------------------------------------------------

    def restorer(self) -> Restorer | None:
        """The surgery that shrinks a dense-shaped block to recorded counts (leaders only). :func:`register_kind`
        adds it to ``surgery.RESTORERS``; the loader without hf_prune (``trust_remote_code``) runs only the shipped
        kinds' steps, which live in ``surgery.py``, and refuses records of other kinds by name."""
        return None

    def applies(self, recipe: Recipe) -> bool:
        """Whether a model described by ``recipe`` has units of this kind."""
        return True

    def paths(self, recipe: Recipe) -> dict[str, str]:
        """``{role: module path}`` of the projections this kind's units are rows or columns of."""
        return {}

    def count(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
        """The block's current number of units, read from weight shapes (the config may be stale)."""
        raise NotImplementedError

    def parameters(self, recipe: Recipe) -> dict[str, tuple[str, str, int | tuple[int, int]]]:
        """``{role: (module path, parameter name, unit axis)}`` of the non-projection parameters this kind's units
        are slices of (read as :class:`UnitParameter`)."""
        return {}

    def config_attribute(self, recipe: Recipe) -> str | None:
        """The config attribute that states the count in a vanilla checkpoint (``None``: the config has none)."""
        return None

    def config_value(self, counts: dict[str, int]) -> int:
        """What :meth:`config_attribute` holds for a block with ``counts`` (by default the kind's count)."""
        return counts[self.name]

    def check(self, counts: dict[str, int], index: int) -> None:
        """Refuse counts of block ``index`` that this kind cannot prune (raise ``ValueError``, naming the block)."""

    # -- scoring ------------------------------------------------------------------------------------------------

    def group_sum(
        self, structure: ModelStructure, index: int, counts: dict[str, int], rows: Reducer, cols: Reducer
    ) -> torch.Tensor:
        """Sum a per-element quantity over each unit of block ``index``: one value per unit."""
        raise NotImplementedError

    def combine(self, sums: dict[str, torch.Tensor], counts: dict[str, int]) -> torch.Tensor:
        """The unit's score from the group sums of its part (a leader may fold in its coupled kinds' sums)."""
        return sums[self.name]

    # -- masking ------------------------------------------------------------------------------------------------

    def mask_module(self, structure: ModelStructure, index: int) -> nn.Module:
        """The module whose input holds one slice per unit: zeroing a slice masks the unit (leaders only)."""
        raise TypeError(f"unit kind '{self.name}' is not masked: it follows '{self.follows}'.")

    def unit_width(self, structure: ModelStructure) -> int:
        """Input features of :meth:`mask_module` per unit."""
        return 1

    def mask_hook(self, structure: ModelStructure, index: int, multiplier: Multiplier) -> RemovableHandle:
        """Install what makes block ``index``'s masked units have no effect (leaders only): by default a pre-hook
        that multiplies the input of :meth:`mask_module` by ``multiplier``."""

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
            hidden = args[0]
            keep = multiplier(hidden)
            return None if keep is None else (hidden * keep, *args[1:])

        return self.mask_module(structure, index).register_forward_pre_hook(hook)

    # -- removal ------------------------------------------------------------------------------------------------

    def keep_following(self, leader_keep: Sequence[int], counts: dict[str, int]) -> list[int]:
        """A coupled kind's kept units, given the indices its leader keeps in a block with ``counts``."""
        raise NotImplementedError

    def remove(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int, keep: dict[str, list[int]]) -> None:
        """Keep only ``keep`` (indices per kind of this part) of one block, in place (leaders only)."""
        raise NotImplementedError

    def check_keep(self, structure: ModelStructure, index: int, keep: Sequence[int]) -> None:
        """Refuse, before any surgery, a plan that keeps ``keep`` of block ``index``'s units when this kind cannot
        work with so few (raise ``ValueError`` naming the block and the fix)."""

    def check_plan(self, structure: ModelStructure, index: int, keep: dict[str, list[int]]) -> None:
        """Refuse, before any surgery, block ``index``'s plan (kept indices of every kind) where this kind cannot
        carry it out; by default :meth:`check_keep` on this kind's own indices."""
        self.check_keep(structure, index, keep[self.name])

    # -- allocation ---------------------------------------------------------------------------------------------

    def plan_request(
        self,
        structure: ModelStructure,
        scores: Sequence[torch.Tensor],
        fraction: float,
        config: PruningConfig,
        masked: Sequence[torch.Tensor] | None,
    ) -> KindRequest:
        """What the allocator needs to remove ``fraction`` of this kind's units (leaders only): the per-block
        scores, the sizes of every kind of the part, and how indices group into removable units."""
        raise NotImplementedError

    # -- cost ---------------------------------------------------------------------------------------------------

    def context_flops(self, structure: ModelStructure, counts: dict[str, int], seq_len: int) -> int:
        """Forward FLOPs per token of the block's units of this kind that no weight accounts for (attention scores
        and the weighted sum of values, at context length ``seq_len``)."""
        return 0

    def unit_cost(self, structure: ModelStructure, measure: str, seq_len: int) -> float:
        """What one unit costs: ``measure`` is ``"params"`` or ``"flops"`` (forward FLOPs per token at ``seq_len``)."""
        raise NotImplementedError

    def cost_units(self, structure: ModelStructure, measure: str, counts: Mapping[str, int]) -> float:
        """How many of :meth:`unit_cost`'s units a block with ``counts`` pays for (by default the kind's count)."""
        return counts[self.name]


_REGISTRY: dict[str, UnitKind] = {}


def register_kind(kind: UnitKind) -> UnitKind:
    """Make ``kind`` part of every recipe it applies to; kinds run in registration order (the order of the tables).

    Refuses a kind without a name or part, a second kind of the same name, and a coupled kind whose leader is not
    registered in the same part before it.
    """
    if not isinstance(kind, UnitKind):
        raise TypeError(f"register_kind takes a UnitKind instance, got {type(kind).__name__}.")
    if not kind.name or not kind.part:
        raise ValueError(f"{type(kind).__name__} needs a `name` and a `part`.")
    if kind.name in _REGISTRY:
        raise ValueError(f"unit kind '{kind.name}' is already registered by {type(_REGISTRY[kind.name]).__name__}.")
    if kind.follows is not None:
        leader = _REGISTRY.get(kind.follows)
        if leader is None or leader.part != kind.part:
            raise ValueError(
                f"unit kind '{kind.name}' follows '{kind.follows}', which must be registered first, in part "
                f"'{kind.part}'."
            )
    elif kind.restorer() is None:
        raise ValueError(f"unit kind '{kind.name}' leads its part and needs a `restore` step.")
    _REGISTRY[kind.name] = kind
    # hf_prune's loader restores what the kind records; the copy of surgery.py next to a checkpoint (the loader
    # without hf_prune) knows only the shipped kinds and refuses the others by name.
    surgery.register_restorer(kind.name, kind.restorer())
    return kind


def registered_kinds() -> list[UnitKind]:
    """Every registered kind, in registration order."""
    return list(_REGISTRY.values())


def get_kind(name: str) -> UnitKind:
    """A registered kind by name."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown unit kind '{name}'. Registered: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def own_fraction_kinds() -> list[UnitKind]:
    """The leading kinds removed by their own fraction (:attr:`UnitKind.own_fraction`), in registration order."""
    return [kind for kind in _REGISTRY.values() if kind.follows is None and kind.own_fraction]


def kinds_for(recipe: Recipe) -> list[UnitKind]:
    """The kinds a model described by ``recipe`` has, in registration order."""
    return [kind for kind in _REGISTRY.values() if kind.applies(recipe)]


def zero_sum(*parts: torch.Tensor | None, size: int) -> torch.Tensor:
    """The sum of the parts that are there (on the CPU), or zeros of ``size`` when none is."""
    present = [p for p in parts if p is not None]
    if not present:
        return torch.zeros(size)
    total = present[0].clone()
    for p in present[1:]:
        total = total + p.to(total.device)
    return total.cpu()
