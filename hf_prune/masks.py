"""Masks: zero whole heads and neurons without removing them, with the same group definitions as surgery.

A head is masked by zeroing its slice of the input of the attention output projection; a neuron by zeroing
its input to the down projection. Everything upstream of a masked group then has no effect on the output
(and receives no gradient through it), which is exactly what removing it does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .allocation import LayerPlan
from .packed import pack_mask, unpack_mask
from .structure import ModelStructure


class MaskSet:
    """Binary head and neuron masks for every block, applied through forward pre-hooks.

    Masks live on the CPU as bool tensors (cheap to save, compare across ranks and restore); the hooks
    keep a float copy on the activation's device.
    """

    def __init__(self, structure: ModelStructure) -> None:
        self.structure = structure
        shapes = structure.shapes()
        self.heads = [torch.ones(s.heads, dtype=torch.bool) for s in shapes]
        self.neurons = [torch.ones(s.neurons, dtype=torch.bool) for s in shapes]
        # The masks cover the blocks as they were built; the live structure may lose blocks at the end of training.
        self._group_sizes = [s.group_size for s in shapes]
        self._handles: list[RemovableHandle] = []
        self._cache: dict[tuple[str, int, torch.device, torch.dtype], torch.Tensor] = {}

    # -- building --------------------------------------------------------------------------------------

    def set_from_plan(self, plans: Sequence[LayerPlan]) -> None:
        """Mask everything the plan does not keep (and unmask everything it keeps)."""
        for i, plan in enumerate(plans):
            self.heads[i] = torch.zeros_like(self.heads[i])
            self.heads[i][plan.keep_heads] = True
            self.neurons[i] = torch.zeros_like(self.neurons[i])
            self.neurons[i][plan.keep_neurons] = True
        self._cache.clear()

    def to_plan(self) -> list[LayerPlan]:
        """The kept heads, KV heads and neurons that these masks describe (for surgery)."""
        plans = []
        for i in range(len(self.heads)):
            keep_heads = self.heads[i].nonzero().flatten().tolist()
            keep_kv = sorted({h // self._group_sizes[i] for h in keep_heads})
            plans.append(LayerPlan(keep_heads, keep_kv, self.neurons[i].nonzero().flatten().tolist()))
        return plans

    def state_dict(self) -> dict[str, list[dict[str, Any]]]:
        """Packed bits per block (:mod:`hf_prune.packed`): JSON for ``trainer_state.json``, exact and small."""
        return {"heads": [pack_mask(m) for m in self.heads], "neurons": [pack_mask(m) for m in self.neurons]}

    def load_state_dict(self, state: dict[str, list[Any]]) -> None:
        """Restore :meth:`state_dict`'s output (or the plain lists of bools that older checkpoints hold)."""
        self.heads = [unpack_mask(m) for m in state["heads"]]
        self.neurons = [unpack_mask(m) for m in state["neurons"]]
        self._cache.clear()

    @property
    def kept_heads(self) -> list[int]:
        return [int(m.sum()) for m in self.heads]

    @property
    def kept_neurons(self) -> list[int]:
        return [int(m.sum()) for m in self.neurons]

    @property
    def dense(self) -> bool:
        """Whether nothing is masked yet (the model still computes what the unpruned one does)."""
        return all(bool(m.all()) for m in (*self.heads, *self.neurons))

    # -- applying --------------------------------------------------------------------------------------

    def attach(self) -> None:
        """Install the hooks (idempotent)."""
        if self._handles:
            return
        for i in range(self.structure.num_layers):
            o = self.structure.attention_output(i)
            down = self.structure.mlp_output(i)
            self._handles.append(o.register_forward_pre_hook(self._hook("heads", i)))
            self._handles.append(down.register_forward_pre_hook(self._hook("neurons", i)))

    def detach(self) -> None:
        """Remove the hooks; the model computes densely again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._cache.clear()

    def _multiplier(self, kind: str, index: int, like: torch.Tensor) -> torch.Tensor:
        key = (kind, index, like.device, like.dtype)
        if key not in self._cache:
            mask = self.heads[index] if kind == "heads" else self.neurons[index]
            if kind == "heads":
                mask = mask.repeat_interleave(self.structure.head_dim)
            self._cache[key] = mask.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def _hook(self, kind: str, index: int):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            hidden = args[0]
            return (hidden * self._multiplier(kind, index, hidden), *args[1:])

        return hook
