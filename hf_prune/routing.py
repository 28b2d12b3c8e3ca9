"""Importance of MoE experts from how calibration tokens are routed to them.

Two criteria, both from forward passes alone (no backward), both scoring experts only:

- ``frequency``: the fraction of tokens whose top-k includes the expert. An expert the router never picks can go
  without changing a single output on that data.
- ``reap``: router-weighted expert activation (REAP, Lasby et al. 2025): the mean, over the tokens routed to the
  expert, of its router weight times the norm of its output. A frequently picked expert whose weighted
  contribution is small scores low too.

Both hook the experts module of each block, which receives the hidden states and the router's choice
(``hidden_states, top_k_index, top_k_weights``, the transformers 5 experts interface). ``reap`` runs the module once
more on the routed tokens, one expert per row, so each expert's own output is the modeling code's, not a copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .importance import _Accumulating, importances_for, register_importance
from .kinds import UnitKind, get_kind
from .structure import ModelStructure

if TYPE_CHECKING:
    from .masks import MaskSet


class _RoutingImportance(_Accumulating):
    """Shared hooks: per block, routed-token counts and summed router-weighted output norms per expert."""

    needs_gradients = False
    #: Whether the hooks also compute each routed expert's own output (REAP needs its norm; counting does not).
    reads_outputs = False

    def __init__(self, beta: float | None = 0.9) -> None:
        super().__init__(beta)
        self.handles: list = []
        self.tokens: dict[int, int] = {}
        self.counts: dict[int, torch.Tensor] = {}
        self.weighted: dict[int, torch.Tensor] = {}

    @classmethod
    def scores_kind(cls, kind: UnitKind) -> bool:
        return kind.name == "experts"

    def attach(self, structure: ModelStructure, masks: MaskSet | None = None) -> None:
        if self.handles:
            return
        spec = structure.recipe.experts
        if spec is None:
            others = sorted({name for kind in structure.leaders for name in importances_for(kind)} - {self.name})
            raise ValueError(
                f"importance '{self.name}' scores MoE experts, and recipe '{structure.recipe.name}' has none. "
                f"Criteria for its {', '.join(k.label for k in structure.leaders)}: {', '.join(others)}."
            )
        for i, layer in enumerate(structure.layers):
            module = layer.get_submodule(spec.experts)
            self.handles.append(module.register_forward_hook(self._hook(i, structure.shape(i)["experts"])))

    def _hook(self, index: int, experts: int):
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            if not torch.is_grad_enabled():
                return  # as for the activation criterion: evaluation passes (no_grad) do not count
            hidden, chosen, weights = args[:3]
            with torch.no_grad():
                chosen_flat = chosen.reshape(-1)
                counts = torch.bincount(chosen_flat.cpu(), minlength=experts)[:experts].float()
                self.counts[index] = self.counts.get(index, torch.zeros(experts)) + counts
                self.tokens[index] = self.tokens.get(index, 0) + chosen.shape[0]
                if self.reads_outputs:
                    norms = self._expert_output_norms(module, hidden, chosen) * weights.reshape(-1).float()
                    summed = torch.zeros(experts).index_add_(0, chosen_flat.cpu(), norms.cpu())
                    self.weighted[index] = self.weighted.get(index, torch.zeros(experts)) + summed

        return hook

    @staticmethod
    def _expert_output_norms(module: nn.Module, hidden: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Norm of each (token, chosen expert)'s own output: the module run on every token once per chosen
        expert, with a single expert of weight one per row."""
        top_k = chosen.shape[-1]
        rows = hidden.reshape(-1, hidden.shape[-1]).repeat_interleave(top_k, dim=0)
        ones = torch.ones(rows.shape[0], 1, dtype=hidden.dtype, device=hidden.device)
        return module.forward(rows, chosen.reshape(-1, 1), ones).float().norm(dim=-1)

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def accumulate(self, structure: ModelStructure) -> None:
        if not self.handles:
            raise RuntimeError("call attach(structure) before running batches so the routing is recorded.")
        if not self.counts:
            return  # no forward pass since the last update
        shapes = structure.shapes()
        values = [self._statistic(i, s["experts"]) for i, s in enumerate(shapes)]
        self.tokens, self.counts, self.weighted = {}, {}, {}
        self._fold({get_kind("experts").name: values})

    def _statistic(self, index: int, experts: int) -> torch.Tensor:
        raise NotImplementedError


@register_importance("frequency")
class FrequencyImportance(_RoutingImportance):
    """The fraction of tokens whose top-k includes the expert (module docstring)."""

    def _statistic(self, index: int, experts: int) -> torch.Tensor:
        counts = self.counts.get(index, torch.zeros(experts))
        return counts / max(self.tokens.get(index, 0), 1)


@register_importance("reap")
class ReapImportance(_RoutingImportance):
    """Mean over the tokens routed to the expert of router weight x norm of its output (module docstring)."""

    reads_outputs = True

    def _statistic(self, index: int, experts: int) -> torch.Tensor:
        counts = self.counts.get(index, torch.zeros(experts))
        return self.weighted.get(index, torch.zeros(experts)) / counts.clamp_min(1.0)
