"""Depth: whole transformer blocks as a unit of pruning. Score them, skip them (the masked form), remove them.

A block maps its input hidden states to its output through a residual stream. Skipping it (its output is its
input) is what removing it computes, so the same verification as for heads and neurons applies: the model with
the blocks skipped must equal the model without them.

Criteria (higher = more important), all measured on calibration data:

- ``block_influence``: ``1 - cos(input, output)`` of each block, averaged over tokens (ShortGPT, Men et al. 2024);
- ``angular``: the angular distance ``arccos(cos(x_l, x_{l+n})) / pi`` between the input of block ``l`` and the
  input of block ``l + n``, for removing ``n`` *consecutive* blocks (Gromov et al. 2024): the span that changes the
  hidden states least goes;
- ``loss``: how much the calibration loss rises when the block alone is skipped (needs labels).

Removal updates what the recipe's ``depth`` section names (the attention modules' ``layer_idx``, which the KV cache
reads; per-block config lists such as ``layer_types``) and the config's block count, so a checkpoint whose blocks
keep uniform widths loads with plain ``from_pretrained``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from . import surgery
from .checkpoint import layout_refusal, record_structure
from .recipe import RecipeError
from .structure import ModelStructure
from .verify import check_pruned, masked_reference, probe_inputs

DEPTH_CRITERIA = ("block_influence", "angular", "loss")


@dataclass
class DepthPlan:
    """The blocks to remove, and the scores that chose them (for the report)."""

    criterion: str
    remove: list[int]
    scores: list[float] = field(default_factory=list)  # per block; for 'angular', per span start

    def describe(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "removed_layers": self.remove, "scores": self.scores}


# -- how many, and which --------------------------------------------------------------------------------------------


def blocks_to_remove(fraction: float, num_layers: int, protected: Sequence[int] = ()) -> int:
    """How many of ``num_layers`` blocks a ``layers`` fraction removes (ties keep more), refusing to empty the
    model or to reach into protected blocks."""
    count = max(0, math.ceil(fraction * num_layers - 0.5))
    if count >= num_layers:
        raise ValueError(
            f"layers={fraction} removes all {num_layers} blocks of this model; a model needs at least one. Give a "
            f"smaller fraction (each block is {1 / num_layers:.3g} of them)."
        )
    eligible = num_layers - len(set(protected))
    if count > eligible:
        raise ValueError(
            f"layers={fraction} removes {count} blocks, but only {eligible} of {num_layers} are not protected "
            f"(protected_layers={sorted(set(protected))}). Protect fewer blocks or remove fewer."
        )
    return count


def choose_blocks(scores: torch.Tensor, count: int, protected: Sequence[int] = ()) -> list[int]:
    """The ``count`` least important unprotected blocks (ties go to the later block: the first ones set up the
    residual stream that the rest read)."""
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), -i))
    return sorted([i for i in order if i not in set(protected)][:count])


def choose_span(distances: torch.Tensor, count: int, protected: Sequence[int] = ()) -> list[int]:
    """The ``count`` consecutive blocks, starting where ``distances`` (one per start) is smallest, that contain no
    protected block."""
    starts = [s for s in range(len(distances)) if not set(range(s, s + count)) & set(protected)]
    if not starts:
        raise ValueError(f"no span of {count} consecutive blocks avoids the protected layers {sorted(protected)}.")
    best = min(starts, key=lambda s: (float(distances[s]), -s))
    return list(range(best, best + count))


# -- skipping blocks (the masked form) --------------------------------------------------------------------------------


def _hidden_input(args: tuple[Any, ...], kwargs: dict[str, Any], like: torch.Tensor) -> torch.Tensor:
    """The block's input hidden states: its first tensor argument shaped like its output."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.shape == like.shape:
            return value
    raise RecipeError(
        "a block was called without an input of its output's shape, so it cannot be skipped as an identity: this "
        "architecture's blocks are not residual blocks that depth pruning can remove."
    )


def _hidden_output(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:]) if isinstance(output, tuple) else type(output)(hidden, *output[1:])


@contextlib.contextmanager
def skipped(layers: nn.ModuleList, indices: Sequence[int]) -> Iterator[None]:
    """Within the context, blocks ``indices`` output their input (what the model computes without them)."""

    def identity(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden = _hidden_output(output)
        return _with_hidden(output, _hidden_input(args, kwargs, hidden))

    handles = [layers[i].register_forward_hook(identity, with_kwargs=True) for i in indices]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# -- scoring ------------------------------------------------------------------------------------------------------


def _run(model: nn.Module, batch: dict[str, torch.Tensor], with_labels: bool) -> Any:
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if with_labels or k != "labels"}
    if getattr(model.config, "use_cache", None) is not None:
        inputs["use_cache"] = False
    return model(**inputs)


def _token_weights(batch: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    mask = batch.get("attention_mask")
    weights = torch.ones(like.shape[:-1]) if mask is None else mask.float()
    return weights.to(like.device)


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # float64: arccos is steep near 1, where float32 rounding alone reads as an angle of 1e-4
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).clamp(-1.0, 1.0)


def _stream(model: nn.Module, layers: nn.ModuleList, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The hidden states entering every block, and leaving the last one (``len(layers) + 1`` tensors)."""
    states: list[torch.Tensor | None] = [None] * (len(layers) + 1)

    def keep(index: int):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            hidden = _hidden_output(output)
            states[index] = _hidden_input(args, kwargs, hidden).detach()
            if index == len(layers) - 1:
                states[index + 1] = hidden.detach()

        return hook

    handles: list[RemovableHandle] = [
        layer.register_forward_hook(keep(i), with_kwargs=True) for i, layer in enumerate(layers)
    ]
    try:
        _run(model, batch, with_labels=False)
    finally:
        for handle in handles:
            handle.remove()
    if any(s is None for s in states):
        raise RecipeError("not every block ran on a calibration batch; depth scores need every block's input.")
    return states  # type: ignore[return-value]


def block_scores(
    structure: ModelStructure, batches: Sequence[dict[str, torch.Tensor]], criterion: str, count: int = 1
) -> torch.Tensor:
    """One score per block (per span start for ``angular``, spans of ``count`` blocks), higher = keep."""
    if criterion not in DEPTH_CRITERIA:
        raise ValueError(f"layer_importance must be one of {DEPTH_CRITERIA}, got {criterion!r}.")
    if not batches:
        raise ValueError("depth scores need calibration batches.")
    model, layers = structure.model, structure.layers
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if criterion == "loss":
                return _loss_scores(model, layers, batches)
            spans = len(layers) - count + 1 if criterion == "angular" else len(layers)
            totals, weight = torch.zeros(spans, dtype=torch.float64), 0.0
            for batch in tqdm(batches, desc=f"depth scores ({criterion})", unit="batch", leave=False):
                states = _stream(model, layers, batch)
                weights = _token_weights(batch, states[0])
                step = count if criterion == "angular" else 1
                for start in range(spans):
                    cos = _cosines(states[start], states[start + step])
                    value = torch.arccos(cos) / math.pi if criterion == "angular" else 1.0 - cos
                    totals[start] += float((value * weights).sum())
                weight += float(weights.sum())
            return (totals / max(weight, 1.0)).float()
    finally:
        model.train(was_training)


def _require_labels(batches: Sequence[dict[str, torch.Tensor]]) -> None:
    if not all("labels" in batch for batch in batches):
        raise ValueError(
            "layer_importance='loss' needs labelled calibration batches (a causal LM's windows carry labels; an "
            "encoder needs a label column). Use 'block_influence' or 'angular' with unlabelled data."
        )


def _mean_loss(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> float:
    return sum(float(_run(model, batch, with_labels=True).loss) for batch in batches) / len(batches)


def _loss_increases(
    model: nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    skips: Sequence[Callable[[], contextlib.AbstractContextManager[None]]],
    dense: float,
    desc: str,
) -> torch.Tensor:
    """How much the calibration loss rises (over ``dense``) inside each of ``skips`` (one context per unit)."""
    increases = []
    for skip in tqdm(skips, desc=desc, leave=False):
        with skip():
            increases.append(_mean_loss(model, batches) - dense)
    return torch.tensor(increases)


def _loss_scores(model: nn.Module, layers: nn.ModuleList, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    _require_labels(batches)
    skips = [partial(skipped, layers, [i]) for i in range(len(layers))]
    return _loss_increases(model, batches, skips, _mean_loss(model, batches), "depth scores (loss)")


def plan_depth(
    structure: ModelStructure,
    batches: Sequence[dict[str, torch.Tensor]],
    fraction: float,
    criterion: str = "block_influence",
    protected: Sequence[int] = (),
) -> DepthPlan:
    """Which blocks a ``layers`` fraction removes, chosen by ``criterion`` on ``batches``."""
    check_depth_recipe(structure)
    count = blocks_to_remove(fraction, structure.num_layers, protected)
    if count == 0:
        return DepthPlan(criterion, [], [])
    scores = block_scores(structure, batches, criterion, count)
    remove = (
        choose_span(scores, count, protected) if criterion == "angular" else choose_blocks(scores, count, protected)
    )
    return DepthPlan(criterion, remove, [round(float(s), 6) for s in scores])


# -- removal ----------------------------------------------------------------------------------------------------------


def check_depth_recipe(structure: ModelStructure) -> None:
    """Refuse depth pruning, before any work, where the recipe cannot say how blocks are removed."""
    recipe = structure.recipe
    if len(structure.stacks) > 1:
        raise RecipeError(
            f"recipe '{recipe.name}' has several block lists ({', '.join(s for s, _, _ in structure.stacks)}); "
            "hf_prune removes whole blocks or sublayers of single-list models only. Prune heads, cross-attention "
            "heads and neurons (no layers=, attention_layers= or mlp_layers=)."
        )
    if recipe.depth is None:
        raise RecipeError(
            f"recipe '{recipe.name}' has no `depth` section, so hf_prune does not know what holds a block's index "
            "(the KV cache's layer_idx) or which config values list one entry per block. Add one (see 'Adding an "
            "architecture' in the README: `depth: {index_attributes: {self_attn: layer_idx}, config_lists: "
            "[layer_types]}`), or prune heads and neurons only (no layers=)."
        )
    config, count = structure.config, structure.num_layers
    if surgery._config_get(config, recipe.depth.count_attribute) != count:
        raise RecipeError(
            f"recipe '{recipe.name}': config '{recipe.depth.count_attribute}' is "
            f"{surgery._config_get(config, recipe.depth.count_attribute)!r}, not the {count} blocks of the model; "
            "fix `depth.count_attribute`."
        )
    declared = set(recipe.depth.config_lists)
    for name in declared:
        value = getattr(config, name, None)
        if not isinstance(value, list | tuple) or len(value) != count:
            raise RecipeError(
                f"recipe '{recipe.name}': config '{name}' should list one entry per block ({count}), got {value!r}; "
                "fix `depth.config_lists`."
            )
    undeclared = [
        k
        for k, v in config.to_dict().items()
        if isinstance(v, list) and len(v) == count and k not in declared and k != "architectures"
    ]
    if count > 1 and undeclared:
        raise RecipeError(
            f"recipe '{recipe.name}': config value(s) {undeclared} hold one entry per block and would keep the removed "
            "blocks' entries. Name them under `depth.config_lists` in the recipe."
        )
    index_paths = set(recipe.depth.index_attributes.items())
    for i, layer in enumerate(structure.layers):
        for path, module in layer.named_modules():
            for attribute in ("layer_idx", "layer_id", "layer_index"):
                value = vars(module).get(attribute)
                if isinstance(value, int) and not isinstance(value, bool) and (path, attribute) not in index_paths:
                    raise RecipeError(
                        f"recipe '{recipe.name}': block {i}'s '{path or '<block>'}' stores its block index in "
                        f"`{attribute}`, which removing blocks would leave stale (the KV cache reads it). Add "
                        f"`{path}: {attribute}` under `depth.index_attributes`."
                    )
        for path, attribute in index_paths:
            module = surgery.get_submodule(layer, path) if path else layer
            if not hasattr(module, attribute):
                raise RecipeError(
                    f"recipe '{recipe.name}': block {i}'s '{path or '<block>'}' has no attribute `{attribute}`; fix "
                    "`depth.index_attributes`."
                )


def remove_blocks(structure: ModelStructure, remove: Sequence[int]) -> None:
    """Remove blocks ``remove`` of ``structure.model`` in place, renumber the rest and update the config.

    Verified like width surgery: the model with the blocks skipped and the model without them must agree on a small
    probe, else :class:`~hf_prune.verify.PrunedModelError` (the recipe misses something).
    """
    check_depth_recipe(structure)
    layers, count = structure.layers, structure.num_layers
    remove = sorted(set(int(i) for i in remove))
    if any(not 0 <= i < count for i in remove):
        raise IndexError(f"block index out of range: the model has {count} blocks (0 to {count - 1}).")
    if len(remove) >= count:
        raise ValueError(f"refusing to remove all {count} blocks; a model needs at least one.")
    if not remove:
        return
    model, spec, config = structure.model, structure.recipe.depth, structure.config
    probe = probe_inputs(model)
    with skipped(layers, remove):
        reference = masked_reference(model, probe)
    keep = [i for i in range(count) if i not in remove]
    for i in reversed(remove):
        del layers[i]
    for new, layer in enumerate(layers):
        for path, attribute in spec.index_attributes.items():
            setattr(surgery.get_submodule(layer, path) if path else layer, attribute, new)
    for name in spec.config_lists:
        value = getattr(config, name)
        setattr(config, name, type(value)(value[i] for i in keep))
    with surgery.global_config_access(config):
        setattr(config, spec.count_attribute, len(keep))
    if reference is not None:
        check_pruned(model, probe, reference, structure.recipe.name)
    # Per-layer records (a width-pruned model's per_layer_config, which the KV cache reads) follow the new numbering.
    record_structure(structure, layout_refusal(structure, [s.counts for s in structure.shapes()]))


# -- sublayers: an attention or MLP sublayer on its own ---------------------------------------------------------------

SUBLAYER_CRITERIA = ("block_influence", "loss")
SUBLAYERS_ORDER = ("attention", "mlp")  # the order a block adds them to its residual stream


@dataclass
class SublayerRemoval:
    """The blocks whose attention / MLP sublayer goes, and the scores that chose them (for the report)."""

    criterion: str
    remove: dict[str, list[int]]
    scores: dict[str, list[float]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "removed": self.remove, "scores": self.scores}


def check_sublayer_recipe(structure: ModelStructure, parts: Sequence[str]) -> None:
    """Refuse sublayer removal, before any work, where the recipe names no way to remove that sublayer."""
    check_depth_recipe(structure)
    assert structure.recipe.depth is not None
    declared = structure.recipe.depth.sublayers
    for part in parts:
        if part not in declared:
            raise RecipeError(
                f"recipe '{structure.recipe.name}' names no way to remove the {part} sublayer on its own: add "
                f"`depth.sublayers.{part}` (the module the block adds to its residual stream, e.g. `{{module: "
                f"{'self_attn, returns: [hidden, null], cache: true' if part == 'attention' else 'mlp'}}}`; see "
                f"'Adding an architecture' in the README), or remove whole blocks (layers=)."
            )


def sublayers_to_remove(fraction: float, num_layers: int, part: str, protected: Sequence[int] = ()) -> int:
    """How many blocks lose their ``part`` sublayer for ``fraction`` (ties keep more); every block losing its
    attention (or its MLP) is refused: the model would no longer mix tokens (or transform them)."""
    count = max(0, math.ceil(fraction * num_layers - 0.5))
    if count >= num_layers:
        raise ValueError(
            f"{part}_layers={fraction} removes the {part} sublayer of all {num_layers} blocks; keep it in at least one "
            f"(each block is {1 / num_layers:.3g} of them)."
        )
    eligible = num_layers - len(set(protected))
    if count > eligible:
        raise ValueError(
            f"{part}_layers={fraction} removes {count} {part} sublayers, but only {eligible} of {num_layers} blocks "
            f"are not protected (protected_layers={sorted(set(protected))})."
        )
    return count


@contextlib.contextmanager
def sublayers_skipped(structure: ModelStructure, remove: dict[str, Sequence[int]]) -> Iterator[None]:
    """Within the context, the named sublayers add nothing to the residual (what the model without them computes)."""

    def zero(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        hidden = _hidden_output(output)
        return _with_hidden(output, torch.zeros_like(hidden))

    handles = []
    sublayers = structure.recipe.depth.sublayers if structure.recipe.depth else {}
    for part, blocks in remove.items():
        for i in blocks:
            handles.append(
                surgery.get_submodule(structure.layers[i], sublayers[part].module).register_forward_hook(zero)
            )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _contributions(structure: ModelStructure, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Per block: its input ``x``, output ``y`` and what each sublayer adds to the residual (``attention``, ``mlp``)."""
    assert structure.recipe.depth is not None
    sublayers = structure.recipe.depth.sublayers
    found: list[dict[str, torch.Tensor]] = [{} for _ in structure.layers]
    handles: list[RemovableHandle] = []

    def block_hook(index: int):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            hidden = _hidden_output(output)
            found[index]["x"], found[index]["y"] = _hidden_input(args, kwargs, hidden).detach(), hidden.detach()

        return hook

    def added_hook(index: int, part: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            found[index][part] = _hidden_output(output).detach()

        return hook

    for i, layer in enumerate(structure.layers):
        handles.append(layer.register_forward_hook(block_hook(i), with_kwargs=True))
        for part in SUBLAYERS_ORDER:
            if part in sublayers:
                spec = sublayers[part]
                added = surgery.get_submodule(layer, spec.added or spec.module)
                handles.append(added.register_forward_hook(added_hook(i, part)))
    try:
        _run(structure.model, batch, with_labels=False)
    finally:
        for handle in handles:
            handle.remove()
    return found


def sublayer_scores(
    structure: ModelStructure, batches: Sequence[dict[str, torch.Tensor]], criterion: str, parts: Sequence[str]
) -> dict[str, torch.Tensor]:
    """One score per block for each sublayer in ``parts``, higher = keep.

    ``block_influence``: ``1 - cos(h, h + a)`` for what the sublayer adds (``a``) to the residual stream it reads
    (``h``: the block's input for attention, that plus the attention's output for the MLP; ShortGPT's measure, per
    sublayer). Checked against the block's output: ``y = x + attention + mlp``, else the recipe's sublayers do not
    describe this block. ``loss``: how much the calibration loss rises when the sublayer alone is removed.
    """
    if criterion not in SUBLAYER_CRITERIA:
        raise ValueError(
            f"sublayers are scored by {' or '.join(SUBLAYER_CRITERIA)}, not {criterion!r} (angular distance ranks "
            "spans of whole blocks)."
        )
    model = structure.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if criterion == "loss":
                _require_labels(batches)
                dense = _mean_loss(model, batches)
                return {
                    part: _loss_increases(
                        model,
                        batches,
                        [partial(sublayers_skipped, structure, {part: [i]}) for i in range(structure.num_layers)],
                        dense,
                        f"{part} scores (loss)",
                    )
                    for part in parts
                }
            totals = {part: torch.zeros(structure.num_layers, dtype=torch.float64) for part in parts}
            weight = 0.0
            for batch in tqdm(batches, desc="sublayer scores (block_influence)", unit="batch", leave=False):
                blocks = _contributions(structure, batch)
                weights = _token_weights(batch, blocks[0]["x"])
                for i, found in enumerate(blocks):
                    x, y = found["x"], found["y"]
                    attention = found.get("attention", torch.zeros_like(x))
                    mlp = found.get("mlp", torch.zeros_like(x))
                    mismatch = float((x + attention + mlp - y).norm() / y.norm().clamp_min(1e-12))
                    if mismatch > 1e-3:
                        raise RecipeError(
                            f"recipe '{structure.recipe.name}': block {i}'s output is not its input plus what its "
                            f"sublayers add (relative difference {mismatch:.2g}); `depth.sublayers` must name the "
                            "modules whose outputs the block adds to its residual stream (`added:` for a post-norm)."
                        )
                    streams = {"attention": (x, x + attention), "mlp": (y - mlp, y)}
                    for part in parts:
                        before, after = streams[part]
                        totals[part][i] += float(((1.0 - _cosines(before, after)) * weights).sum())
                weight += float(weights.sum())
            return {part: (total / max(weight, 1.0)).float() for part, total in totals.items()}
    finally:
        model.train(was_training)


def plan_sublayers(
    structure: ModelStructure,
    batches: Sequence[dict[str, torch.Tensor]],
    fractions: dict[str, float],
    criterion: str = "block_influence",
    protected: Sequence[int] = (),
) -> SublayerRemoval:
    """Which blocks lose their attention / MLP sublayer for ``fractions`` (``{"attention": 0.25}``), chosen by
    ``criterion``."""
    parts = [part for part, fraction in fractions.items() if fraction > 0]
    check_sublayer_recipe(structure, parts)
    counts = {part: sublayers_to_remove(fractions[part], structure.num_layers, part, protected) for part in parts}
    parts = [part for part in parts if counts[part] > 0]
    if not parts:
        return SublayerRemoval(criterion, {})
    scores = sublayer_scores(structure, batches, criterion, parts)
    remove = {part: choose_blocks(scores[part], counts[part], protected) for part in parts}
    return SublayerRemoval(criterion, remove, {p: [round(float(v), 6) for v in s] for p, s in scores.items()})


def remove_sublayers(structure: ModelStructure, remove: dict[str, Sequence[int]]) -> None:
    """Replace the named sublayers of ``structure.model`` by modules that add nothing, in place, and record them.

    Verified like width surgery: the model with those sublayers zeroed and the model without them must agree on a
    small probe, else :class:`~hf_prune.verify.PrunedModelError`.
    """
    remove = {part: sorted({int(i) for i in blocks}) for part, blocks in remove.items() if blocks}
    check_sublayer_recipe(structure, list(remove))
    already = structure.removed_sublayers
    for part, blocks in remove.items():
        if any(not 0 <= i < structure.num_layers for i in blocks):
            raise IndexError(f"block index out of range: the model has {structure.num_layers} blocks.")
        if not set(range(structure.num_layers)) - set(blocks) - set(already.get(part, [])):
            raise ValueError(f"refusing to remove the {part} sublayer of every block; keep it in at least one.")
    if not remove:
        return
    model = structure.model
    probe = probe_inputs(model)
    with sublayers_skipped(structure, remove):
        reference = masked_reference(model, probe)
    for part, blocks in remove.items():
        for i in blocks:
            surgery.remove_sublayer(structure.layers[i], structure.recipe_dict, structure.head_dim, part)
    if reference is not None:
        check_pruned(model, probe, reference, structure.recipe.name)
    record_structure(structure, layout_refusal(structure, [s.counts for s in structure.shapes()]))


# -- gradual depth (PruningCallback) ----------------------------------------------------------------------------------


class BlockSkips:
    """The masked form of depth pruning during training: hooks that skip chosen blocks, and Block Influence
    accumulated from the training forward passes themselves (no extra pass).

    Every block's ``1 - cos(input, output)`` is summed over the tokens of each training forward (evaluation passes
    are not counted); a skipped block stays skipped (nothing skipped comes back), and at the end of training the
    skipped blocks are removed with :func:`remove_blocks`.
    """

    def __init__(self, layers: nn.ModuleList) -> None:
        self.layers = layers
        self.skipped: list[int] = []
        self.sums = torch.zeros(len(layers), dtype=torch.float64)
        self.tokens = torch.zeros(len(layers), dtype=torch.float64)
        self._handles: list[RemovableHandle] = []
        self._on_device: dict[int, torch.Tensor] = {}  # sums not yet moved to the CPU (no sync in every forward)

    def attach(self) -> None:
        """Install the hooks (idempotent)."""
        if not self._handles:
            self._handles = [
                layer.register_forward_hook(self._hook(i), with_kwargs=True) for i, layer in enumerate(self.layers)
            ]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, index: int):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            hidden = _hidden_output(output)
            inputs = _hidden_input(args, kwargs, hidden)
            if module.training:
                with torch.no_grad():
                    value = (1.0 - _cosines(inputs, hidden)).sum()
                    previous = self._on_device.get(index)
                    self._on_device[index] = value if previous is None else previous + value
                    self.tokens[index] += hidden[..., 0].numel()
            return _with_hidden(output, inputs) if index in self.skipped else None

        return hook

    def _flush(self) -> None:
        for index, value in self._on_device.items():
            self.sums[index] += float(value)
        self._on_device.clear()

    def totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed Block Influence and token counts per block (what ranks add up under DDP)."""
        self._flush()
        return self.sums.clone(), self.tokens.clone()

    def scores(self) -> torch.Tensor:
        """Mean Block Influence of each block so far (zero where no token was seen)."""
        sums, tokens = self.totals()
        return (sums / tokens.clamp_min(1.0)).float()

    def skip_more(self, count: int, scores: torch.Tensor, protected: Sequence[int] = ()) -> None:
        """Skip the least important blocks until ``count`` are skipped (never fewer than already are)."""
        extra = count - len(self.skipped)
        if extra > 0:
            live = [i for i in range(len(self.layers)) if i not in self.skipped]
            chosen = choose_blocks(scores[live], extra, [live.index(p) for p in protected if p in live])
            self.skipped = sorted(self.skipped + [live[i] for i in chosen])

    def state_dict(self) -> dict[str, Any]:
        self._flush()
        return {"skipped": list(self.skipped), "sums": self.sums.tolist(), "tokens": self.tokens.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._on_device.clear()
        self.skipped = [int(i) for i in state["skipped"]]
        self.sums = torch.tensor(state["sums"], dtype=torch.float64)
        self.tokens = torch.tensor(state["tokens"], dtype=torch.float64)
