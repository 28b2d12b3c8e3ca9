"""Masks: zero whole units without removing them, with the same group definitions as surgery.

Each scored kind (:mod:`hf_prune.kinds`) names the module whose input holds one slice per unit: a head is masked by
zeroing its slice of the input of the attention output projection, a neuron by zeroing its input to the down
projection. Everything upstream of a masked unit then has no effect on the output (and receives no gradient through
it), which is exactly what removing it does. A kind may install its own hook (:meth:`UnitKind.mask_hook`): an MoE
expert is masked at its router, which then never picks it. Coupled kinds (KV heads) are not masked: they follow
their leader.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from .allocation import LayerPlan
from .compaction import LiveUnits
from .packed import pack_mask, unpack_mask
from .structure import LayerShape, ModelStructure


class MaskSet:
    """Binary masks per scored kind for every block, applied through forward pre-hooks.

    Masks live on the CPU as bool tensors (cheap to save, compare across ranks and restore); the hooks
    keep a float copy on the activation's device.
    """

    def __init__(
        self, structure: ModelStructure, shapes: Sequence[LayerShape] | None = None, live: LiveUnits | None = None
    ) -> None:
        """``shapes``: the blocks' shapes the masks number units by (default: the current ones). ``live``: which of
        those units the model still has, when compaction removed some (the hooks then mask the live ones)."""
        self.structure = structure
        shapes = structure.shapes() if shapes is None else list(shapes)
        self.live = live
        #: ``masks[kind][block]``: True where the unit is kept.
        self.masks: dict[str, list[torch.Tensor]] = {
            kind.name: [torch.ones(s[kind.name], dtype=torch.bool) for s in shapes] for kind in structure.leaders
        }
        # The masks cover the blocks as they were built; the live structure may lose blocks at the end of training.
        self._shapes: list[LayerShape] = shapes
        self._handles: list[RemovableHandle] = []
        self._cache: dict[tuple[str, int, torch.device, torch.dtype], torch.Tensor] = {}

    # Read-only names for the shipped kinds.
    @property
    def heads(self) -> list[torch.Tensor]:
        return self.masks["heads"]

    @property
    def neurons(self) -> list[torch.Tensor]:
        return self.masks["neurons"]

    # -- building --------------------------------------------------------------------------------------

    def set_from_plan(self, plans: Sequence[LayerPlan]) -> None:
        """Mask everything the plan does not keep (and unmask everything it keeps)."""
        for kind, masks in self.masks.items():
            for i, plan in enumerate(plans):
                masks[i] = torch.zeros_like(masks[i])
                masks[i][plan.keep[kind]] = True
        self._cache.clear()

    def to_plan(self) -> list[LayerPlan]:
        """The units of every kind that these masks keep (coupled kinds follow their leader), for surgery."""
        plans = []
        for i, shape in enumerate(self._shapes):
            keep = {kind: masks[i].nonzero().flatten().tolist() for kind, masks in self.masks.items()}
            for kind in self.structure.kinds:
                if kind.follows is not None:
                    keep[kind.name] = kind.keep_following(keep[kind.follows], shape.counts)
            plans.append(LayerPlan(keep={k.name: keep[k.name] for k in self.structure.kinds}))
        return plans

    def state_dict(self) -> dict[str, list[dict[str, Any]]]:
        """Packed bits per kind and block (:mod:`hf_prune.packed`): JSON for ``trainer_state.json``, exact and small."""
        return {kind: [pack_mask(m) for m in masks] for kind, masks in self.masks.items()}

    def load_state_dict(self, state: dict[str, list[Any]]) -> None:
        """Restore :meth:`state_dict`'s output (or the plain lists of bools that older checkpoints hold)."""
        self.masks = {kind: [unpack_mask(m) for m in state[kind]] for kind in self.masks}
        self._cache.clear()

    def kept(self, kind: str) -> list[int]:
        """Units of ``kind`` kept per block."""
        return [int(m.sum()) for m in self.masks[kind]]

    @property
    def kept_heads(self) -> list[int]:
        return self.kept("heads")

    @property
    def kept_neurons(self) -> list[int]:
        return self.kept("neurons")

    @property
    def dense(self) -> bool:
        """Whether nothing is masked yet (the model still computes what the unpruned one does)."""
        return all(bool(m.all()) for masks in self.masks.values() for m in masks)

    # -- applying --------------------------------------------------------------------------------------

    def attach(self, kinds: Sequence[str] | None = None) -> None:
        """Install the hooks (idempotent), of every scored kind or of ``kinds`` only."""
        if self._handles:
            return
        for i in range(self.structure.num_layers):
            for kind in self.structure.leaders:
                if (kinds is not None and kind.name not in kinds) or not self.structure.has(i, kind):
                    continue
                self._handles.append(kind.mask_hook(self.structure, i, partial(self.multiplier, kind.name, i)))

    def detach(self) -> None:
        """Remove the hooks; the model computes densely again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._cache.clear()

    def multiplier(self, kind: str, index: int, like: torch.Tensor) -> torch.Tensor | None:
        """What block ``index``'s input to the mask module of ``kind`` is multiplied by (one factor per input
        feature, on ``like``'s device and dtype). ``None`` when the block keeps every unit of ``kind`` (nothing to
        multiply: the hook leaves the input as it is, which is what a step costs before the first update, and
        after each compaction)."""
        key = (kind, index, like.device, like.dtype)
        if key not in self._cache:
            mask = self.masks[kind][index]
            if self.live is not None:
                mask = self.live.live(kind, index, mask)
            width = self._unit_width(kind)
            if width > 1:
                mask = mask.repeat_interleave(width)
            self._cache[key] = None if bool(mask.all()) else mask.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def _unit_width(self, kind: str) -> int:
        """Input features of the mask module per unit of ``kind``."""
        return next(k for k in self.structure.leaders if k.name == kind).unit_width(self.structure)
