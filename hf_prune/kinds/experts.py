"""MoE experts: one routed expert of a mixture-of-experts block, a slice of each 3-D expert parameter and a router row.

Masking. The router computes softmax and top-k inside its own forward, so an expert cannot be masked by zeroing an
input as heads and neurons are. A forward hook on the router recomputes its routing from logits in which masked
experts are ``-inf``: a masked expert is never picked and takes no share of the softmax, which is exactly what
removing its router row does (masked == pruned). The recomputation follows the recipe's routing rule (softmax over
the experts, top-k, renormalised over the top-k where the recipe says so). The router's logits are passed on
unchanged: only the load-balancing loss reads them, and ``-inf`` there would turn it into NaN.

Cost. Removing an expert removes its parameters and one router row, but every token still runs ``top_k`` experts:
per-token FLOPs fall only by that router row (``2 x hidden``). Experts make a model smaller, not faster per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .. import surgery
from ..allocation import KindRequest, single_unit_request
from ..recipe import ExpertsSpec, Recipe, RecipeError
from . import mlp  # noqa: F401  (neurons register first: the kinds' table order)
from .base import Multiplier, Reducer, Restorer, UnitKind, register_kind, zero_sum

if TYPE_CHECKING:
    from ..config import PruningConfig
    from ..structure import ModelStructure

ROUTER = "router"


def _role(name: str) -> str:
    return f"experts.{name}"


def _spec(recipe: Recipe) -> ExpertsSpec:
    """The recipe's experts section (the kind applies only to recipes that have one)."""
    if recipe.experts is None:
        raise RecipeError(f"recipe '{recipe.name}' has no `experts` section.")
    return recipe.experts


class Experts(UnitKind):
    """A routed expert: its slice of every expert parameter (``gate_up_proj``, ``down_proj``) and its router row."""

    name = "experts"
    label = "experts"
    prose = "MoE experts"
    part = "experts"
    gated = False  # masked at the router, not through an input with one slice per expert

    def restorer(self) -> Restorer:
        return surgery.restore_experts

    def applies(self, recipe: Recipe) -> bool:
        return recipe.experts is not None

    def parameters(self, recipe: Recipe) -> dict[str, tuple[str, str, int | tuple[int, int]]]:
        spec = _spec(recipe)
        roles: dict[str, tuple[str, str, int | tuple[int, int]]] = {ROUTER: (spec.router, "weight", 0)}
        roles.update({_role(name): (spec.experts, name, axis) for name, axis in spec.parameters.items()})
        return roles

    def count(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
        return surgery.count_experts(layer, recipe, head_dim)

    def config_attribute(self, recipe: Recipe) -> str | None:
        return recipe.experts.count_attribute if recipe.experts else None

    # -- routing rule, from the recipe and the config -----------------------------------------------------------

    def top_k(self, structure: ModelStructure) -> int:
        """Experts each token is routed to (the config's top-k attribute)."""
        attribute = _spec(structure.recipe).top_k_attribute
        value = surgery._config_get(structure.config, attribute)
        if not isinstance(value, int) or value < 1:
            raise ValueError(
                f"recipe '{structure.recipe.name}': config attribute '{attribute}' should hold the experts per token, "
                f"got {value!r}. Fix `experts.top_k_attribute`."
            )
        return value

    def normalizes(self, structure: ModelStructure) -> bool:
        """Whether the router renormalises the top-k probabilities (always, never, or as a config flag says)."""
        rule = _spec(structure.recipe).normalize_top_k
        return rule if isinstance(rule, bool) else bool(surgery._config_get(structure.config, rule))

    # -- scoring ------------------------------------------------------------------------------------------------

    def group_sum(
        self, structure: ModelStructure, index: int, counts: dict[str, int], rows: Reducer, cols: Reducer
    ) -> torch.Tensor:
        # Every expert parameter's slice and the router row (Taylor sees what routing to the expert is worth).
        return zero_sum(*(rows(role) for role in self.parameters(structure.recipe)), size=counts["experts"])

    # -- masking ------------------------------------------------------------------------------------------------

    def mask_module(self, structure: ModelStructure, index: int) -> nn.Module:
        return surgery.get_submodule(structure.layers[index], _spec(structure.recipe).router)

    def mask_hook(self, structure: ModelStructure, index: int, multiplier: Multiplier) -> RemovableHandle:
        top_k, normalize = self.top_k(structure), self.normalizes(structure)

        def hook(module: nn.Module, args: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> tuple[Any, ...] | None:
            logits, weights = output[0], output[1]
            keep = multiplier(logits)
            if keep is None:
                return None  # every expert kept: the router's own choice
            kept = keep > 0
            probabilities = torch.softmax(logits.masked_fill(~kept, float("-inf")).float(), dim=-1)
            top, indices = torch.topk(probabilities, top_k, dim=-1)
            if normalize:
                top = top / top.sum(dim=-1, keepdim=True)
            return (logits, top.to(weights.dtype), indices, *output[3:])

        return self.mask_module(structure, index).register_forward_hook(hook)

    # -- removal ------------------------------------------------------------------------------------------------

    def check_keep(self, structure: ModelStructure, index: int, keep: Sequence[int]) -> None:
        top_k = self.top_k(structure)
        if len(keep) < top_k:
            total = structure.shape(index)["experts"]
            raise ValueError(
                f"block {index} would keep {len(keep)} of its {total} experts, fewer than the {top_k} that every "
                f"token is routed to ({_spec(structure.recipe).top_k_attribute}={top_k}). Keep at least {top_k} "
                "experts per block: lower `experts`, or protect the block."
            )

    def remove(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int, keep: dict[str, list[int]]) -> None:
        # apply_plan refused fewer than top-k experts (check_keep, which reads the config) before any surgery.
        surgery.prune_experts(layer, recipe, head_dim, keep["experts"], top_k=1)

    # -- allocation ---------------------------------------------------------------------------------------------

    def plan_request(
        self,
        structure: ModelStructure,
        scores: Sequence[torch.Tensor],
        fraction: float,
        config: PruningConfig,
        masked: Sequence[torch.Tensor] | None,
    ) -> KindRequest:
        # A fraction is rounded so that no block goes below top-k.
        return single_unit_request("experts", scores, fraction, masked=masked, min_kept=self.top_k(structure))

    # -- cost ---------------------------------------------------------------------------------------------------

    def _expert_size(self, structure: ModelStructure, counts: dict[str, int] | None = None) -> int:
        """Parameters of one expert, router row excluded: block 0's, or at the width ``counts`` give each expert
        (``expert_neurons / experts``) when its neurons are counted."""
        layer = structure.layers[structure.reference_block(ROUTER)]
        experts = surgery.get_submodule(layer, _spec(structure.recipe).experts)
        axes = _spec(structure.recipe).parameters
        size = sum(getattr(experts, name).numel() // getattr(experts, name).shape[axis] for name, axis in axes.items())
        if counts and "expert_neurons" in counts:  # every expert parameter holds one slice per neuron
            return (
                size
                * (counts["expert_neurons"] // counts["experts"])
                // surgery.expert_width(layer, structure.recipe_dict)
            )
        return size

    def _hidden(self, structure: ModelStructure) -> int:
        """Input features of the router (the model width)."""
        weight = structure.module(structure.reference_block(ROUTER), ROUTER).weight
        assert isinstance(weight, torch.Tensor)
        return int(weight.shape[1])

    def _router_row(self, structure: ModelStructure) -> int:
        bias = getattr(self.mask_module(structure, structure.reference_block(ROUTER)), "bias", None)
        return self._hidden(structure) + (1 if isinstance(bias, nn.Parameter) else 0)

    def context_flops(self, structure: ModelStructure, counts: dict[str, int], seq_len: int) -> int:
        if not counts["experts"]:
            return 0  # the block's MoE sublayer was removed
        # The experts' matmuls that one token runs (top-k of them, however many exist) and the router's logits;
        # neither is an nn.Linear, so no projection count holds them.
        return 2 * self.top_k(structure) * self._expert_size(structure, counts) + 2 * counts["experts"] * self._hidden(
            structure
        )

    def unit_cost(self, structure: ModelStructure, measure: str, seq_len: int) -> float:
        if measure == "params":
            # Where the neurons inside experts are a kind, they hold the expert's weights (and go with it).
            counted = any(kind.name == "expert_neurons" for kind in structure.kinds)
            return (0 if counted else self._expert_size(structure)) + self._router_row(structure)
        return 2 * self._hidden(structure)  # its router row only: every token still runs its top-k experts


EXPERTS = Experts()
register_kind(EXPERTS)
