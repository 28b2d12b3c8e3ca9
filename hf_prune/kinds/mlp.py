"""MLP neurons: one intermediate unit, a row of up (and gate) and a column of down."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import surgery
from ..allocation import KindRequest, neuron_request
from ..recipe import MLPSpec, Recipe, RecipeError
from .base import Reducer, Restorer, UnitKind, register_kind, zero_sum

if TYPE_CHECKING:
    from ..config import PruningConfig
    from ..structure import ModelStructure


def _spec(recipe: Recipe) -> MLPSpec:
    """The recipe's dense MLP (the kind applies only to recipes that have one)."""
    if recipe.mlp is None:
        raise RecipeError(f"recipe '{recipe.name}' has no `mlp` section.")
    return recipe.mlp


class Neurons(UnitKind):
    """An MLP neuron: its rows of up/gate (or of the fused ``[gate | up]``) and its column of down."""

    name = "neurons"
    label = "neurons"
    prose = "MLP neurons"
    own_fraction = False  # a cost target chooses heads and neurons
    part = "mlp"

    def restorer(self) -> Restorer:
        return surgery.restore_mlp

    def applies(self, recipe: Recipe) -> bool:
        return recipe.mlp is not None  # an MoE recipe may have experts instead

    def paths(self, recipe: Recipe) -> dict[str, str]:
        mlp = _spec(recipe)
        return {role: getattr(mlp, role) for role in ("up", "gate", "gate_up", "down") if getattr(mlp, role)}

    def count(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
        return surgery.count_neurons(layer, recipe, head_dim)

    def config_attribute(self, recipe: Recipe) -> str | None:
        return _spec(recipe).intermediate_attribute

    def group_sum(
        self, structure: ModelStructure, index: int, counts: dict[str, int], rows: Reducer, cols: Reducer
    ) -> torch.Tensor:
        mlp, neurons = _spec(structure.recipe), counts["neurons"]
        if mlp.gate_up:
            fused = rows("gate_up")
            up_gate = None if fused is None else fused.view(2, neurons).sum(0)
        else:
            up_gate = zero_sum(rows("up"), rows("gate") if mlp.gate else None, size=neurons)
        return zero_sum(up_gate, cols("down"), size=neurons)

    def mask_module(self, structure: ModelStructure, index: int) -> nn.Module:
        return structure.module(index, "down")

    def remove(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int, keep: dict[str, list[int]]) -> None:
        surgery.prune_mlp(layer, recipe, head_dim, keep["neurons"])

    def plan_request(
        self,
        structure: ModelStructure,
        scores: Sequence[torch.Tensor],
        fraction: float,
        config: PruningConfig,
        masked: Sequence[torch.Tensor] | None,
    ) -> KindRequest:
        return neuron_request(scores, fraction, config.neuron_multiple, masked)

    def unit_cost(self, structure: ModelStructure, measure: str, seq_len: int) -> float:
        mlp = _spec(structure.recipe)
        up = "gate_up" if mlp.gate_up else "up"
        block = structure.reference_block(up)
        hidden = surgery.output_size(structure.module(block, "down"))
        inputs = 2 if (mlp.gate or mlp.gate_up) else 1  # projections that produce a neuron (up, gate)
        if measure == "params":
            bias = structure.module(block, up).bias is not None
            return (inputs + 1) * hidden + (inputs if bias else 0)
        return 2 * (inputs + 1) * hidden


register_kind(Neurons())
