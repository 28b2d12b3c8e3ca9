"""Parameter and FLOP counts, read from the modules that are actually there (so they hold after pruning)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers.pytorch_utils import Conv1D

from .structure import ModelStructure


@dataclass(frozen=True)
class Cost:
    """Size and forward cost of a model."""

    parameters: int
    block_parameters: int  # attention + MLP projections of the prunable blocks
    flops_per_token: int  # every matmul of one forward token, at context length ``seq_len``
    block_flops_per_token: int  # the part spent in the prunable blocks
    seq_len: int


def _linear_flops(module: nn.Module) -> int:
    return 2 * module.weight.numel()


def _block_modules(structure: ModelStructure, index: int) -> list[nn.Module]:
    roles = ["o", "down"]
    att, mlp = structure.recipe.attention, structure.recipe.mlp
    roles += ["qkv"] if att.qkv else ["q", "k", "v"]
    roles += ["gate_up"] if mlp.gate_up else ["up"] + (["gate"] if mlp.gate else [])
    return [structure.module(index, role) for role in roles]


def measure_cost(structure: ModelStructure, seq_len: int = 128) -> Cost:
    """Count parameters (tied weights once) and forward FLOPs per token at context length ``seq_len``.

    FLOPs are 2 x multiply-accumulates of every Linear/Conv1D layer, plus attention scores and the weighted sum
    of values (``4 * seq_len * heads * head_dim`` per block and token).
    """
    model = structure.model
    parameters = sum(p.numel() for p in model.parameters())
    linear = sum(_linear_flops(m) for m in model.modules() if isinstance(m, nn.Linear | Conv1D))
    block_params = 0
    block_flops = 0
    for i in range(structure.num_layers):
        modules = _block_modules(structure, i)
        block_params += sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for m in modules)
        attention = 4 * seq_len * structure.shape(i).heads * structure.head_dim
        block_flops += sum(_linear_flops(m) for m in modules) + attention
    attention_total = sum(4 * seq_len * s.heads * structure.head_dim for s in structure.shapes())
    return Cost(
        parameters=parameters,
        block_parameters=block_params,
        flops_per_token=linear + attention_total,
        block_flops_per_token=block_flops,
        seq_len=seq_len,
    )


@dataclass(frozen=True)
class UnitCosts:
    """What one query head, one KV head and one neuron of a block cost (FLOPs per token, or parameters)."""

    head: float
    kv_head: float
    neuron: float

    def removed(self, before: tuple[int, int, int], after: tuple[int, int, int]) -> float:
        """Cost removed going from ``(heads, kv_heads, neurons)`` ``before`` to ``after``."""
        return (
            (before[0] - after[0]) * self.head
            + (before[1] - after[1]) * self.kv_head
            + (before[2] - after[2]) * self.neuron
        )


def unit_costs(structure: ModelStructure, kind: str = "flops", seq_len: int = 128) -> UnitCosts:
    """Cost of one group in the blocks of ``structure`` (the same in every block)."""
    if kind not in ("flops", "params"):
        raise ValueError(f"cost kind must be 'flops' or 'params', got {kind!r}.")
    att, mlp = structure.recipe.attention, structure.recipe.mlp
    hd = structure.head_dim
    o = structure.module(0, "o")
    hidden = o.weight.shape[1] if isinstance(o, Conv1D) else o.weight.shape[0]
    inputs = 2 if (mlp.gate or mlp.gate_up) else 1  # projections that produce a neuron (up, gate)

    def has_bias(role: str) -> bool:
        return structure.module(0, role).bias is not None

    q_role, kv_role = ("qkv", "qkv") if att.qkv else ("q", "k")
    up_role = "gate_up" if mlp.gate_up else "up"
    if kind == "params":
        return UnitCosts(
            head=2 * hidden * hd + (hd if has_bias(q_role) else 0),
            kv_head=2 * hidden * hd + (2 * hd if has_bias(kv_role) else 0),
            neuron=(inputs + 1) * hidden + (inputs if has_bias(up_role) else 0),
        )
    return UnitCosts(
        head=2 * 2 * hidden * hd + 4 * seq_len * hd,
        kv_head=2 * 2 * hidden * hd,
        neuron=2 * (inputs + 1) * hidden,
    )
