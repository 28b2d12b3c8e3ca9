"""From a recipe and a model to prunable groups: heads, KV groups, neurons and experts of every block."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from . import __version__, surgery
from .kinds import UnitKind, UnitParameter, registered_kinds
from .recipe import Recipe, RecipeError, SharedHeadTensor, recipes_for_model_type, resolve_recipe
from .sharding import full


@dataclass(frozen=True, eq=True)
class LayerShape:
    """Current counts of one transformer block: units per kind (``{"heads": 8, "kv_heads": 2, "neurons": 512}``)."""

    counts: dict[str, int]

    def __hash__(self) -> int:
        return hash(tuple(self.counts.items()))

    def __getitem__(self, kind: str) -> int:
        return self.counts[kind]

    # Read-only names for the shipped kinds, for code and tests about attention and MLPs in particular.
    @property
    def heads(self) -> int:
        return self.counts["heads"]

    @property
    def kv_heads(self) -> int:
        return self.counts["kv_heads"]

    @property
    def neurons(self) -> int:
        return self.counts["neurons"]

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 without GQA)."""
        return self.heads // self.kv_heads


# A per-element quantity summed over each unit of one block, per kind.
GroupSums = dict[str, torch.Tensor]


def _as_out_in(module: nn.Module | UnitParameter, tensor: torch.Tensor) -> torch.Tensor:
    """View a weight-shaped tensor as (out, in), whatever the layer type (Conv1D stores (in, out)); a unit
    parameter's unit axis comes first (one expert per leading index), or its two unit axes flattened into the first
    (expert ``e``'s neuron ``j`` at ``e * neurons + j``)."""
    if isinstance(module, UnitParameter):
        if isinstance(module.axis, tuple):
            return tensor.movedim(module.axis, (0, 1)).flatten(0, 1)
        return tensor.movedim(module.axis, 0)
    return tensor.t() if isinstance(surgery.base_layer(module), Conv1D) else tensor


def _check_lora(index: int, path: str, module: nn.Module) -> None:
    """A peft LoRA layer on a pruned projection is sliced with it; refuse what slicing cannot keep exact."""
    if surgery.lora_parts(module) is None:
        return
    variants = sorted(getattr(module, "lora_variant", {}) or {})
    magnitudes = getattr(module, "lora_magnitude_vector", None)
    if variants or (magnitudes is not None and len(magnitudes) > 0):
        raise TypeError(
            f"layer {index}: '{path}' carries a LoRA variant (DoRA or another, adapters {variants}) whose extra "
            "state hf_prune does not slice. Prune with plain LoRA adapters (LoraConfig(use_dora=False)), or merge "
            "the adapter (merge_and_unload()) before pruning."
        )
    if getattr(module, "merged", False):
        raise TypeError(
            f"layer {index}: '{path}' has its LoRA adapter merged into the base weight; unmerge it "
            "(model.unmerge_adapter()) or merge it for good (merge_and_unload()) before pruning."
        )


def adapted_weight(module: nn.Module | UnitParameter) -> torch.Tensor:
    """The weight a projection computes with, detached: a peft LoRA layer's base weight plus its active adapters'
    ``s * B @ A`` (peft's own delta, laid out like the base weight), so criteria score the adapted model."""
    weight = module.weight.detach()
    if surgery.lora_parts(module) is None or getattr(module, "disable_adapters", False):
        return weight
    active = [a for a in module.active_adapters if a in module.lora_A]
    with torch.no_grad():
        return weight + sum((module.get_delta_weight(a).to(weight.dtype) for a in active), torch.zeros_like(weight))


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model under a peft ``PeftModel`` (the model itself otherwise): recipes describe its paths,
    and its LoRA layers are sliced with the projections they wrap."""
    if hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None)):
        return model.get_base_model()
    return model


class ModelStructure:
    """The prunable structure of a model, as described by its recipe.

    Args:
        model: a transformers model (any head: base, causal LM, classification...).
        recipe: ``"auto"`` (from ``config.model_type``), a shipped recipe name, a YAML path, a dict or a Recipe.
    """

    def __init__(self, model: nn.Module, recipe: str | os.PathLike[str] | Recipe | dict[str, Any] = "auto") -> None:
        model = unwrap_peft(model)
        config = getattr(model, "config", None)
        if config is None:
            raise TypeError(f"expected a transformers PreTrainedModel, got {type(model).__name__}.")
        self.model = model
        self.config = surgery.text_config(model)
        recorded = surgery.recorded_meta(self.config, __version__)
        if recipe == "auto" and recorded:
            recipe = recorded["recipe"]  # a pruned checkpoint carries the recipe it was pruned with
        model_type = getattr(self.config, "model_type", None)
        if recipe == "auto" and model_type is not None:
            candidates = recipes_for_model_type(model_type)
            # Variants of one family share a model_type (T5 with a ReLU or a gated FFN): the first recipe whose
            # modules the model has describes it.
            for candidate in candidates[:-1]:
                try:
                    self._describe(candidate, recorded)
                    return
                except AttributeError:  # a module path it names is missing: the next variant may fit
                    continue
            recipe = candidates[-1]
        self._describe(resolve_recipe(recipe, model_type), recorded)

    def _describe(self, recipe: Recipe, recorded: dict[str, Any] | None) -> None:
        """Read the model's blocks as ``recipe`` says, and check that it describes them."""
        model = self.model
        self.recipe = recipe
        self.recipe_dict = self.recipe.to_dict()
        #: The block lists (an encoder-decoder has two): ``(name, recipe of its blocks, its blocks)``, in block order.
        self.stacks = [
            (name, stack, surgery.find_layers(model, stack.to_dict())) for name, stack in self.recipe.stack_recipes()
        ]
        self._stack_dicts = [stack.to_dict() for _, stack, _ in self.stacks]
        # Blocks are numbered across the stacks; one block list stays the model's own (depth pruning edits it).
        self.layers = self.stacks[0][2] if len(self.stacks) == 1 else [b for _, _, bs in self.stacks for b in bs]
        self._block_stack = [s for s, (_, _, blocks) in enumerate(self.stacks) for _ in blocks]
        #: The kinds of unit this model has (hf_prune.kinds), in table order: those of any stack.
        self.kinds: list[UnitKind] = [
            kind for kind in registered_kinds() if any(kind.applies(stack) for _, stack, _ in self.stacks)
        ]
        self._stack_paths = [
            {role: path for kind in self.kinds if kind.applies(stack) for role, path in kind.paths(stack).items()}
            for _, stack, _ in self.stacks
        ]
        self._stack_parameters = [
            {role: spec for kind in self.kinds if kind.applies(stack) for role, spec in kind.parameters(stack).items()}
            for _, stack, _ in self.stacks
        ]
        self._paths = {role: path for paths in self._stack_paths for role, path in paths.items()}
        self._parameters = {role: spec for specs in self._stack_parameters for role, spec in specs.items()}
        self.head_dim = self._head_dim(recorded)
        self._check_modules()

    # -- structure -------------------------------------------------------------------------------------

    def _head_dim(self, recorded: dict[str, Any] | None) -> int:
        if recorded:
            return int(recorded["head_dim"])
        sizes = {self._stack_head_dim(stack) for _, stack, _ in self.stacks}
        if len(sizes) > 1:
            raise RecipeError(
                f"recipe '{self.recipe.name}': the stacks' attention heads have different sizes {sorted(sizes)}; "
                "hf_prune prunes models whose heads all have one size."
            )
        return sizes.pop()

    def _stack_head_dim(self, recipe: Recipe) -> int:
        att = recipe.attention
        if att.head_dim_attribute and surgery._config_get(self.config, att.head_dim_attribute):
            return int(surgery._config_get(self.config, att.head_dim_attribute))
        heads = surgery._config_get(self.config, att.heads_attribute)
        hidden = surgery._config_get(self.config, "hidden_size")
        if not heads or not hidden:
            raise ValueError(
                f"cannot derive the head size: config has no '{att.heads_attribute}' or 'hidden_size'. "
                "Set `head_dim_attribute` or `heads_attribute` in the recipe."
            )
        return int(hidden) // int(heads)

    def _check_modules(self) -> None:
        """Fail before any surgery, naming the path, if the recipe points at modules or attributes that do not
        exist in some block, or at weights that cannot be sliced (quantized layers)."""
        for index, layer in enumerate(self.layers):
            recipe = self.recipe_for(index)
            sections = (recipe.attention, recipe.cross_attention, recipe.mlp, recipe.experts)
            specs = [spec for spec in sections if spec is not None]
            paths = list(dict.fromkeys(self._stack_paths[self._block_stack[index]].values()))
            self._check_parameters(index, layer)
            for path in paths:
                if surgery.part_removed(layer, path):
                    continue  # a removed sublayer: its kinds count 0 in this block
                module = surgery.get_submodule(layer, path)
                _check_lora(index, path, module)
                module = surgery.base_layer(module)
                if type(module) not in (nn.Linear, Conv1D):
                    raise TypeError(
                        f"layer {index}: '{path}' is a {type(module).__name__}; hf_prune slices plain nn.Linear or "
                        "Conv1D weights. Quantized layers (bitsandbytes, GPTQ, AWQ...) cannot be sliced: load the "
                        "model in float32/float16/bfloat16, prune it, then quantize the pruned model."
                    )
                if not module.weight.is_floating_point():
                    raise TypeError(
                        f"layer {index}: '{path}' holds {module.weight.dtype} weights; load the model in a float dtype."
                    )
            for spec in specs:
                # A misspelt attribute would otherwise be created silently, leaving the real one stale.
                for module_path, attributes in spec.module_attributes.items():
                    if surgery.part_removed(layer, module_path):
                        continue
                    module = surgery.get_submodule(layer, module_path) if module_path else layer
                    missing = [a for a in attributes if not hasattr(module, a)]
                    if missing:
                        raise AttributeError(
                            f"layer {index}: '{module_path}' ({type(module).__name__}) has no attribute(s) {missing} "
                            f"to update; fix `module_attributes` in recipe '{self.recipe.name}'."
                        )
                for module_path in getattr(spec, "module_config", {}):
                    if surgery.part_removed(layer, module_path):
                        continue
                    module = surgery.get_submodule(layer, module_path) if module_path else layer
                    if getattr(module, "config", None) is None:
                        raise AttributeError(
                            f"layer {index}: '{module_path}' ({type(module).__name__}) has no `config` to give a "
                            f"per-layer view; fix `module_config` in recipe '{self.recipe.name}'."
                        )
            counts = self.shape(index).counts
            for kind in self.kinds:
                kind.check(counts, index)
        self._check_shared_head_tensors()

    def _check_parameters(self, index: int, layer: nn.Module) -> None:
        """The unit parameters (expert weights, router rows) exist in block ``index``, are floating point, and agree
        on the number of units. A block without them is refused by name: a dense MLP among MoE blocks (Qwen3-MoE's
        ``mlp_only_layers`` / ``decoder_sparse_step``) is not something the recipe's blocks can describe."""
        counts = []
        for role, (path, name, axis) in self._stack_parameters[self._block_stack[index]].items():
            if surgery.part_removed(layer, path):
                continue  # the block's MoE sublayer was removed
            try:
                owner = layer.get_submodule(path)
            except AttributeError:
                owner = None
            parameter = getattr(owner, name, None)
            if not isinstance(parameter, nn.Parameter):
                parent = path.rpartition(".")[0]
                found = ""
                with contextlib.suppress(AttributeError):
                    found = f"; '{parent}' there is a {type(layer.get_submodule(parent)).__name__}" if parent else ""
                raise RecipeError(
                    f"layer {index} has no parameter '{path}.{name}' ({role}) of recipe '{self.recipe.name}'{found}"
                    ". hf_prune prunes models whose every block has the recipe's structure: a dense MLP among MoE "
                    "blocks (config mlp_only_layers / decoder_sparse_step) is not supported; build the model with "
                    "every block sparse, or fix the recipe's paths."
                )
            if not parameter.is_floating_point():
                raise TypeError(
                    f"layer {index}: '{path}.{name}' holds {parameter.dtype}; load the model in a float dtype."
                )
            axis = axis[0] if isinstance(axis, tuple) else axis  # (expert axis, neuron axis): experts agree
            counts.append(parameter.shape[axis] if axis < parameter.dim() else -1)
        if len(set(counts)) > 1:
            raise RecipeError(
                f"layer {index}: the unit axes of {list(self._parameters)} have lengths {counts}, which should agree "
                f"(one entry per expert); fix the axes under `experts.parameters` in recipe '{self.recipe.name}'."
            )

    def stack_spans(self) -> list[tuple[int, int]]:
        """``(first block, blocks)`` of every stack, in block order."""
        spans, start = [], 0
        for _, _, blocks in self.stacks:
            spans.append((start, len(blocks)))
            start += len(blocks)
        return spans

    def shared_head_tensors(self) -> list[tuple[range, SharedHeadTensor]]:
        """Every declared per-head tensor shared by the blocks of a stack, with the blocks that read it (T5's
        relative position bias: one per stack; MPNet's: one for the model)."""
        return [
            (range(start, start + n), entry)
            for (start, n), (_, stack, _) in zip(self.stack_spans(), self.stacks, strict=True)
            for entry in stack.attention.shared_head_tensors
        ]

    def tied_blocks(self, section: str) -> list[list[int]]:
        """The groups of blocks that must keep the same heads of ``section`` (``attention`` or ``cross_attention``):
        the blocks of each stack whose section shares a per-head tensor or says why its heads are tied."""
        groups = []
        for (start, n), (_, stack, _) in zip(self.stack_spans(), self.stacks, strict=True):
            spec = getattr(stack, section)
            if spec is not None and (spec.shared_head_tensors or spec.heads_tied_because):
                groups.append(list(range(start, start + n)))
        return groups

    def _check_shared_head_tensors(self) -> None:
        """Declared shared per-head tensors exist, and their head axis has one entry per query head of every
        block that reads them (they are sliced once for all of them, so those blocks have the same heads)."""
        shapes = self.shapes()
        for blocks, entry in self.shared_head_tensors():
            heads = {shapes[i].heads for i in blocks}
            try:
                owner, name = surgery.shared_head_parameter(self.model, entry.parameter)
            except AttributeError as err:
                raise RecipeError(f"recipe '{self.recipe.name}': {err}") from None
            shape = tuple(getattr(owner, name).shape)
            if entry.dim >= len(shape) or {shape[entry.dim]} != heads:
                raise RecipeError(
                    f"recipe '{self.recipe.name}': shared head tensor '{entry.parameter}' has shape {shape}; its axis "
                    f"{entry.dim} should have one entry per query head ({sorted(heads)} in the blocks). Fix `dim`, or "
                    "the blocks' head counts differ (a shared tensor needs the same heads in every block)."
                )

    def undeclared_head_tensors(self) -> list[str]:
        """Parameters of the base model, outside the recipe's projections and declared shared tensors, with an axis
        as long as the blocks' query heads: probably per-head tensors that removing heads would leave stale (MPNet's
        relative attention bias, for a recipe that does not declare it). Sizes that are also the hidden size, the
        head size, a neuron count, the vocabulary, the labels or an image's channels, and convolutions' weights, are not
        taken as a sign."""
        shapes = self.shapes()
        heads = {s.heads for s in shapes}
        ambiguous = {self.head_dim, *(s.counts.get("neurons", 0) for s in shapes)}
        sizes_elsewhere = ("hidden_size", "vocab_size", "num_labels", "num_channels")
        ambiguous |= {surgery._config_get(self.config, a) for a in sizes_elsewhere}
        ambiguous |= {surgery._config_get(self.model.config, a) for a in sizes_elsewhere}
        sizes = heads - ambiguous - {1}
        if not sizes:
            return []
        known = {
            id(p)
            for i in range(self.num_layers)
            for role in self.roles()
            if self.present(i, role)
            for p in self.module(i, role).parameters()
        }
        known |= {
            id(getattr(*surgery.shared_head_parameter(self.model, e.parameter))) for _, e in self.shared_head_tensors()
        }
        root = getattr(self.model, "base_model", self.model)
        # A convolution's kernel and channel sizes are not head counts (Whisper's audio stem: kernel 3).
        convolutions = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
        known |= {id(p) for m in root.modules() if isinstance(m, convolutions) for p in m.parameters(recurse=False)}
        return [
            f"{name} {tuple(p.shape)}"
            for name, p in root.named_parameters()
            if id(p) not in known and sizes & set(p.shape)
        ]

    @property
    def has_adapters(self) -> bool:
        """Whether peft LoRA layers wrap some of the projections that are pruned."""
        return any(
            surgery.lora_parts(self.module(i, role)) is not None
            for role in self._paths
            for i in range(self.num_layers)
            if self.present(i, role)
        )

    def roles(self) -> list[str]:
        """Every projection and unit parameter some kind's units live in, each once (experts and the neurons inside
        them are slices of the same parameters)."""
        seen: set[tuple[str, str]] = set()
        parameters = []
        for role, (path, name, _axis) in self._parameters.items():
            if (path, name) not in seen:
                seen.add((path, name))
                parameters.append(role)
        return [*self._paths, *parameters]

    def recipe_for(self, index: int) -> Recipe:
        """The recipe of block ``index``'s stack (the recipe itself for a model with one block list)."""
        return self.stacks[self._block_stack[index]][1]

    def recipe_dict_for(self, index: int) -> dict[str, Any]:
        """:meth:`recipe_for` in the plain-dict form that the surgery reads."""
        return self._stack_dicts[self._block_stack[index]]

    def has(self, index: int, kind: UnitKind) -> bool:
        """Whether block ``index``'s stack has units of ``kind`` (an encoder block has no cross-attention heads)."""
        return kind.applies(self.recipe_for(index))

    def block_name(self, index: int) -> str:
        """How reports name block ``index``: its number, or its stack and number there (``decoder 1``)."""
        if len(self.stacks) == 1:
            return str(index)
        stack = self._block_stack[index]
        return f"{self.stacks[stack][0]} {index - self._block_stack.index(stack)}"

    def shape(self, index: int) -> LayerShape:
        """Current counts of block ``index`` (read from weight shapes); 0 of a kind its stack does not have."""
        layer, recipe = self.layers[index], self.recipe_for(index)
        recipe_dict = self.recipe_dict_for(index)
        return LayerShape(
            {
                kind.name: kind.count(layer, recipe_dict, self.head_dim) if kind.applies(recipe) else 0
                for kind in self.kinds
            }
        )

    @property
    def leaders(self) -> list[UnitKind]:
        """The kinds that are scored, masked and chosen (the others follow one of them)."""
        return [kind for kind in self.kinds if kind.follows is None]

    def part(self, leader: UnitKind) -> list[UnitKind]:
        """``leader`` and the kinds that follow it (removed by the same surgery)."""
        return [kind for kind in self.kinds if kind.part == leader.part]

    def shapes(self) -> list[LayerShape]:
        return [self.shape(i) for i in range(len(self.layers))]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def module(self, index: int, role: str) -> nn.Module:
        """The projection playing ``role`` (``q``, ``o``, ``up``, ``down``...) in block ``index``, or the
        :class:`UnitParameter` of a unit parameter role (``router``, ``experts.gate_up_proj``...)."""
        stack = self._block_stack[index]
        declared = role in self._stack_parameters[stack] or role in self._stack_paths[stack]
        if declared and not self.present(index, role):
            raise ValueError(
                f"block {index} has no '{role}': its sublayer was removed (depth.sublayers); hf_prune does not prune "
                "a model with removed sublayers further. Prune heads, neurons and experts before removing sublayers."
            )
        if role in self._stack_parameters[stack]:
            owner, name, axis = self._stack_parameters[stack][role]
            return UnitParameter(surgery.get_submodule(self.layers[index], owner), name, axis)  # type: ignore[return-value]
        path = self._stack_paths[stack].get(role)
        if path is None:
            where = f" in its {self.stacks[stack][0]} blocks" if len(self.stacks) > 1 else ""
            raise KeyError(f"recipe '{self.recipe.name}' has no '{role}' projection{where} (block {index}).")
        return surgery.get_submodule(self.layers[index], path)

    @property
    def removed_sublayers(self) -> dict[str, list[int]]:
        """``{"attention" | "mlp": blocks whose sublayer was removed}``, for the parts that lost any."""
        removed: dict[str, list[int]] = {}
        offset = 0
        for stack, (_, _, blocks) in zip(self._stack_dicts, self.stacks, strict=True):
            for part, indices in surgery.removed_sublayers(blocks, stack).items():
                removed.setdefault(part, []).extend(offset + i for i in indices)
            offset += len(blocks)
        return removed

    def present(self, index: int, role: str) -> bool:
        """Whether block ``index`` still has the projection or unit parameter ``role`` (not in a removed sublayer)."""
        stack = self._block_stack[index]
        parameters, paths = self._stack_parameters[stack], self._stack_paths[stack]
        path = parameters[role][0] if role in parameters else paths.get(role)
        return path is not None and not surgery.part_removed(self.layers[index], path)

    def reference_block(self, role: str) -> int:
        """The first block that has ``role``: the one whose shapes stand for every block's (costs per unit)."""
        for index in range(self.num_layers):
            if self.present(index, role):
                return index
        raise ValueError(f"no block of this model has '{role}': every block's sublayer holding it was removed.")

    def attention_output(self, index: int) -> nn.Module:
        """The module whose input holds the concatenated head outputs (masks and activations hook here)."""
        return self.module(index, "o")

    def mlp_output(self, index: int) -> nn.Module:
        """The module whose input holds the neuron activations."""
        return self.module(index, "down")

    # -- per-group reductions --------------------------------------------------------------------------

    def group_sums(self, index: int, values: Callable[[nn.Module], torch.Tensor | None]) -> GroupSums:
        """Sum ``values(module)`` (weight-shaped) over each unit of every kind of block ``index``.

        ``values`` returns for instance ``module.weight ** 2`` (magnitude) or ``(w * grad).abs()`` (Taylor);
        it may return ``None`` for a module to skip it (e.g. no gradient yet). It is called once per projection,
        however many kinds read that projection (a fused qkv serves query and KV heads).
        """
        computed: dict[str, torch.Tensor | None] = {}

        def value(role: str) -> torch.Tensor | None:
            if role not in computed:
                module = self.module(index, role)
                raw = values(module)
                computed[role] = None if raw is None else _as_out_in(module, raw).float()
            return computed[role]

        # Under FSDP2 ``v`` is a shard (DTensor): sum on the shards, then gather only the per-unit vector.
        def rows(role: str) -> torch.Tensor | None:
            v = value(role)
            return None if v is None else full(v.flatten(1).sum(dim=1))  # a 3-D unit parameter: one value per unit

        def cols(role: str) -> torch.Tensor | None:
            v = value(role)
            return None if v is None else full(v.sum(dim=0))

        counts = self.shape(index).counts
        return {kind.name: kind.group_sum(self, index, counts, rows, cols) for kind in self.kinds}

    def unit_scores(self, index: int, values: Callable[[nn.Module], torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """One score per unit of each leading kind of block ``index``, from :meth:`group_sums` of ``values``."""
        sums, counts = self.group_sums(index, values), self.shape(index).counts
        return {kind.name: kind.combine(sums, counts) for kind in self.leaders}
