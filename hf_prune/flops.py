"""Parameter and FLOP counts, read from the modules that are actually there (so they hold after pruning)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

from torch import nn
from transformers.pytorch_utils import Conv1D

from .kinds import UnitParameter
from .structure import LayerShape, ModelStructure


@dataclass(frozen=True)
class Cost:
    """Size and forward cost of a model."""

    parameters: int
    block_parameters: int  # attention + MLP projections of the prunable blocks
    flops_per_token: int  # every matmul of one forward token, at context length ``seq_len``
    block_flops_per_token: int  # the part spent in the prunable blocks
    seq_len: int


def _linear_flops(module: nn.Module | UnitParameter) -> int:
    # A unit parameter (an MoE block's experts) is not run whole per token: its kind's context_flops counts it.
    return 0 if isinstance(module, UnitParameter) else 2 * module.weight.numel()


def _block_modules(structure: ModelStructure, index: int) -> list[nn.Module]:
    """Every projection some kind's units live in (each once)."""
    return [structure.module(index, role) for role in structure.roles() if structure.present(index, role)]


def _context_flops(structure: ModelStructure, shape: LayerShape, seq_len: int) -> int:
    """FLOPs per token of a block that no projection holds: attention scores and the weighted sum of values, and an
    MoE block's router and its top-k experts."""
    return sum(kind.context_flops(structure, shape.counts, seq_len) for kind in structure.kinds)


def measure_cost(structure: ModelStructure, seq_len: int = 128) -> Cost:
    """Count parameters (tied weights once) and forward FLOPs per token at context length ``seq_len``.

    FLOPs are 2 x multiply-accumulates of every Linear/Conv1D layer, plus attention scores and the weighted sum
    of values (``4 * seq_len * heads * head_dim`` per block and token), plus an MoE block's router logits and the
    top-k experts a token runs (not all of its experts: removing experts barely changes FLOPs per token).
    """
    model = structure.model
    parameters = sum(p.numel() for p in model.parameters())
    linear = sum(_linear_flops(m) for m in model.modules() if isinstance(m, nn.Linear | Conv1D))
    block_params = 0
    block_flops = 0
    for i in range(structure.num_layers):
        modules = _block_modules(structure, i)
        block_params += sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for m in modules)
        block_flops += sum(_linear_flops(m) for m in modules) + _context_flops(structure, structure.shape(i), seq_len)
    attention_total = sum(_context_flops(structure, s, seq_len) for s in structure.shapes())
    return Cost(
        parameters=parameters,
        block_parameters=block_params,
        flops_per_token=linear + attention_total,
        block_flops_per_token=block_flops,
        seq_len=seq_len,
    )


@dataclass(frozen=True)
class UnitCosts:
    """What one unit of each kind of a block costs (FLOPs per token, or parameters): ``per_unit[kind]``.

    A block's cost is linear in each kind's *cost units* (``cost_units[kind](counts)``, by default its count): the
    FLOPs of the neurons inside MoE experts follow each expert's width, not how many experts there are.
    """

    per_unit: dict[str, float]
    cost_units: dict[str, Callable[[Mapping[str, int]], float]] = field(default_factory=dict, compare=False)

    def __getitem__(self, kind: str) -> float:
        return self.per_unit[kind]

    def _units(self, kind: str, counts: Mapping[str, int]) -> float:
        units = self.cost_units.get(kind)
        return counts[kind] if units is None else units(counts)

    def removed(self, before: Mapping[str, int], after: Mapping[str, int]) -> float:
        """Cost removed going from the counts ``before`` (units per kind) to ``after``."""
        return sum(
            (self._units(kind, before) - self._units(kind, after)) * cost for kind, cost in self.per_unit.items()
        )


def unit_costs(structure: ModelStructure, kind: str = "flops", seq_len: int = 128) -> UnitCosts:
    """Cost of one unit of every kind in the blocks of ``structure`` (the same in every block)."""
    if kind not in ("flops", "params"):
        raise ValueError(f"cost kind must be 'flops' or 'params', got {kind!r}.")
    return UnitCosts(
        {k.name: k.unit_cost(structure, kind, seq_len) for k in structure.kinds},
        {k.name: partial(k.cost_units, structure, kind) for k in structure.kinds},
    )
