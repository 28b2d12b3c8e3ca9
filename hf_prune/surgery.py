"""Physical removal of attention heads, MLP neurons and MoE experts.

This module is deliberately self-contained (torch, transformers and the standard library only): hf_prune
copies it next to a saved checkpoint so that ``trust_remote_code=True`` can rebuild a pruned model without
hf_prune installed. Everything here works on the plain-dict form of a recipe (what ``Recipe.to_dict()``
returns and what is stored in ``config.json`` under ``hf_prune``).

Vocabulary used throughout:
- ``heads``: query heads of a layer; ``kv_heads``: key/value heads (equal to ``heads`` without GQA);
- ``neurons``: intermediate units of the MLP;
- ``experts``: the routed experts of a mixture-of-experts block (3-D parameters, one slice per expert);
- ``expert_neurons``: the neurons inside those experts, all experts together (expert ``e``'s neuron ``j`` is
  ``e * width + j``); every expert of a block keeps the same number.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

CONFIG_KEY = "hf_prune"
# The newest record format this code reads. 2 added removed sublayers and the neurons inside experts: a reader of 1
# would ignore them and build a model that the weights do not fit. 3 added counts of kinds registered outside
# hf_prune, which a reader of 2 would ignore the same way. Each checkpoint is written with the oldest that holds it.
FORMAT_VERSION = 3


# ---------------------------------------------------------------------------------------------------------
# Slicing primitives for nn.Linear and GPT-2's Conv1D (whose weight is stored transposed: (in, out)).
# ---------------------------------------------------------------------------------------------------------


# An axis to slice along, or (group axis, axis) when each entry of the group axis keeps its own slices (the neurons
# each expert keeps).
Axis = int | tuple[int, int]

# Called with (old parameter, new parameter, axis, kept indices) after every slice: compaction during training
# (hf_prune.compaction) maps the optimizer's state onto the new parameters this way.
SLICE_OBSERVERS: list[Callable[[nn.Parameter, nn.Parameter, Axis, torch.Tensor], None]] = []


def select_slices(value: torch.Tensor, axis: Axis, index: torch.Tensor) -> torch.Tensor:
    """``value``'s slices ``index`` along ``axis``. With ``axis = (group_axis, along)`` the index is 2-D: row ``g``
    lists the slices along ``along`` that entry ``g`` of ``group_axis`` keeps (the same number for every entry)."""
    if isinstance(axis, int):
        return value.index_select(axis, index)
    group_axis, along = axis
    rows = index if group_axis < along else index.t()  # laid out in the order the two axes have in ``value``
    shape = [1] * value.dim()
    shape[group_axis], shape[along] = index.shape
    target = list(value.shape)
    target[along] = index.shape[1]
    return value.gather(along, rows.reshape(shape).expand(target))


def _keep_slices(module: nn.Module, name: str, axis: Axis, index: torch.Tensor) -> None:
    """Replace parameter ``name`` of ``module`` by its slices ``index`` along ``axis`` (see :func:`select_slices`)."""
    old = getattr(module, name)
    index = index.to(old.device)
    value = select_slices(old.detach(), axis, index).contiguous()
    new = nn.Parameter(value, requires_grad=old.requires_grad)
    setattr(module, name, new)
    for observe in SLICE_OBSERVERS:
        observe(old, new, axis, index)


def lora_parts(module: nn.Module) -> tuple[nn.Module, list[nn.Module], list[nn.Module]] | None:
    """A peft LoRA layer around a Linear/Conv1D: ``(its base layer, its A factors, its B factors)``, one factor per
    adapter; ``None`` for any other module. ``y = base(x) + s * B(A(x))``: an output unit is a row of the base
    weight and of every B, an input feature a column of the base weight and of every A."""
    base = getattr(module, "base_layer", None)
    if base is None or not isinstance(getattr(module, "lora_A", None), nn.ModuleDict):
        return None
    while getattr(base, "base_layer", None) is not None:
        base = base.base_layer
    return base, list(module.lora_A.values()), list(module.lora_B.values())


def base_layer(module: nn.Module) -> nn.Module:
    """The Linear/Conv1D that holds ``module``'s weight (itself, or the base layer of a peft LoRA layer)."""
    parts = lora_parts(module)
    return module if parts is None else parts[0]


def keep_outputs(module: nn.Module, index: torch.Tensor) -> None:
    """Keep only the output units ``index`` of a Linear/Conv1D layer (rows of ``y``), in place."""
    if (parts := lora_parts(module)) is not None:
        base, _, factors_b = parts
        for layer in (base, *factors_b):
            keep_outputs(layer, index)
        module.out_features = len(index)
        return
    out_dim = 1 if isinstance(module, Conv1D) else 0
    _keep_slices(module, "weight", out_dim, index)
    if module.bias is not None:
        _keep_slices(module, "bias", 0, index)
    if isinstance(module, Conv1D):
        module.nf = len(index)
    else:
        module.out_features = len(index)


def keep_inputs(module: nn.Module, index: torch.Tensor) -> None:
    """Keep only the input features ``index`` of a Linear/Conv1D layer, in place."""
    if (parts := lora_parts(module)) is not None:
        base, factors_a, _ = parts
        for layer in (base, *factors_a):
            keep_inputs(layer, index)
        module.in_features = len(index)
        return
    in_dim = 0 if isinstance(module, Conv1D) else 1
    _keep_slices(module, "weight", in_dim, index)
    if isinstance(module, Conv1D):
        module.nx = len(index)
    else:
        module.in_features = len(index)


def output_size(module: nn.Module) -> int:
    """Number of output units of a Linear/Conv1D layer."""
    module = base_layer(module)
    return module.weight.shape[1] if isinstance(module, Conv1D) else module.weight.shape[0]


def input_size(module: nn.Module) -> int:
    """Number of input features of a Linear/Conv1D layer."""
    module = base_layer(module)
    return module.weight.shape[0] if isinstance(module, Conv1D) else module.weight.shape[1]


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """``root.get_submodule`` with an error that says which recipe path is wrong."""
    try:
        return root.get_submodule(path)
    except AttributeError as err:
        raise AttributeError(
            f"module path '{path}' does not exist under {type(root).__name__}: {err}. "
            "Check the module names in the recipe against `print(model)`."
        ) from None


# ---------------------------------------------------------------------------------------------------------
# Removed sublayers: an attention or MLP sublayer of a residual block replaced by a module that adds nothing.
# ---------------------------------------------------------------------------------------------------------


class SkippedSublayer(nn.Module):
    """A removed attention or MLP sublayer of a residual block: it returns zeros shaped like its input (the block adds
    them to its residual stream, which then passes unchanged) and holds no weights.

    A removed attention sublayer (``head_dim`` given) still appends keys and values with zero heads to the KV cache at
    its block index: generation reads the cache's sequence length from the first block, which must keep counting.
    """

    def __init__(self, returns: str | list[str | None], head_dim: int | None = None, **indices: int) -> None:
        super().__init__()
        self.returns = returns
        self.head_dim = head_dim
        for attribute, value in indices.items():  # e.g. layer_idx, renumbered when blocks are removed
            setattr(self, attribute, value)
        self._indices = sorted(indices)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if self.head_dim is not None and cache is not None and hasattr(cache, "update") and self._indices:
            empty = hidden.new_zeros(hidden.shape[0], 0, hidden.shape[1], self.head_dim)
            cache.update(empty, empty, getattr(self, self._indices[0]))
        zeros = torch.zeros_like(hidden)
        if isinstance(self.returns, str):
            return zeros
        return tuple(zeros if entry == "hidden" else None for entry in self.returns)

    def extra_repr(self) -> str:
        return "removed: adds nothing to the residual stream"


def part_removed(layer: nn.Module, path: str) -> bool:
    """Whether ``path`` under ``layer`` lies in a removed sublayer (a :class:`SkippedSublayer` or under one)."""
    module = layer
    for name in path.split(".") if path else []:
        if isinstance(module, SkippedSublayer):
            return True
        module = getattr(module, name, None)
        if module is None:
            return False
    return isinstance(module, SkippedSublayer)


def remove_sublayer(layer: nn.Module, recipe: dict[str, Any], head_dim: int, part: str) -> None:
    """Replace sublayer ``part`` (``attention`` or ``mlp``) of one block by a :class:`SkippedSublayer`, as the recipe's
    ``depth.sublayers`` says; the block indices the module stored (``depth.index_attributes``) go with it."""
    depth = recipe.get("depth") or {}
    spec = (depth.get("sublayers") or {}).get(part)
    if spec is None:
        raise ValueError(f"recipe '{recipe['name']}' names no way to remove the {part} sublayer (`depth.sublayers`).")
    path = spec["module"]
    old = get_submodule(layer, path)
    if isinstance(old, SkippedSublayer):
        return
    indices = {a: getattr(old, a) for p, a in (depth.get("index_attributes") or {}).items() if p == path}
    replacement = SkippedSublayer(spec.get("returns", "hidden"), head_dim if spec.get("cache") else None, **indices)
    _replace(layer, path, replacement)
    for norm in spec.get("norms") or []:  # read only by the removed sublayer, or normalising only its zeros
        _replace(layer, norm, nn.Identity())


def _replace(layer: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(get_submodule(layer, parent_path) if parent_path else layer, name, module)


def removed_sublayers(layers: nn.ModuleList, recipe: dict[str, Any]) -> dict[str, list[int]]:
    """``{part: blocks whose sublayer is removed}`` for the parts that lost any (what checkpoints record)."""
    sublayers = (recipe.get("depth") or {}).get("sublayers") or {}
    removed = {
        part: [i for i, layer in enumerate(layers) if part_removed(layer, spec["module"])]
        for part, spec in sublayers.items()
    }
    return {part: blocks for part, blocks in removed.items() if blocks}


# ---------------------------------------------------------------------------------------------------------
# Locating layers and reading their current structure from weight shapes (never from the config: after
# pruning, layers differ and the weights are the only source of truth).
# ---------------------------------------------------------------------------------------------------------


def stack_recipe(recipe: dict[str, Any], stack: dict[str, Any]) -> dict[str, Any]:
    """The plain-dict recipe of one stack's blocks: ``recipe`` without its stacks, with the stack's block list and its
    overrides merged in (a section's fields are updated one by one; a section set to ``None`` is dropped)."""
    merged = {key: value for key, value in recipe.items() if key != "stacks"}
    merged["layers"] = list(stack["layers"])
    for key, value in (stack.get("overrides") or {}).items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def stack_recipes(recipe: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(stack name, its blocks' recipe)`` in block order; ``[("", recipe)]`` for a recipe with one block list."""
    if not recipe.get("stacks"):
        return [("", recipe)]
    return [(stack["name"], stack_recipe(recipe, stack)) for stack in recipe["stacks"]]


def find_stacks(model: nn.Module, recipe: dict[str, Any]) -> list[tuple[str, dict[str, Any], nn.ModuleList]]:
    """Every block list of the model with its name and its blocks' recipe, in block order."""
    return [(name, stack, find_layers(model, stack)) for name, stack in stack_recipes(recipe)]


def cross_view(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` with its cross-attention in the place of self-attention: the attention surgery then works on it."""
    return {**recipe, "attention": recipe["cross_attention"]}


def find_layers(model: nn.Module, recipe: dict[str, Any]) -> nn.ModuleList:
    """Return the transformer block list named by the recipe (paths are tried under the base model first)."""
    roots = [getattr(model, "base_model", model), model]
    for root in roots:
        for path in recipe["layers"]:
            with contextlib.suppress(AttributeError):
                layers = root.get_submodule(path)
                if isinstance(layers, nn.ModuleList):
                    return layers
    raise AttributeError(
        f"recipe '{recipe['name']}' names the layer list {recipe['layers']}, but {type(model).__name__} has "
        "no such nn.ModuleList. Fix `layers:` in the recipe (see `print(model)`)."
    )


def text_config(model: nn.Module) -> Any:
    """The config that describes the transformer blocks (the text config of multimodal models)."""
    return model.config.get_text_config()


def count_heads(layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
    """Current query heads of one block, read from its weight shapes (none where the attention was removed)."""
    att = recipe["attention"]
    if part_removed(layer, att["o"]):
        return 0
    if att.get("qkv"):
        return input_size(get_submodule(layer, att["o"])) // head_dim
    return output_size(get_submodule(layer, att["q"])) // head_dim


def count_kv_heads(layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
    """Current key/value heads of one block, read from its weight shapes."""
    att = recipe["attention"]
    if part_removed(layer, att["o"]):
        return 0
    if att.get("qkv"):
        q_width = input_size(get_submodule(layer, att["o"]))
        return (output_size(get_submodule(layer, att["qkv"])) - q_width) // (2 * head_dim)
    return output_size(get_submodule(layer, att["k"])) // head_dim


def count_neurons(layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
    """Current MLP neurons of one block, read from its weight shapes (none where the MLP was removed)."""
    mlp = recipe["mlp"]
    if part_removed(layer, mlp["down"]):
        return 0
    if mlp.get("gate_up"):
        return output_size(get_submodule(layer, mlp["gate_up"])) // 2
    return output_size(get_submodule(layer, mlp["up"]))


def count_experts(layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
    """Current routed experts of one block, read from the shape of its first expert parameter."""
    spec = recipe["experts"]
    if part_removed(layer, spec["experts"]):
        return 0
    name, axis = next(iter(spec["parameters"].items()))
    return getattr(get_submodule(layer, spec["experts"]), name).shape[axis]


def expert_width(layer: nn.Module, recipe: dict[str, Any]) -> int:
    """Current neurons of each expert of one block (every expert has the same number), from the first parameter
    the recipe gives a neuron axis for (a fused ``[gate | up]`` holds two entries per neuron)."""
    spec = recipe["experts"]
    if part_removed(layer, spec["experts"]):
        return 0
    name, axis = next(iter(spec["neuron_axes"].items()))
    size = getattr(get_submodule(layer, spec["experts"]), name).shape[axis]
    return size // 2 if name in (spec.get("fused_neurons") or []) else size


def count_expert_neurons(layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
    """Current neurons of all of one block's experts together (experts x neurons of each)."""
    return count_experts(layer, recipe, head_dim) * expert_width(layer, recipe)


def layer_counts(layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> dict[str, int]:
    """Current ``heads``, ``kv_heads``, and ``cross_heads``, ``neurons`` and/or ``experts`` and ``expert_neurons`` (as
    the recipe has them) of one block, read from its weight shapes."""
    counts = {"heads": count_heads(layer, recipe, head_dim), "kv_heads": count_kv_heads(layer, recipe, head_dim)}
    if recipe.get("cross_attention"):
        counts["cross_heads"] = count_heads(layer, cross_view(recipe), head_dim)
    if recipe.get("mlp"):
        counts["neurons"] = count_neurons(layer, recipe, head_dim)
    if recipe.get("experts"):
        counts["experts"] = count_experts(layer, recipe, head_dim)
        if recipe["experts"].get("neuron_axes"):
            counts["expert_neurons"] = count_expert_neurons(layer, recipe, head_dim)
    return counts


# ---------------------------------------------------------------------------------------------------------
# Per-layer config views: some modeling code reads head counts from ``self.config`` at forward time (Phi-3's
# fused qkv split). A pruned layer then needs its own view of the config with its own counts.
# ---------------------------------------------------------------------------------------------------------


class LayerConfigView:
    """A read-through view of a config with a few per-layer overrides.

    It delegates everything else to the live global config, so later changes such as
    ``model.set_attn_implementation`` are seen by the layer too.
    """

    def __init__(self, base: Any, overrides: dict[str, Any]) -> None:
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_overrides", dict(overrides))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_base", "_overrides"):
            raise AttributeError(name)
        overrides = object.__getattribute__(self, "_overrides")
        if name in overrides:
            return overrides[name]
        return getattr(object.__getattribute__(self, "_base"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_base"), name, value)


def _quantities(counts: dict[str, int], head_dim: int) -> dict[str, int]:
    heads, kv_heads = counts["heads"], counts["kv_heads"]
    # Neurons and experts are there when the recipe has a dense MLP / a mixture of experts.
    return {
        "heads": heads,
        "kv_heads": kv_heads,
        "kv_groups": heads // kv_heads if kv_heads else 0,
        "head_dim": head_dim,
        "q_width": heads * head_dim,
        "kv_width": kv_heads * head_dim,
        **{name: counts[name] for name in ("neurons", "experts", "expert_neurons") if name in counts},
        **(
            {"expert_width": counts["expert_neurons"] // counts["experts"]}
            if counts.get("experts") and "expert_neurons" in counts
            else {}
        ),
    }


def _update_module_attributes(layer: nn.Module, spec: dict[str, Any], values: dict[str, int]) -> None:
    """Set the module attributes that forward reads (e.g. ``num_key_value_groups``) to the new counts."""
    for module_path, attributes in (spec.get("module_attributes") or {}).items():
        module = get_submodule(layer, module_path) if module_path else layer
        for attribute, quantity in attributes.items():
            setattr(module, attribute, values[quantity])
    for module_path, attributes in (spec.get("module_config") or {}).items():
        module = get_submodule(layer, module_path) if module_path else layer
        base = module.config._base if isinstance(module.config, LayerConfigView) else module.config
        module.config = LayerConfigView(base, {attr: values[q] for attr, q in attributes.items()})


# ---------------------------------------------------------------------------------------------------------
# Surgery on one block.
# ---------------------------------------------------------------------------------------------------------


def _rows(units: Sequence[int], width: int, offset: int = 0) -> torch.Tensor:
    """Row indices of whole units (heads of ``width`` rows each), shifted by ``offset`` rows."""
    # Explicit CPU tensors: from_pretrained builds models under a meta default device.
    units_t = torch.as_tensor(list(units), dtype=torch.long, device="cpu")
    return (offset + units_t[:, None] * width + torch.arange(width, device="cpu")[None, :]).reshape(-1)


def check_gqa_mapping(heads: int, kv_heads: int, keep_heads: Sequence[int], keep_kv: Sequence[int]) -> None:
    """Raise unless the kept query heads map onto the kept KV heads as a valid GQA layout.

    Query head ``h`` reads KV head ``h // (heads // kv_heads)``; after pruning every kept KV head must
    serve the same number of kept query heads, and no kept query head may lose its KV head.
    """
    group = heads // kv_heads
    per_kv = {kv: 0 for kv in keep_kv}
    for h in keep_heads:
        kv = h // group
        if kv not in per_kv:
            raise ValueError(
                f"query head {h} reads KV head {kv}, which is being removed. Under GQA remove whole KV groups "
                "(a KV head with all its query heads) or the same number of query heads from every group."
            )
        per_kv[kv] += 1
    sizes = set(per_kv.values())
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            f"after pruning, the KV heads {sorted(per_kv)} would serve {[per_kv[kv] for kv in sorted(per_kv)]} query "
            "heads respectively; "
            "GQA needs the same number (at least one) for every KV head. Remove the same number of query "
            "heads from every group, or whole KV groups."
        )


def prune_attention(
    layer: nn.Module,
    recipe: dict[str, Any],
    head_dim: int,
    keep_heads: Sequence[int],
    keep_kv_heads: Sequence[int] | None = None,
) -> dict[str, int]:
    """Keep only ``keep_heads`` (query heads) and ``keep_kv_heads`` of a block's attention, in place.

    Without GQA (``kv_heads == heads``) the KV heads follow the query heads and ``keep_kv_heads`` may be
    omitted. Returns the block's new counts.
    """
    att = recipe["attention"]
    counts = layer_counts(layer, recipe, head_dim)
    heads, kv_heads = counts["heads"], counts["kv_heads"]
    keep_heads = sorted(int(h) for h in keep_heads)
    if keep_kv_heads is None:
        if kv_heads != heads:
            group = heads // kv_heads
            keep_kv_heads = sorted({h // group for h in keep_heads})
        else:
            keep_kv_heads = keep_heads
    keep_kv_heads = sorted(int(h) for h in keep_kv_heads)
    if not keep_heads:
        raise ValueError("refusing to remove every attention head of a layer; keep at least one head.")
    if any(not 0 <= h < heads for h in keep_heads) or any(not 0 <= h < kv_heads for h in keep_kv_heads):
        raise IndexError(f"head index out of range: the layer has {heads} query and {kv_heads} KV heads.")
    if kv_heads == heads and keep_kv_heads != keep_heads:
        raise ValueError("without GQA, the kept KV heads must be the kept query heads.")
    check_gqa_mapping(heads, kv_heads, keep_heads, keep_kv_heads)

    q_rows = _rows(keep_heads, head_dim)
    if att.get("qkv"):
        k_rows = _rows(keep_kv_heads, head_dim, offset=heads * head_dim)
        v_rows = _rows(keep_kv_heads, head_dim, offset=(heads + kv_heads) * head_dim)
        keep_outputs(get_submodule(layer, att["qkv"]), torch.cat([q_rows, k_rows, v_rows]))
    else:
        kv_rows = _rows(keep_kv_heads, head_dim)
        keep_outputs(get_submodule(layer, att["q"]), q_rows)
        keep_outputs(get_submodule(layer, att["k"]), kv_rows)
        keep_outputs(get_submodule(layer, att["v"]), kv_rows)
    keep_inputs(get_submodule(layer, att["o"]), q_rows)

    new = {**counts, "heads": len(keep_heads), "kv_heads": len(keep_kv_heads)}
    _update_module_attributes(layer, att, _quantities(new, head_dim))
    return new


def prune_mlp(layer: nn.Module, recipe: dict[str, Any], head_dim: int, keep_neurons: Sequence[int]) -> dict[str, int]:
    """Keep only the intermediate units ``keep_neurons`` of a block's MLP, in place; returns new counts."""
    mlp = recipe["mlp"]
    counts = layer_counts(layer, recipe, head_dim)
    keep_list = sorted(int(n) for n in keep_neurons)
    if not keep_list:
        raise ValueError("refusing to remove every MLP neuron of a layer; keep at least one neuron.")
    if keep_list[-1] >= counts["neurons"] or keep_list[0] < 0:
        raise IndexError(f"neuron index out of range: the layer has {counts['neurons']} neurons.")
    keep = torch.as_tensor(keep_list, dtype=torch.long, device="cpu")
    if mlp.get("gate_up"):
        keep_outputs(get_submodule(layer, mlp["gate_up"]), torch.cat([keep, keep + counts["neurons"]]))
    else:
        for name in ("up", "gate"):
            if mlp.get(name):
                keep_outputs(get_submodule(layer, mlp[name]), keep)
    keep_inputs(get_submodule(layer, mlp["down"]), keep)
    new = {**counts, "neurons": len(keep)}
    _update_module_attributes(layer, mlp, _quantities(new, head_dim))
    return new


def prune_experts(
    layer: nn.Module, recipe: dict[str, Any], head_dim: int, keep_experts: Sequence[int], top_k: int
) -> dict[str, int]:
    """Keep only the routed experts ``keep_experts`` of a block's mixture of experts, in place; returns new counts.

    Slices the router's rows (and its bias, if any) and every expert parameter along its expert axis, then updates
    the module attributes the forward reads (``num_experts``). Refuses, before any change, to keep fewer experts
    than the ``top_k`` each token is routed to (top-k over fewer experts fails, or routes a token twice).
    """
    spec = recipe["experts"]
    counts = layer_counts(layer, recipe, head_dim)
    keep_list = sorted({int(e) for e in keep_experts})
    if len(keep_list) < top_k:
        raise ValueError(
            f"refusing to keep {len(keep_list)} experts in a block that routes every token to {top_k}: keep at least "
            f"{top_k} (the top-k experts) of its {counts['experts']}. Lower the experts fraction."
        )
    if keep_list[-1] >= counts["experts"] or keep_list[0] < 0:
        raise IndexError(f"expert index out of range: the block has {counts['experts']} experts.")
    keep = torch.as_tensor(keep_list, dtype=torch.long, device="cpu")
    router = get_submodule(layer, spec["router"])
    for name in ("weight", "bias"):
        rows = getattr(router, name, None)
        if isinstance(rows, nn.Parameter):
            _keep_slices(router, name, 0, keep)
    experts = get_submodule(layer, spec["experts"])
    for name, axis in spec["parameters"].items():
        _keep_slices(experts, name, axis, keep)
    new = {**counts, "experts": len(keep_list)}
    _update_module_attributes(layer, spec, _quantities(new, head_dim))
    return new


def prune_expert_neurons(
    layer: nn.Module, recipe: dict[str, Any], head_dim: int, keep_neurons: Sequence[int]
) -> dict[str, int]:
    """Keep only the neurons ``keep_neurons`` inside a block's experts, in place; returns new counts.

    A neuron of expert ``e`` is index ``e * width + j`` (``width``: neurons of each expert). Every expert keeps
    the same number (its parameters are one 3-D tensor), each its own ones. The experts named must be the block's
    current ones: after experts were removed in the same plan, they are the kept experts in their old numbering
    (the neurons of removed experts went with them), taken in order. Refuses, before any change, a list that
    names another number of experts, keeps different numbers per expert, or empties the experts.
    """
    spec = recipe["experts"]
    counts = layer_counts(layer, recipe, head_dim)
    width = expert_width(layer, recipe)
    by_expert: dict[int, list[int]] = {}
    for neuron in sorted({int(n) for n in keep_neurons}):
        by_expert.setdefault(neuron // width, []).append(neuron % width)
    if len(by_expert) != counts["experts"] or (by_expert and min(by_expert) < 0):
        raise ValueError(
            f"the kept expert neurons name {len(by_expert)} experts, and the block has {counts['experts']}: list "
            f"the neurons (expert * {width} + neuron) that every kept expert keeps."
        )
    kept = {len(neurons) for neurons in by_expert.values()}
    if len(kept) > 1 or kept == {0}:
        raise ValueError(
            f"every expert of a block keeps the same number of neurons, at least one (its weights are one 3-D "
            f"tensor); the plan keeps {sorted(kept)} per expert."
        )
    index = torch.as_tensor([by_expert[e] for e in sorted(by_expert)], dtype=torch.long, device="cpu")
    experts = get_submodule(layer, spec["experts"])
    fused = spec.get("fused_neurons") or []
    for name, axis in spec["neuron_axes"].items():
        rows = torch.cat([index, index + width], dim=1) if name in fused else index  # [gate | up]: both halves
        _keep_slices(experts, name, (spec["parameters"][name], axis), rows)
    new = {**counts, "expert_neurons": counts["experts"] * index.shape[1]}
    _update_module_attributes(layer, spec, _quantities(new, head_dim))
    return new


# ---------------------------------------------------------------------------------------------------------
# Per-head tensors outside the blocks, shared by every block (MPNet's relative attention bias): one slice for
# all blocks, so every block keeps the same heads.
# ---------------------------------------------------------------------------------------------------------


def shared_head_parameter(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module that owns the shared per-head parameter ``path`` (under the base model), and its name."""
    root = getattr(model, "base_model", model)
    owner_path, _, name = path.rpartition(".")
    owner = get_submodule(root, owner_path) if owner_path else root
    if not isinstance(getattr(owner, name, None), nn.Parameter):
        raise AttributeError(
            f"shared head tensor '{path}': {type(owner).__name__} has no parameter '{name}'. Give the parameter's "
            "path under the base model (see `model.base_model.named_parameters()`)."
        )
    return owner, name


def prune_shared_heads(
    model: nn.Module, recipe: dict[str, Any], head_dim: int, keep_heads: Sequence[int], counts: dict[str, int]
) -> None:
    """Keep only the query heads ``keep_heads`` of every shared per-head tensor the recipe declares, in place.

    ``counts`` are the blocks' new counts (the same in every block), for the owners' ``module_attributes``.
    """
    keep = torch.as_tensor(sorted(int(h) for h in keep_heads), dtype=torch.long, device="cpu")
    for entry in recipe["attention"].get("shared_head_tensors") or []:
        owner, name = shared_head_parameter(model, entry["parameter"])
        parameter = getattr(owner, name)
        if parameter.shape[entry["dim"]] == len(keep):
            continue  # already this size
        _keep_slices(owner, name, entry["dim"], keep)
        values = _quantities(counts, head_dim)
        for attribute, quantity in (entry.get("module_attributes") or {}).items():
            setattr(owner, attribute, values[quantity])


# ---------------------------------------------------------------------------------------------------------
# Recording the structure in the config, and rebuilding it when a checkpoint is loaded.
# ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def global_config_access(config: Any) -> Iterator[None]:
    """Let code that assumes a homogeneous model read the global values of a heterogeneous config.

    Model ``__init__`` reads ``config.num_attention_heads`` etc.; hf_prune builds the dense skeleton from the
    global values and then shrinks each layer to its recorded size.
    """
    previous = config.__dict__.get("allow_global_per_layer_attribute_access")
    config.__dict__["allow_global_per_layer_attribute_access"] = True
    # transformers warns on every such read; here they are intended, so keep the user's log clean.
    heterogeneity_logger = logging.getLogger("transformers.integrations.heterogeneity.configuration_utils")
    level = heterogeneity_logger.level
    heterogeneity_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        heterogeneity_logger.setLevel(level)
        if previous is None:
            config.__dict__.pop("allow_global_per_layer_attribute_access", None)
        else:
            config.__dict__["allow_global_per_layer_attribute_access"] = previous


def _config_get(config: Any, name: str, default: Any = None) -> Any:
    getter = getattr(config, "_getattr_without_heterogeneous_validation", None)
    return getter(name, default) if getter else getattr(config, name, default)


def check_format(meta: dict[str, Any], reader_version: str | None = None) -> None:
    """Refuse an ``hf_prune`` config block written in a newer format than this code reads.

    A newer format may record the structure differently; reading it as this one would build a wrong model.
    ``reader_version`` names the reading hf_prune in the error (this file also runs without hf_prune).
    """
    version = meta.get("format_version", 1)
    writer = meta.get("hf_prune_version", "unknown")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(
            f"the checkpoint's config.json has {CONFIG_KEY}.format_version={version!r} (written by hf_prune "
            f"{writer}); a format version is a positive integer. The config was edited or is damaged: save the "
            "pruned model again."
        )
    if version > FORMAT_VERSION:
        reader = "this hf_prune" if reader_version is None else f"this hf_prune ({reader_version})"
        raise ValueError(
            f"this checkpoint was written by hf_prune {writer} with format {version}; {reader} reads formats up "
            f"to {FORMAT_VERSION}: upgrade hf_prune (pip install -U hf-prune)."
        )


def recorded_meta(config: Any, reader_version: str | None = None) -> dict[str, Any] | None:
    """The ``hf_prune`` block of a config (format checked), or ``None`` for an unpruned config."""
    meta = _config_get(config, CONFIG_KEY)
    if not meta:
        return None
    check_format(meta, reader_version)
    return meta


def recorded_structure(config: Any) -> list[dict[str, int]] | None:
    """Per-layer counts recorded in a config by hf_prune, or ``None`` for an unpruned config."""
    meta = recorded_meta(config)
    if meta is None:
        return None
    return [dict(layer) for layer in meta["layers"]]


def restore_attention(layer: nn.Module, recipe: dict[str, Any], head_dim: int, target: dict[str, int]) -> None:
    """Shrink a dense-shaped block's attention to the recorded ``heads`` / ``kv_heads`` (the first of each group)."""
    counts = layer_counts(layer, recipe, head_dim)
    if (target["heads"], target["kv_heads"]) != (counts["heads"], counts["kv_heads"]):
        group = target["heads"] // target["kv_heads"]
        old_group = counts["heads"] // counts["kv_heads"]
        keep_heads = [kv * old_group + i for kv in range(target["kv_heads"]) for i in range(group)]
        prune_attention(layer, recipe, head_dim, keep_heads, list(range(target["kv_heads"])))


def restore_mlp(layer: nn.Module, recipe: dict[str, Any], head_dim: int, target: dict[str, int]) -> None:
    """Shrink a dense-shaped block's MLP to the recorded ``neurons`` (the first ones); nothing without an MLP."""
    if recipe.get("mlp") and target["neurons"] != count_neurons(layer, recipe, head_dim):
        prune_mlp(layer, recipe, head_dim, list(range(target["neurons"])))


def restore_experts(layer: nn.Module, recipe: dict[str, Any], head_dim: int, target: dict[str, int]) -> None:
    """Shrink a dense-shaped block's mixture of experts to the recorded ``experts`` (the first ones); nothing
    without experts. The recorded count was checked against top-k when it was pruned."""
    if recipe.get("experts") and target["experts"] != count_experts(layer, recipe, head_dim):
        prune_experts(layer, recipe, head_dim, list(range(target["experts"])), top_k=1)


def restore_expert_neurons(layer: nn.Module, recipe: dict[str, Any], head_dim: int, target: dict[str, int]) -> None:
    """Shrink each expert of a dense-shaped block to the recorded neurons per expert (the first ones); nothing
    without neurons inside experts, or for a record written before they were counted. Runs after
    :func:`restore_experts`."""
    spec = recipe.get("experts") or {}
    if not spec.get("neuron_axes") or "expert_neurons" not in target or not target["experts"]:
        return  # no neurons inside experts, a record from before they were counted, or the MoE sublayer removed
    width, experts = expert_width(layer, recipe), count_experts(layer, recipe, head_dim)
    kept = target["expert_neurons"] // target["experts"]
    if kept != width:
        prune_expert_neurons(layer, recipe, head_dim, [e * width + j for e in range(experts) for j in range(kept)])


def restore_cross_attention(layer: nn.Module, recipe: dict[str, Any], head_dim: int, target: dict[str, int]) -> None:
    """Shrink a dense-shaped decoder block's cross-attention to the recorded ``cross_heads`` (the first ones);
    nothing in a block without one (an encoder block)."""
    if recipe.get("cross_attention"):
        heads = target["cross_heads"]
        restore_attention(layer, cross_view(recipe), head_dim, {"heads": heads, "kv_heads": heads})


# One restorer per sublayer, in order: the shipped kinds' restore steps (hf_prune/kinds names them), which also run
# without hf_prune (trust_remote_code). hf_prune appends the steps of kinds registered elsewhere.
# A restore step: shrinks a dense-shaped block (layer, its recipe dict, head_dim) to its recorded counts.
Restorer = Callable[[nn.Module, dict[str, Any], int, dict[str, int]], None]

RESTORERS: list[Restorer] = [
    restore_attention,
    restore_cross_attention,
    restore_mlp,
    restore_experts,
    restore_expert_neurons,
]
#: The kinds this file restores on its own (also without hf_prune).
SHIPPED_KINDS = frozenset({"heads", "kv_heads", "cross_heads", "neurons", "experts", "expert_neurons"})
#: The kinds whose recorded counts :data:`RESTORERS` restore: the shipped ones and those hf_prune registered.
RESTORED_KINDS: set[str] = set(SHIPPED_KINDS)


def register_restorer(kind: str, restore: Restorer | None) -> None:
    """Let :func:`restore_structure` restore ``kind``'s recorded counts with ``restore`` (``None``: the kind follows
    another kind's step). hf_prune's kind registry calls it for every kind it registers."""
    if restore is not None and restore not in RESTORERS:
        RESTORERS.append(restore)
    RESTORED_KINDS.add(kind)


def _check_restorable(structure: list[dict[str, int]]) -> None:
    """Refuse a record of kinds no restore step here knows: a kind registered outside hf_prune pruned it, and this
    file (the copy next to a checkpoint, or an hf_prune without that kind's module imported) would build it dense."""
    unknown = sorted({name for layer in structure for name in layer} - RESTORED_KINDS)
    if unknown:
        raise ValueError(
            f"this checkpoint records pruned units of kind(s) {unknown}, registered by a module outside hf_prune; "
            "only hf_prune with that module imported can rebuild it: `import` the module that registers the kind, "
            "then load with hf_prune.from_pretrained(...) (trust_remote_code=True alone cannot)."
        )


def restore_structure(model: nn.Module) -> None:
    """Shrink a freshly built (dense-shaped) model to the structure recorded in its config.

    The kept units are the first ``k`` of each layer: the weights that follow come from the checkpoint,
    which stores the pruned layers compacted.
    """
    config = text_config(model)
    structure = recorded_structure(config)
    if structure is None:
        return
    _check_restorable(structure)
    meta = recorded_meta(config)
    recipe, head_dim = meta["recipe"], meta["head_dim"]
    # Blocks are numbered across the stacks (an encoder's, then a decoder's), each with its own recipe.
    stacks = find_stacks(model, recipe)
    blocks = [(layer, stack) for _, stack, layers in stacks for layer in layers]
    removed = meta.get("removed_sublayers") or {}
    for index, ((layer, stack), target) in enumerate(zip(blocks, structure, strict=True)):
        for part, removed_in in removed.items():  # first: a removed sublayer's kinds then count 0, as recorded
            if index in removed_in:
                remove_sublayer(layer, stack, head_dim, part)
        for restore in RESTORERS:
            restore(layer, stack, head_dim, target)
    start = 0
    for _, stack, layers in stacks:  # a stack's shared per-head tensors, with its first block's heads
        if stack["attention"].get("shared_head_tensors"):
            prune_shared_heads(model, stack, head_dim, range(structure[start]["heads"]), structure[start])
        start += len(layers)
