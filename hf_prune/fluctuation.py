"""The fluctuation criterion (An et al. 2024, FLAP): how much of a block's output a head or neuron carries
beyond its mean.

A unit ``u`` of an output projection (a head's columns of ``o``, a neuron's column of ``down``) adds
``z_u W_u^T`` to the residual stream. Once its mean is folded into the projection's bias (hf_prune's bias
compensation, :mod:`hf_prune.reconstruct`), removing it costs the energy of its fluctuation:
``E||(z_u - E z_u) W_u^T||^2 = trace(W_u Cov(z_u) W_u^T)``. That is the score, computed from activations
alone (no labels, no backward), and it is in the units of the block's output, so it compares across layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .importance import _Accumulating, gated_leaders, register_importance
from .kinds import UnitKind
from .structure import ModelStructure

if TYPE_CHECKING:
    from .masks import MaskSet


class _UnitMoments:
    """Per-unit first and second moments of a projection's input: a ``d x d`` block per head, one
    variance per neuron."""

    def __init__(self, unit_width: int) -> None:
        self.unit_width = unit_width
        self.rows = 0
        self.total: torch.Tensor | None = None
        self.gram: torch.Tensor | None = None

    def add(self, z: torch.Tensor) -> None:
        z = z.detach().reshape(-1, z.shape[-1]).float()
        units = z.view(z.shape[0], -1, self.unit_width).transpose(0, 1)  # (units, rows, d)
        # (units, d, d): a head's block, or a neuron's variance (cheap to get without the product).
        gram = units.square().sum(1)[:, :, None] if self.unit_width == 1 else units.transpose(1, 2) @ units
        gram, total = gram.double().cpu(), units.sum(1).double().cpu()
        if self.gram is None or self.gram.shape != gram.shape:
            self.gram, self.total, self.rows = gram, total, 0
        else:
            self.gram += gram
            self.total += total
        self.rows += z.shape[0]

    def covariance(self) -> torch.Tensor:
        assert self.gram is not None and self.total is not None
        mean = self.total / self.rows
        return self.gram / self.rows - torch.einsum("ud,ue->ude", mean, mean)


def _weight_blocks(module: nn.Module, unit_width: int) -> torch.Tensor:
    """``W^T W`` restricted to each unit's own columns: ``(units, d, d)``."""
    w = module.weight.detach().float()
    w = w.T if isinstance(module, Conv1D) else w  # (out, in)
    cols = w.reshape(w.shape[0], -1, unit_width).transpose(0, 1)  # (units, out, d)
    return (cols.transpose(1, 2) @ cols).double().cpu()


@register_importance("fluctuation")
class FluctuationImportance(_Accumulating):
    """``trace(W_u Cov(z_u) W_u^T)`` per head and neuron, from forward passes (module docstring)."""

    needs_gradients = False

    @classmethod
    def scores_kind(cls, kind: UnitKind) -> bool:
        return kind.gated  # it reads the input of the kind's mask module, one slice per unit

    def __init__(self, beta: float | None = 0.9) -> None:
        super().__init__(beta)
        self.handles: list = []
        self.moments: dict[tuple[str, int], _UnitMoments] = {}

    def attach(self, structure: ModelStructure, masks: MaskSet | None = None) -> None:
        if self.handles:
            return
        for i in range(structure.num_layers):
            for kind in gated_leaders(structure):
                if not structure.has(i, kind):
                    continue  # no units here: its scores stay empty
                self.moments[(kind.name, i)] = _UnitMoments(kind.unit_width(structure))
                module = kind.mask_module(structure, i)
                self.handles.append(module.register_forward_pre_hook(self._hook(kind.name, i)))

    def _hook(self, kind: str, index: int):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if torch.is_grad_enabled():  # as for the activation criterion: evaluation passes do not count
                self.moments[(kind, index)].add(args[0])

        return hook

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def accumulate(self, structure: ModelStructure) -> None:
        if not self.handles:
            raise RuntimeError("call attach(structure) before running batches so activations are recorded.")
        values: dict[str, list[torch.Tensor]] = {kind.name: [] for kind in gated_leaders(structure)}
        for i in range(structure.num_layers):
            for kind in gated_leaders(structure):
                if not structure.has(i, kind):
                    values[kind.name].append(torch.zeros(0))
                    continue
                moments = self.moments[(kind.name, i)]
                if moments.gram is None:
                    return  # no forward pass since the last update
                weights = _weight_blocks(kind.mask_module(structure, i), moments.unit_width)
                values[kind.name].append((moments.covariance() * weights).sum(dim=(1, 2)).clamp_min(0).float())
                self.moments[(kind.name, i)] = _UnitMoments(moments.unit_width)
        self._fold(values)
