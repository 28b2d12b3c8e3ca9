"""Compaction during training: masked units leave the live model, and the optimizer's state follows them.

Masking keeps every training step at full size. With ``PruningConfig(compact=True)`` the callback removes the
masked units physically at its updates, so that the rest of the run computes only what is kept. Everything the
callback decides stays in the *original* numbering of units (masks, plans, the report): :class:`LiveUnits` maps
it onto the live model, which holds a subset of them.

Removing a unit replaces the parameters it was a slice of (:data:`hf_prune.surgery.SLICE_OBSERVERS` reports each
slice); :func:`slice_optimizer` then gives the new parameters the matching slices of the optimizer's per-parameter
state (Adam's moments), in the same param groups, so the run goes on as if the model had been that small from the
start. A checkpoint written after a compaction holds the smaller weights: :func:`match_checkpoint_shapes` shrinks
a freshly built model to them when ``Trainer`` resumes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import surgery
from .allocation import LayerPlan
from .packed import pack_mask, unpack_mask
from .structure import LayerShape, ModelStructure

# Optimizers whose state is not one tensor of the parameter's shape per entry: slicing cannot carry it over.
# (Adafactor keeps factored row/column statistics, 8-bit optimizers block-quantized state, GaLore and APOLLO
# low-rank projections of the gradient.)
UNSLICEABLE_OPTIMIZERS = ("Adafactor", "8bit", "4bit", "Paged", "GaLore", "Apollo")


@dataclass
class ParameterSlice:
    """A parameter that surgery replaced by slices of itself: ``new = old.index_select(axis, index)``, possibly
    in several steps."""

    old: nn.Parameter
    new: nn.Parameter
    steps: list[tuple[surgery.Axis, torch.Tensor]] = field(default_factory=list)

    def apply(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` (shaped like the old parameter) sliced as the parameter was."""
        for axis, index in self.steps:
            value = surgery.select_slices(value, axis, index.to(value.device))
        return value


@contextlib.contextmanager
def recorded_slices() -> Iterator[list[ParameterSlice]]:
    """Collect every parameter surgery slices inside the block, chained when one is sliced twice."""
    by_new: dict[int, ParameterSlice] = {}

    def observe(old: nn.Parameter, new: nn.Parameter, axis: surgery.Axis, index: torch.Tensor) -> None:
        record = by_new.pop(id(old), None) or ParameterSlice(old, new)
        record.new = new
        record.steps.append((axis, index.detach().cpu()))
        by_new[id(new)] = record

    slices: list[ParameterSlice] = []
    surgery.SLICE_OBSERVERS.append(observe)
    try:
        yield slices
    finally:
        surgery.SLICE_OBSERVERS.remove(observe)
        slices.extend(by_new.values())


def base_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer under accelerate's ``AcceleratedOptimizer`` (and similar wrappers)."""
    # AcceleratedOptimizer is a torch Optimizer too, around the one that holds the state.
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


def check_optimizer_class(optimizer: Any) -> None:
    """Refuse, before training, an optimizer whose state compaction cannot slice (named in the error)."""
    inner = base_optimizer(optimizer)
    if inner is None:
        return
    name = f"{type(inner).__module__}.{type(inner).__qualname__}"
    if any(marker.lower() in name.lower() for marker in UNSLICEABLE_OPTIMIZERS) or "bitsandbytes" in name:
        raise ValueError(
            f"compact=True cannot carry the state of optimizer {name} over to the smaller model: its state is not "
            "one tensor shaped like each parameter (factored or quantized). Use an elementwise optimizer (AdamW, "
            "Adam, SGD, RMSprop...: TrainingArguments(optim='adamw_torch')), or set compact=False (masking only)."
        )


def check_optimizer_state(optimizer: Any) -> None:
    """Refuse, before any surgery, optimizer state that is neither shaped like its parameter nor a scalar."""
    inner = base_optimizer(optimizer)
    if inner is None:
        return
    for group in inner.param_groups:
        for parameter in group["params"]:
            for key, value in inner.state.get(parameter, {}).items():
                if isinstance(value, torch.Tensor) and value.numel() > 1 and value.shape != parameter.shape:
                    raise ValueError(
                        f"compact=True cannot slice optimizer state '{key}' of {type(inner).__name__}: shape "
                        f"{tuple(value.shape)} for a parameter of shape {tuple(parameter.shape)}. Use an elementwise "
                        "optimizer (AdamW, Adam, SGD...), or set compact=False (masking only)."
                    )


def slice_optimizer(optimizer: Any, slices: Sequence[ParameterSlice]) -> None:
    """Put each new parameter where its old one was in the param groups, with the old state's slices (scalars,
    such as Adam's step count, are kept)."""
    inner = base_optimizer(optimizer)
    if inner is None or not slices:
        return
    by_old = {id(s.old): s for s in slices}
    for group in inner.param_groups:
        group["params"] = [by_old[id(p)].new if id(p) in by_old else p for p in group["params"]]
    for record in slices:
        state = inner.state.pop(record.old, None)
        if state is None:
            continue
        inner.state[record.new] = {
            key: record.apply(value) if isinstance(value, torch.Tensor) and value.shape == record.old.shape else value
            for key, value in state.items()
        }


class LiveUnits:
    """Which units of the model as it was built the live model still has: ``ids[kind][block]``, original
    indices in ascending order (the live unit ``p`` is original unit ``ids[kind][block][p]``)."""

    def __init__(self, shapes: Sequence[LayerShape]) -> None:
        self.shapes = list(shapes)
        kinds = list(self.shapes[0].counts) if self.shapes else []
        self.ids: dict[str, list[torch.Tensor]] = {k: [torch.arange(s[k]) for s in self.shapes] for k in kinds}

    @property
    def compacted(self) -> bool:
        """Whether anything was removed from the live model yet."""
        return any(
            len(ids) != s[kind] for kind, per in self.ids.items() for ids, s in zip(per, self.shapes, strict=True)
        )

    def live_mask(self, kind: str, block: int) -> torch.Tensor:
        """True where the original unit of ``kind`` in ``block`` is live."""
        mask = torch.zeros(self.shapes[block][kind], dtype=torch.bool)
        mask[self.ids[kind][block]] = True
        return mask

    def live(self, kind: str, block: int, values: torch.Tensor) -> torch.Tensor:
        """The entries of ``values`` (one per original unit) that belong to live units."""
        return values[self.ids[kind][block]]

    def original(self, kind: str, block: int, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """``values`` of the live units, spread over the original units (``fill`` for removed ones)."""
        full = torch.full((self.shapes[block][kind],), fill, dtype=values.dtype)
        full[self.ids[kind][block]] = values.cpu()
        return full

    def live_plans(self, plans: Sequence[LayerPlan]) -> list[LayerPlan]:
        """``plans`` (original numbering) in the live model's numbering. Refuses a plan that keeps a removed unit."""
        live = []
        for block, plan in enumerate(plans):
            keep = {}
            for kind, ids in self.ids.items():
                wanted = torch.zeros(self.shapes[block][kind], dtype=torch.bool)
                wanted[torch.as_tensor(plan.keep[kind], dtype=torch.long)] = True
                if bool((wanted & ~self.live_mask(kind, block)).any()):
                    raise RuntimeError(f"block {block} plans to keep {kind} that compaction already removed.")
                keep[kind] = wanted[ids[block]].nonzero().flatten().tolist()
            live.append(LayerPlan(keep=keep))
        return live

    def keep(self, live_plans: Sequence[LayerPlan]) -> None:
        """The live model kept ``live_plans`` (live numbering): forget the others."""
        for kind, per in self.ids.items():
            for block, plan in enumerate(live_plans):
                per[block] = per[block][torch.as_tensor(plan.keep[kind], dtype=torch.long)]

    def state_dict(self) -> dict[str, list[dict[str, Any]]]:
        """Packed bits per kind and block: True where the original unit is live."""
        return {
            kind: [pack_mask(self.live_mask(kind, block)) for block in range(len(per))]
            for kind, per in self.ids.items()
        }

    def load_state_dict(self, state: dict[str, list[Any]]) -> None:
        self.ids = {kind: [unpack_mask(m).nonzero().flatten() for m in state[kind]] for kind in self.ids}


class OriginalLayout:
    """The live structure as planning sees it: its modules and dimensions, with the block shapes it had before
    anything was removed, so that targets stay fractions of the original model and plans stay in its numbering."""

    def __init__(self, structure: ModelStructure, shapes: Sequence[LayerShape]) -> None:
        self._structure, self._shapes = structure, list(shapes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._structure, name)

    def shape(self, index: int) -> LayerShape:
        return self._shapes[index]

    def shapes(self) -> list[LayerShape]:
        return list(self._shapes)


def _counts_with_shapes(structure: ModelStructure, index: int, shapes: dict[str, Any]) -> dict[str, int]:
    """The counts of block ``index`` were its parameters ``shapes`` (name -> shape): placeholders on the meta device
    stand in for them while every kind counts them from weight shapes, then the real parameters go back."""
    layer = structure.layers[index]
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for name, shape in shapes.items():
            owner_path, _, attribute = name.rpartition(".")
            owner = layer.get_submodule(owner_path) if owner_path else layer
            swapped.append((owner, attribute, owner._parameters[attribute]))
            owner._parameters[attribute] = nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False)
        return dict(structure.shape(index).counts)
    finally:
        for owner, attribute, parameter in swapped:
            owner._parameters[attribute] = parameter


def match_checkpoint_shapes(structure: ModelStructure, state_dict: dict[str, torch.Tensor], prefix: str = "") -> bool:
    """Shrink the blocks of a freshly built model to the (compacted) shapes of ``state_dict``'s weights, keeping the
    first units of each (the weights loaded next overwrite them). Returns whether anything was shrunk."""
    names = {id(module): name for name, module in structure.model.named_modules()}
    head_dim, changed = structure.head_dim, False
    for index, layer in enumerate(structure.layers):
        block_recipe = structure.recipe_dict_for(index)  # its stack's
        layer_prefix = f"{prefix}{names[id(layer)]}."
        shapes = {
            name: state_dict[layer_prefix + name].shape
            for name, parameter in layer.named_parameters()
            if layer_prefix + name in state_dict and state_dict[layer_prefix + name].shape != parameter.shape
        }
        if not shapes:
            continue
        target = _counts_with_shapes(structure, index, shapes)
        for restore in surgery.RESTORERS:
            restore(layer, block_recipe, head_dim, target)
        changed = True
    for start, _ in structure.stack_spans() if changed else []:  # one slice for a stack's blocks (MPNet, T5)
        stack = structure.recipe_dict_for(start)
        if stack["attention"].get("shared_head_tensors"):
            counts = dict(structure.shape(start).counts)
            surgery.prune_shared_heads(structure.model, stack, head_dim, range(counts["heads"]), counts)
    return changed
