"""Checkpoints pruned by transformers 4's ``prune_heads``: detected and read as hf_prune's per-layer structure.

transformers 4 recorded the removed heads in ``config.pruned_heads`` (``{layer: [head indices]}``, string keys once
written to JSON) and saved the listed layers with fewer q/k/v output rows and fewer o input columns; on load it built
the dense model and pruned it again. transformers 5 has no ``prune_heads``: it builds dense layers and refuses the
smaller tensors. Here the same heads are removed from a meta-device skeleton with hf_prune's own surgery, and the
result is recorded in the config the way hf_prune records any pruned structure (``pruned_heads`` goes), so the
checkpoint then loads, and saves, as an hf_prune checkpoint.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
import transformers

from .checkpoint import layout_refusal, record_structure
from .loading import candidate_classes, probe
from .recipe import Recipe
from .structure import ModelStructure
from .surgery import prune_attention

LEGACY_KEY = "pruned_heads"


class LegacyCheckpointError(ValueError):
    """A transformers-4 ``pruned_heads`` checkpoint whose config and weights hf_prune cannot reconcile."""


def legacy_pruned_heads(config: Any) -> dict[int, list[int]]:
    """``config.pruned_heads`` with integer layer keys and sorted, distinct head indices; ``{}`` when absent."""
    raw = getattr(config, LEGACY_KEY, None) or {}
    if not isinstance(raw, dict):
        raise LegacyCheckpointError(f"config.{LEGACY_KEY} must map layer indices to lists of heads, got {raw!r}.")
    heads = {}
    for layer, removed in raw.items():
        try:
            heads[int(layer)] = sorted({int(h) for h in removed})
        except (TypeError, ValueError):
            raise LegacyCheckpointError(
                f"config.{LEGACY_KEY} has {layer!r}: {removed!r}; expected a layer index and a list of head indices."
            ) from None
    return {layer: removed for layer, removed in sorted(heads.items()) if removed}


def structured_config(config: Any, recipe: str | os.PathLike[str] | Recipe | dict[str, Any] = "auto") -> Any:
    """A copy of ``config`` in which hf_prune's record of the structure replaces ``pruned_heads``.

    Raises:
        LegacyCheckpointError: a layer or head index that the model does not have, or a layer left without heads.
    """
    removed = legacy_pruned_heads(config)
    config = copy.deepcopy(config)
    delattr(config, LEGACY_KEY)
    with torch.device("meta"):
        skeleton = transformers.AutoModel.from_config(config)
    structure = ModelStructure(skeleton, recipe)
    for layer, heads in removed.items():
        if not 0 <= layer < structure.num_layers:
            raise LegacyCheckpointError(
                f"config.{LEGACY_KEY} removes heads from layer {layer}, but the model has {structure.num_layers} "
                "layers: the config does not belong to these weights."
            )
        total = structure.shape(layer).heads
        if heads[0] < 0 or heads[-1] >= total or len(heads) == total:
            raise LegacyCheckpointError(
                f"config.{LEGACY_KEY} removes heads {heads} from layer {layer}, which has {total} heads (0 to "
                f"{total - 1}) and must keep at least one: the config does not belong to these weights."
            )
        keep = [h for h in range(total) if h not in heads]
        prune_attention(structure.layers[layer], structure.recipe_dict, structure.head_dim, keep)
    record_structure(structure, layout_refusal(structure, [s.counts for s in structure.shapes()]))
    return skeleton.config


def check_shapes(path: str | os.PathLike[str], config: Any, removed: dict[int, list[int]], **hub_kwargs: Any) -> None:
    """Refuse a checkpoint whose attention tensors are not the sizes its ``pruned_heads`` imply.

    ``config`` is the :func:`structured_config`; the check reads only the checkpoint's header (see
    :func:`hf_prune.loading.probe`).
    """
    candidates = candidate_classes(config)
    if not candidates:
        return  # no class to compare with: the class choice that follows says so
    mismatched = probe(path, candidates[0], config, **hub_kwargs).mismatched
    if mismatched:
        shown = "\n".join(f"  - {m}" for m in mismatched[:8]) + ("\n  - ..." if len(mismatched) > 8 else "")
        listed = ", ".join(f"layer {layer}: {heads}" for layer, heads in removed.items())
        raise LegacyCheckpointError(
            f"config.{LEGACY_KEY} ({listed}) disagrees with the checkpoint's tensor shapes ('model' is the shape "
            f"those heads leave):\n{shown}\nThe config.json does not belong to these weights: restore the one the "
            "model was saved with."
        )
