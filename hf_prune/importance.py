"""Importance criteria: turn a model's weights (and optionally gradients or activations) into one score per
query head and per neuron of every block. Higher means more important.

Criteria register themselves by name, so ``PruningConfig(importance="taylor")`` and the CLI find them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .structure import ModelStructure

_REGISTRY: dict[str, type[Importance]] = {}


@dataclass
class Scores:
    """One score per query head and per neuron, for every block."""

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]


class Importance:
    """Base class. Stateless criteria only implement :meth:`scores`; accumulating ones also implement
    :meth:`attach`, :meth:`accumulate` and :meth:`state_dict` (so a resumed run keeps its statistics)."""

    name: str = ""
    #: True when the criterion needs ``accumulate()`` calls (after backward) before it can score.
    accumulates: bool = False

    def attach(self, structure: ModelStructure) -> None:
        """Start observing the model (hooks etc.)."""

    def detach(self) -> None:
        """Stop observing the model."""

    def accumulate(self, structure: ModelStructure) -> None:
        """Fold the current step's gradients/activations into the running statistics."""

    def scores(self, structure: ModelStructure) -> Scores:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


def register_importance(name: str) -> Callable[[type[Importance]], type[Importance]]:
    """Class decorator that makes a criterion available by ``name``."""

    def wrap(cls: type[Importance]) -> type[Importance]:
        if name in _REGISTRY:
            raise ValueError(f"importance '{name}' is already registered by {_REGISTRY[name].__name__}.")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_importances() -> list[str]:
    return sorted(_REGISTRY)


def get_importance(name: str | Importance, **kwargs: object) -> Importance:
    """An importance criterion by name (or an instance, returned as is)."""
    if isinstance(name, Importance):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown importance '{name}'. Available: {', '.join(available_importances())}.")
    return _REGISTRY[name](**kwargs)


def combine_head_scores(structure: ModelStructure, index: int, head: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Per-query-head score: its own q/o part plus an equal share of its KV head's k/v part."""
    group = structure.shape(index).group_size
    return head + kv.repeat_interleave(group) / group


@register_importance("magnitude")
class MagnitudeImportance(Importance):
    """L2 norm of every weight that belongs to the group (rows of q/k/v/up/gate, columns of o/down)."""

    def scores(self, structure: ModelStructure) -> Scores:
        heads, neurons = [], []
        with torch.no_grad():
            for i in range(structure.num_layers):
                sums = structure.group_sums(i, lambda m: m.weight.detach() ** 2)
                heads.append(combine_head_scores(structure, i, sums.heads, sums.kv_heads).sqrt())
                neurons.append(sums.neurons.sqrt())
        return Scores(heads, neurons)


@register_importance("random")
class RandomImportance(Importance):
    """Uniform random scores: the baseline every criterion should beat."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def scores(self, structure: ModelStructure) -> Scores:
        shapes = structure.shapes()
        return Scores(
            [torch.rand(s.heads, generator=self.generator) for s in shapes],
            [torch.rand(s.neurons, generator=self.generator) for s in shapes],
        )
