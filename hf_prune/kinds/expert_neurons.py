"""Neurons inside MoE experts: one intermediate unit of one routed expert, its slice of every expert parameter.

An expert's weights are one slice of 3-D parameters (``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``), so
every expert of a block keeps the same number of neurons, each expert its own ones (the allocator removes them in
slots: one neuron of every expert, :func:`hf_prune.allocation.expert_neuron_units`). Neuron ``j`` of expert ``e`` is
index ``e * width + j``. When experts go in the same plan, their neurons go with them.

Masking. The experts module multiplies its parameters inside its own forward (a loop over experts, or grouped
matmuls, as transformers' experts implementation picks), so no input has one slice per neuron. The mask multiplies
one of the neuron parameters instead: for the length of the experts module's forward, the attribute reads a masked
copy of the parameter (the parameter itself is untouched and receives the gradient). A neuron whose down-projection
column (or up row) is zero contributes nothing, which is what removing it does.

Cost. A token runs ``top_k`` of the ``E`` experts, so one neuron of one expert costs ``top_k / E`` of its matmuls
per token on average; removing neurons from every expert lowers FLOPs per token as well as parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .. import surgery
from ..allocation import KindRequest, expert_neuron_request
from ..recipe import ExpertsSpec, Recipe, RecipeError
from .base import Multiplier, Reducer, Restorer, UnitKind, register_kind, zero_sum
from .experts import EXPERTS  # registered first: experts are removed before the neurons inside them

if TYPE_CHECKING:
    from ..config import PruningConfig
    from ..structure import ModelStructure


# Experts keep widths in multiples of 8: the grouped matmuls of transformers' experts implementation
# (torch._grouped_mm) need 16-byte strides, and 8 elements are 16 bytes in bf16/fp16 (a width of 20 runs in fp32,
# then fails once the model is cast to bf16).
WIDTH_MULTIPLE = 8


def _role(name: str) -> str:
    return f"expert_neurons.{name}"


def _spec(recipe: Recipe) -> ExpertsSpec:
    if recipe.experts is None or not recipe.experts.neuron_axes:
        raise RecipeError(f"recipe '{recipe.name}' gives no `experts.neuron_axes`: it has no neurons inside experts.")
    return recipe.experts


def masked_parameter(spec: ExpertsSpec) -> str:
    """The parameter the mask multiplies: one that is not fused (the down projection), else the first."""
    return next((n for n in spec.neuron_axes if n not in spec.fused_neurons), next(iter(spec.neuron_axes)))


class _Restore:
    """Undoes :meth:`ExpertNeurons.mask_hook` (a pre-hook and a forward hook)."""

    def __init__(self, *handles: RemovableHandle) -> None:
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class ExpertNeurons(UnitKind):
    """A neuron of a routed expert: its rows of ``gate_up_proj`` (gate and up) and its column of ``down_proj``."""

    name = "expert_neurons"
    label = "neurons inside experts"
    prose = "neurons inside MoE experts"
    part = "expert_mlp"
    gated = False  # no module input holds one slice per neuron: masked on a parameter

    def restorer(self) -> Restorer:
        return surgery.restore_expert_neurons

    def applies(self, recipe: Recipe) -> bool:
        return recipe.experts is not None and bool(recipe.experts.neuron_axes)

    def parameters(self, recipe: Recipe) -> dict[str, tuple[str, str, int | tuple[int, int]]]:
        spec = _spec(recipe)
        return {
            _role(name): (spec.experts, name, (spec.parameters[name], axis)) for name, axis in spec.neuron_axes.items()
        }

    def count(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
        return surgery.count_expert_neurons(layer, recipe, head_dim)

    def config_attribute(self, recipe: Recipe) -> str | None:
        return recipe.experts.intermediate_attribute if recipe.experts else None

    def config_value(self, counts: dict[str, int]) -> int:
        return counts["expert_neurons"] // counts["experts"] if counts["experts"] else 0  # each expert's width

    # -- scoring ------------------------------------------------------------------------------------------------

    def group_sum(
        self, structure: ModelStructure, index: int, counts: dict[str, int], rows: Reducer, cols: Reducer
    ) -> torch.Tensor:
        spec, size = _spec(structure.recipe), counts["expert_neurons"]
        sums = []
        for name in spec.neuron_axes:
            values = rows(_role(name))  # one per (expert, neuron axis entry), expert-major
            if values is not None and name in spec.fused_neurons:
                values = values.view(counts["experts"], 2, -1).sum(1).flatten()  # gate and up of each neuron
            sums.append(values)
        return zero_sum(*sums, size=size)

    # -- masking ------------------------------------------------------------------------------------------------

    def mask_module(self, structure: ModelStructure, index: int) -> nn.Module:
        return surgery.get_submodule(structure.layers[index], _spec(structure.recipe).experts)

    def mask_hook(self, structure: ModelStructure, index: int, multiplier: Multiplier) -> RemovableHandle:
        spec = _spec(structure.recipe)
        name = masked_parameter(spec)
        expert_axis, neuron_axis = spec.parameters[name], spec.neuron_axes[name]
        fused = name in spec.fused_neurons

        def mask(module: nn.Module, args: tuple[Any, ...]) -> None:
            weight = module._parameters[name]
            keep = None if weight is None else multiplier(weight)
            if keep is None or weight is None:
                return
            by_expert = keep.view(weight.shape[expert_axis], -1)
            if fused:
                by_expert = torch.cat([by_expert, by_expert], dim=1)
            if expert_axis > neuron_axis:
                by_expert = by_expert.t()
            shape = [1] * weight.dim()
            shape[expert_axis], shape[neuron_axis] = weight.shape[expert_axis], weight.shape[neuron_axis]
            # The instance attribute shadows the parameter for this forward only (module lookup finds it first).
            module.__dict__[name] = weight * by_expert.reshape(shape)

        def unmask(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            module.__dict__.pop(name, None)

        module = self.mask_module(structure, index)
        before = module.register_forward_pre_hook(mask)
        after = module.register_forward_hook(unmask, always_call=True)  # also when the forward raises
        return _Restore(before, after)  # type: ignore[return-value]

    # -- removal ------------------------------------------------------------------------------------------------

    def check_plan(self, structure: ModelStructure, index: int, keep: dict[str, list[int]]) -> None:
        counts = structure.shape(index).counts
        if not counts["experts"]:
            return  # the block's MoE sublayer was removed
        width = counts["expert_neurons"] // counts["experts"]
        by_expert: dict[int, int] = {}
        for n in keep[self.name]:
            by_expert[n // width] = by_expert.get(n // width, 0) + 1
        kept_experts = sorted(keep.get("experts", range(counts["experts"])))
        if sorted(by_expert) != kept_experts or len(set(by_expert.values())) > 1:
            raise ValueError(
                f"block {index}: the plan keeps neurons of experts {sorted(by_expert)} "
                f"({sorted(set(by_expert.values()))} per expert), and keeps experts {kept_experts}. Every kept "
                "expert keeps the same number of neurons and a removed expert none: plan with hf_prune's allocation "
                "(expert_neurons=...)."
            )

    def remove(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int, keep: dict[str, list[int]]) -> None:
        surgery.prune_expert_neurons(layer, recipe, head_dim, keep["expert_neurons"])

    # -- allocation ---------------------------------------------------------------------------------------------

    def plan_request(
        self,
        structure: ModelStructure,
        scores: Sequence[torch.Tensor],
        fraction: float,
        config: PruningConfig,
        masked: Sequence[torch.Tensor] | None,
    ) -> KindRequest:
        experts = [shape["experts"] for shape in structure.shapes()]
        multiple = math.lcm(config.neuron_multiple, WIDTH_MULTIPLE)
        return expert_neuron_request(scores, experts, fraction, multiple, masked)

    # -- cost ---------------------------------------------------------------------------------------------------

    def neuron_size(self, structure: ModelStructure) -> int:
        """Parameters of one neuron of one expert (the same in every block)."""
        spec = _spec(structure.recipe)
        layer = structure.layers[structure.reference_block(next(iter(self.parameters(structure.recipe))))]
        module = surgery.get_submodule(layer, spec.experts)
        slots = surgery.count_expert_neurons(layer, structure.recipe_dict, structure.head_dim)
        return sum(getattr(module, name).numel() for name in spec.neuron_axes) // slots

    def unit_cost(self, structure: ModelStructure, measure: str, seq_len: int) -> float:
        size = self.neuron_size(structure)
        if measure == "params":
            return size  # one neuron of one expert
        return 2 * size * EXPERTS.top_k(structure)  # one neuron of every expert: each token runs top_k of them

    def cost_units(self, structure: ModelStructure, measure: str, counts: Mapping[str, int]) -> float:
        # Parameters follow every expert's neurons; FLOPs per token each expert's width (however many experts).
        if measure == "params" or not counts["experts"]:
            return counts["expert_neurons"]
        return counts["expert_neurons"] / counts["experts"]


register_kind(ExpertNeurons())
