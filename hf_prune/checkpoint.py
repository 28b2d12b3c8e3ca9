"""Recording a pruned structure in the config, saving atomically, and loading pruned checkpoints.

Two cases:

- **Vanilla-loadable**: every block keeps the same counts and the config can express them (the recipe names
  a ``head_dim_attribute`` that the modeling code reads). The global config fields are updated and plain
  ``AutoModel*.from_pretrained`` loads the checkpoint, with no hf_prune installed.
- **Recorded**: blocks differ, or the head size is derived from ``hidden_size / heads`` (BERT, GPT-2). The
  global fields keep their dense values and the per-layer counts go into transformers' ``per_layer_config``
  (one override dict per layer), next to an ``hf_prune`` block holding the recipe and head size. The model's
  class becomes the structure-restoring subclass from :mod:`hf_prune.modeling_pruned`, whose
  ``save_pretrained`` also writes the loader code and ``auto_map`` for ``trust_remote_code=True``.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import transformers
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers.integrations.heterogeneity import AmbiguousGlobalPerLayerAttributeError

from . import __version__
from .loading import HUB_KWARGS, choose_model_class
from .modeling_pruned import pruned_class
from .structure import ModelStructure
from .surgery import CONFIG_KEY, SHIPPED_KINDS, _config_get, global_config_access, recorded_meta

# What config classes raise when their validation refuses values (strict dataclass validators, __post_init__
# checks, and heterogeneous configs whose global value a validator reads).
CONFIG_ERRORS = (ValueError, TypeError, StrictDataclassError, AmbiguousGlobalPerLayerAttributeError)


def drop_dequantized_marker(model: nn.Module) -> None:
    """Forget the GGUF origin of a model that transformers already dequantized to plain float weights.

    ``save_pretrained`` refuses GGUF-loaded models because of ``config.quantization_config``; after
    dequantization the weights are ordinary tensors, so the pruned model is saved as a plain checkpoint.
    """
    configs = {id(c): c for c in (model.config, model.config.get_text_config())}
    for config in configs.values():
        quant = getattr(config, "quantization_config", None)
        method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
        if str(getattr(method, "value", method)).lower() == "gguf":
            del config.quantization_config
            model.hf_quantizer = None
            model.is_quantized = False


def check_sliceable(model: nn.Module) -> None:
    """Refuse models whose weights are quantized and cannot be sliced (bitsandbytes, GPTQ, AWQ...)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", "unknown")
    method = str(getattr(method, "value", method))
    if method.lower() == "gguf":
        return
    raise TypeError(
        f"this model is quantized with {method}; its weights cannot be sliced. Load it in "
        "float32/float16/bfloat16 (without a quantization_config), prune it, then quantize the pruned model."
    )


def _config_values(structure: ModelStructure, counts: Mapping[str, int], index: int = 0) -> dict[str, int]:
    """``{config attribute: count}`` of every kind the config states a count for (hf_prune.kinds), for block
    ``index`` (its stack's recipe names the attributes) with ``counts``."""
    recipe = structure.recipe_for(index)
    values = {}
    for kind in structure.kinds:
        attribute = kind.config_attribute(recipe) if structure.has(index, kind) else None
        if attribute:
            values[attribute] = kind.config_value(dict(counts))
    return values


def _uniform_config_values(structure: ModelStructure, counts: Sequence[Mapping[str, int]]) -> dict[str, int] | str:
    """The config values that state ``counts`` (one mapping per block, the same within each stack), or why no
    config can: two kinds or stacks that one attribute would have to count differently (Whisper's self- and
    cross-attention heads of a decoder block are both ``decoder_attention_heads``)."""
    values: dict[str, int] = {}
    for start, _ in structure.stack_spans():
        for attribute, value in _config_values(structure, counts[start], start).items():
            if values.setdefault(attribute, value) != value:
                return f"config attribute '{attribute}' would have to hold both {values[attribute]} and {value}"
    return values


def _planned_config(structure: ModelStructure, values: Mapping[str, int]) -> Any:
    """A copy of the config that states these values for every layer (what a vanilla checkpoint would say)."""
    att = structure.recipe.attention
    candidate = copy.deepcopy(structure.config)
    if candidate.is_heterogeneous:
        candidate.per_layer_config = None
    candidate.__dict__.pop("allow_global_per_layer_attribute_access", None)
    for attribute, value in values.items():
        setattr(candidate, attribute, value)
    if att.head_dim_attribute:  # else the head size follows hidden_size / heads, with the heads unchanged
        setattr(candidate, att.head_dim_attribute, structure.head_dim)
    return candidate


def _config_error(build: Callable[[], Any]) -> str | None:
    """What the config class says against the config that ``build`` makes: its own validation, run the way
    saving (``validate()``) and loading (``from_dict``) run it; ``None`` if it accepts it."""
    try:
        config = build()
        reloaded = type(config).from_dict(config.to_dict())
        for candidate in (config, reloaded):
            if hasattr(candidate, "validate"):
                candidate.validate()
    except CONFIG_ERRORS as err:
        cause = err.__cause__ if isinstance(err, StrictDataclassError) and err.__cause__ else err
        return " ".join(str(cause).split())
    return None


def layout_refusal(structure: ModelStructure, counts: Sequence[Mapping[str, int]]) -> str | None:
    """Why a vanilla config cannot describe blocks with these counts (units per kind, one mapping per block), or
    ``None`` when it can (then the checkpoint loads with plain ``from_pretrained``).

    Asked before any surgery. Besides the layers differing and a head size derived from ``hidden_size / heads``,
    the config class itself may refuse the counts (Gemma 3 and Llama want ``hidden_size`` to be a multiple of the
    heads; Phi-3's long-RoPE factors follow ``hidden_size / heads``): its own validation decides, on a copy.
    """
    recipe = structure.recipe
    removed = structure.removed_sublayers
    if removed:
        which = "; ".join(f"{part} of blocks {blocks}" for part, blocks in removed.items())
        return f"blocks without a sublayer ({which} removed), which a config cannot state"
    stacks = structure.stack_spans()
    if any(len({tuple(sorted(c.items())) for c in counts[start : start + n]}) > 1 for start, n in stacks):
        return "the layers keep different counts, which a config without per-layer values cannot state"
    config = structure.config
    for start, _ in stacks:
        att = structure.recipe_for(start).attention
        if att.head_dim_attribute is None and counts[start]["heads"] != _config_get(config, att.heads_attribute):
            return (
                f"recipe '{recipe.name}' derives the head size from hidden_size / heads, which fewer heads would change"
            )
    values = _uniform_config_values(structure, counts)
    if isinstance(values, str):
        return values
    error = _config_error(lambda: _planned_config(structure, values))
    if error is None:
        return None
    heads = counts[0]["heads"]
    return f"{type(config).__name__} refuses {heads} attention heads of size {structure.head_dim}: {error}"


def record_structure(structure: ModelStructure, refusal: str | None) -> bool:
    """Write the model's current per-layer structure into its config; returns True if vanilla-loadable.

    ``refusal`` is :func:`layout_refusal`'s answer for these counts: ``None`` writes the vanilla config fields,
    a reason records the per-layer structure for hf_prune's loader (and says why in the ``hf_prune`` block).
    """
    model, config, recipe = structure.model, structure.config, structure.recipe
    shapes = structure.shapes()
    att = recipe.attention
    vanilla = refusal is None

    if config.is_heterogeneous:
        config.per_layer_config = None
    removed = structure.removed_sublayers
    outside = any(set(s.counts) - SHIPPED_KINDS for s in shapes)  # a kind registered outside hf_prune
    newer = 3 if outside else 2 if removed or any("expert_neurons" in s.counts for s in shapes) else 1
    meta = {
        "format_version": newer,  # the oldest format that holds it: older hf_prune reads it where it can
        "hf_prune_version": __version__,
        "recipe": structure.recipe_dict,
        "head_dim": structure.head_dim,
        "layers": [dict(s.counts) for s in shapes],  # keyed by kind name
        **({"removed_sublayers": removed} if removed else {}),
        "vanilla_loadable": vanilla,
        **({} if vanilla else {"not_vanilla_because": refusal}),
    }
    setattr(config, CONFIG_KEY, meta)
    if vanilla:
        values = _uniform_config_values(structure, [s.counts for s in shapes])
        assert isinstance(values, dict), values  # layout_refusal found no conflict
        for attribute, value in values.items():
            setattr(config, attribute, value)
        if att.head_dim_attribute:
            setattr(config, att.head_dim_attribute, structure.head_dim)
        base = getattr(type(model), "_hf_prune_base", None)
        if base is not None:
            model.__class__ = base
        return True

    # Per-layer entries are keyed by a block's index within its stack (each stack's modeling code counts from 0),
    # so an encoder's and a decoder's block i share one entry: their attributes differ (encoder_ffn_dim and
    # decoder_ffn_dim), and one that both would set differently stays global (the hf_prune block has the counts).
    per_layer: dict[int, dict[str, Any]] = {}
    clashes: set[str] = set()
    for start, blocks in structure.stack_spans():
        for position in range(blocks):
            i = start + position
            # A removed sublayer's counts are 0 here too: then plain from_pretrained refuses the checkpoint
            # (per-layer counts differ) instead of building the removed modules and initialising their missing
            # weights at random.
            overrides: dict[str, Any] = _config_values(structure, shapes[i].counts, i)
            # transformers derives a layer's head size as hidden_size // heads unless head_dim is given.
            overrides["head_dim"] = structure.head_dim
            entry = per_layer.setdefault(position, {})
            clashes |= {name for name, value in overrides.items() if entry.get(name, value) != value}
            entry.update(overrides)
    per_layer = {i: {k: v for k, v in entry.items() if k not in clashes} for i, entry in per_layer.items()}
    with global_config_access(config):
        config.per_layer_config = _reloadable_overrides(config, per_layer)
    model.__class__ = pruned_class(type(model))
    return False


def not_vanilla_because(config: Any) -> str:
    """Why a pruned config needs hf_prune's loader (empty when plain ``from_pretrained`` loads it)."""
    return (recorded_meta(config) or {}).get("not_vanilla_because", "")


def _reloadable_overrides(config: Any, per_layer: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Drop per-layer attributes that this config class cannot reload heterogeneously.

    Some config classes validate global head counts when they are built (Gemma 3 checks
    ``hidden_size % num_attention_heads``), which transformers refuses on a heterogeneous config, and per-layer
    validators may refuse a layer's counts. Such an attribute stays global; the exact counts are in the
    ``hf_prune`` block, which the loader reads.
    """
    per_layer = {i: dict(overrides) for i, overrides in per_layer.items()}

    def error(overrides: dict[int, dict[str, Any]]) -> str | None:
        data = config.to_dict()
        data.pop("allow_global_per_layer_attribute_access", None)
        data["per_layer_config"] = overrides
        return _config_error(lambda: type(config).from_dict(data))

    def without(name: str) -> dict[int, dict[str, Any]]:
        return {i: {k: v for k, v in o.items() if k != name} for i, o in per_layer.items()}

    while any(per_layer.values()):
        message = error(per_layer)
        if message is None:
            return per_layer
        names = list(dict.fromkeys(name for overrides in per_layer.values() for name in overrides))
        named = [name for name in names if f"'{name}'" in message]
        # The attribute the error names; else the first one whose removal alone satisfies the class; else any.
        culprit = named[0] if named else next((n for n in names if error(without(n)) is None), names[0])
        per_layer = without(culprit)
    return {}


def check_output_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"'{path}' exists and is not a directory; choose another output path.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"'{path}' already exists and is not empty; pass overwrite=True (CLI: --overwrite) or choose another "
            "output directory. Nothing was written."
        )


def _relative_name(name: str) -> Path:
    """An ``extra_files`` name as a path inside the checkpoint folder (``1_Pooling/config.json``), never outside."""
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"extra file name {name!r} must be a relative path inside the checkpoint folder.")
    return path


def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike[str],
    tokenizer: Any = None,
    overwrite: bool = False,
    extra_files: dict[str, str | bytes] | None = None,
    **kwargs: Any,
) -> Path:
    """Save a (pruned) model, its tokenizer and extra files atomically.

    Everything is written to a temporary sibling directory that replaces ``save_directory`` in one rename,
    so an interrupted save never leaves a half-written checkpoint (or destroys the previous one).
    ``extra_files`` maps names relative to the folder (subfolders allowed: ``1_Pooling/config.json``) to contents.
    """
    target = Path(save_directory).resolve()
    check_output_dir(target, overwrite)
    extra = {_relative_name(name): content for name, content in (extra_files or {}).items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    drop_dequantized_marker(model)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        for name, content in extra.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(path, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as handle:
                handle.write(content)
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, backup / target.name)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(backup / target.name, target)  # put the previous checkpoint back
                shutil.rmtree(backup, ignore_errors=True)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def from_pretrained(path: str | os.PathLike[str], model_class: type | str | None = None, **kwargs: Any) -> nn.Module:
    """Load a checkpoint (pruned by hf_prune or not) as the transformers class whose weights it holds.

    Args:
        path: local directory or Hub id.
        model_class: optional Auto class (``AutoModelForCausalLM``...) or transformers class, or its name. By
            default the class is read from the checkpoint itself: its ``architectures`` when they hold exactly its
            weights, else the Auto class that does (see :func:`hf_prune.loading.choose_model_class`), so nothing is
            randomly initialised and nothing the checkpoint holds is dropped.
        **kwargs: passed to ``from_pretrained`` (``dtype``, ``device_map``, ``revision``...).

    A checkpoint pruned by transformers 4's ``prune_heads`` (``config.pruned_heads``) loads too, as hf_prune's
    per-layer structure: saving it with :func:`save_pretrained` converts it (CLI: ``hf-prune convert``).

    Raises:
        ModelClassError: ``model_class`` is unknown or does not fit the checkpoint, or no class holds its weights.
        LegacyCheckpointError: ``config.pruned_heads`` disagrees with the model or with the tensors' shapes.
    """
    config = kwargs.pop("config", None) or transformers.AutoConfig.from_pretrained(
        path, **{k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    )
    from .legacy import check_shapes, legacy_pruned_heads, structured_config  # legacy builds on this module

    removed = legacy_pruned_heads(config)
    if removed:  # pruned by transformers 4's prune_heads: read as hf_prune's per-layer structure
        config = structured_config(config)
        check_shapes(path, config, removed, **kwargs)
    meta = recorded_meta(config.get_text_config(), __version__) or {}  # before any weight is read
    cls = choose_model_class(path, config, model_class, **kwargs).cls
    model = pruned_class(cls).from_pretrained(path, config=config, **kwargs)
    if meta.get("vanilla_loadable", True):
        model.__class__ = cls  # the config describes the model: no need for the restoring subclass
    return model
