"""Recipes: where an architecture keeps its heads, neurons and experts, and what to prune by default.

A recipe is a YAML file that maps one-to-one onto :class:`Recipe`. Module paths are relative to one
transformer block; ``layers`` lists candidate paths of the block list under the base model.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .surgery import stack_recipe

QUANTITIES = (
    "heads",
    "kv_heads",
    "kv_groups",
    "head_dim",
    "q_width",
    "kv_width",
    "neurons",
    "experts",
    "expert_neurons",  # neurons of all of a block's experts together
    "expert_width",  # neurons of each expert (every expert of a block keeps the same number)
)


class RecipeError(ValueError):
    """A recipe is malformed, or does not describe the model it is applied to (names the key and the fix)."""


@dataclass
class SharedHeadTensor:
    """A per-head tensor outside the blocks that every block reads (MPNet's and T5's relative attention bias).

    It is sliced with the heads, so every block must keep the same heads: a model with one is pruned with the
    same head indices in every block.
    """

    parameter: str = field(
        metadata={"help": "parameter path under the base model, e.g. encoder.relative_attention_bias.weight"}
    )
    dim: int = field(metadata={"help": "the axis with one entry per query head"})
    module_attributes: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "{attribute: quantity} of the module that owns the parameter, updated after slicing"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 0:
            raise RecipeError(
                f"shared head tensor '{self.parameter}': `dim` must be an axis index >= 0, got {self.dim!r}."
            )
        _check_quantities(f"shared head tensor '{self.parameter}'", {"": self.module_attributes})


@dataclass
class AttentionSpec:
    """Where a block's attention projections live and how its heads are counted."""

    o: str = field(metadata={"help": "output projection (its input columns are grouped by head)"})
    q: str | None = field(default=None, metadata={"help": "query projection"})
    k: str | None = field(default=None, metadata={"help": "key projection"})
    v: str | None = field(default=None, metadata={"help": "value projection"})
    qkv: str | None = field(default=None, metadata={"help": "fused projection laid out as [q | k | v]"})
    heads_attribute: str = field(default="num_attention_heads", metadata={"help": "config: query heads"})
    kv_heads_attribute: str | None = field(default=None, metadata={"help": "config: KV heads (GQA/MQA)"})
    head_dim_attribute: str | None = field(
        default=None,
        metadata={"help": "config attribute the modeling code reads for the head size; unset: hidden/heads"},
    )
    module_attributes: dict[str, dict[str, str]] = field(
        default_factory=dict, metadata={"help": "{module path: {attribute: quantity}} to update after surgery"}
    )
    module_config: dict[str, dict[str, str]] = field(
        default_factory=dict,
        metadata={"help": "{module path: {config attribute: quantity}} for modules reading self.config at run time"},
    )
    bias_attribute: str | None = field(
        default=None,
        metadata={"help": "config flag that gives q/k/v/o a bias (bias compensation needs one on o); unset: none"},
    )
    shared_head_tensors: list[SharedHeadTensor] = field(
        default_factory=list,
        metadata={"help": "per-head tensors outside the blocks, shared by every block, sliced with the heads"},
    )
    heads_fixed_because: str | None = field(
        default=None,
        metadata={
            "help": "why this architecture's heads cannot be removed (heads > 0 is refused with it); unset: they can"
        },
    )
    heads_tied_because: str | None = field(
        default=None,
        metadata={
            "help": "why every block must keep the same heads although no per-head tensor is shared (a block's "
            "forward hands the next one something shaped by its heads); unset: blocks choose their own"
        },
    )

    def __post_init__(self) -> None:
        if self.qkv is None and not (self.q and self.k and self.v):
            raise RecipeError("attention needs either `qkv` (fused) or all of `q`, `k` and `v`.")
        if self.qkv is not None and (self.q or self.k or self.v):
            raise RecipeError("attention: give either `qkv` or `q`/`k`/`v`, not both.")
        _check_quantities("attention", self.module_attributes, self.module_config)
        if not isinstance(self.shared_head_tensors, list):
            raise RecipeError(
                "attention: `shared_head_tensors` is a list of {parameter, dim, module_attributes} entries, got "
                f"{type(self.shared_head_tensors).__name__}."
            )
        self.shared_head_tensors = [
            _build(SharedHeadTensor, entry, "attention shared_head_tensors") if isinstance(entry, dict) else entry
            for entry in self.shared_head_tensors
        ]


@dataclass
class MLPSpec:
    """Where a block's MLP projections live."""

    down: str = field(metadata={"help": "down projection (its input columns are the neurons)"})
    up: str | None = field(default=None, metadata={"help": "up projection"})
    gate: str | None = field(default=None, metadata={"help": "gate projection of a gated MLP"})
    gate_up: str | None = field(default=None, metadata={"help": "fused projection laid out as [gate | up]"})
    intermediate_attribute: str = field(
        default="intermediate_size", metadata={"help": "config attribute holding the number of neurons"}
    )
    module_attributes: dict[str, dict[str, str]] = field(default_factory=dict)
    module_config: dict[str, dict[str, str]] = field(default_factory=dict)
    bias_attribute: str | None = field(
        default=None,
        metadata={"help": "config flag that gives up/gate/down a bias (bias compensation needs one on down)"},
    )

    def __post_init__(self) -> None:
        if (self.up is None) == (self.gate_up is None):
            raise RecipeError("mlp needs exactly one of `up` or `gate_up` (fused).")
        if self.gate_up is not None and self.gate is not None:
            raise RecipeError("mlp: `gate` cannot be combined with the fused `gate_up`.")
        _check_quantities("mlp", self.module_attributes, self.module_config)


@dataclass
class ExpertsSpec:
    """Where a block's mixture of experts lives: the router, the experts' 3-D parameters, and the routing rule.

    transformers stores the experts of one block as 3-D parameters (``gate_up_proj [E, 2I, H]``,
    ``down_proj [E, H, I]``) of one module, and the router as an ``[E, H]`` weight whose forward does softmax and
    top-k itself. Removing an expert slices every one of them along its expert axis. The router's forward returns
    ``(logits, top-k weights, top-k indices)`` and the experts module takes ``(hidden_states, top-k indices, top-k
    weights)``, as transformers 5's ``*TopKRouter`` / ``*Experts`` classes do: masking and the routing criteria
    read them.
    """

    router: str = field(metadata={"help": "router module (its `weight` has one row per expert), e.g. mlp.gate"})
    experts: str = field(metadata={"help": "module holding the experts' 3-D parameters, e.g. mlp.experts"})
    parameters: dict[str, int] = field(
        metadata={"help": "{parameter name of the experts module: its expert axis}, e.g. {gate_up_proj: 0}"}
    )
    count_attribute: str = field(metadata={"help": "config: experts per block (num_local_experts / num_experts)"})
    top_k_attribute: str = field(
        default="num_experts_per_tok", metadata={"help": "config: experts each token is routed to"}
    )
    normalize_top_k: bool | str = field(
        default=True,
        metadata={
            "help": "whether the router renormalises the top-k probabilities: true/false, or the config attribute "
            "that says (norm_topk_prob)"
        },
    )
    module_attributes: dict[str, dict[str, str]] = field(
        default_factory=dict, metadata={"help": "{module path: {attribute: quantity}} to update after surgery"}
    )
    neuron_axes: dict[str, int] = field(
        default_factory=dict,
        metadata={
            "help": "{parameter name: its axis with one entry per neuron of an expert}, e.g. {gate_up_proj: 1, "
            "down_proj: 2}; unset: neurons inside experts are not pruned"
        },
    )
    fused_neurons: list[str] = field(
        default_factory=list,
        metadata={"help": "parameters whose neuron axis holds [gate | up] (two entries per neuron, one width apart)"},
    )
    intermediate_attribute: str | None = field(
        default=None, metadata={"help": "config: neurons of each expert (intermediate_size / moe_intermediate_size)"}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.parameters, dict) or not self.parameters:
            raise RecipeError("experts: `parameters` maps the experts' 3-D parameter names to their expert axis.")
        for name, axis in self.parameters.items():
            if isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis <= 2:
                raise RecipeError(f"experts: parameter '{name}' needs its expert axis (0, 1 or 2), got {axis!r}.")
        if not isinstance(self.normalize_top_k, bool) and not (
            isinstance(self.normalize_top_k, str) and self.normalize_top_k
        ):
            raise RecipeError(
                f"experts: `normalize_top_k` is true, false or a config attribute name, got {self.normalize_top_k!r}."
            )
        _check_quantities("experts", self.module_attributes)
        self._check_neurons()

    def _check_neurons(self) -> None:
        if not isinstance(self.neuron_axes, dict):
            raise RecipeError("experts: `neuron_axes` maps expert parameter names to their neuron axis.")
        for name, axis in self.neuron_axes.items():
            if name not in self.parameters:
                raise RecipeError(
                    f"experts: `neuron_axes` names '{name}', which is not one of `parameters` "
                    f"({list(self.parameters)})."
                )
            if (
                isinstance(axis, bool)
                or not isinstance(axis, int)
                or not 0 <= axis <= 2
                or axis == self.parameters[name]
            ):
                raise RecipeError(
                    f"experts: parameter '{name}' needs its neuron axis (0, 1 or 2, not its expert axis "
                    f"{self.parameters[name]}), got {axis!r}."
                )
        if isinstance(self.fused_neurons, str):
            self.fused_neurons = [self.fused_neurons]
        unknown = [name for name in self.fused_neurons if name not in self.neuron_axes]
        if unknown:
            raise RecipeError(f"experts: `fused_neurons` names {unknown}, which `neuron_axes` does not list.")
        if self.neuron_axes and set(self.neuron_axes) != set(self.parameters):
            raise RecipeError(
                "experts: `neuron_axes` must give the neuron axis of every expert parameter "
                f"({list(self.parameters)}): a neuron is a slice of each of them."
            )


SUBLAYERS = ("attention", "mlp")


@dataclass
class SublayerSpec:
    """How one sublayer of a residual block is removed on its own (``attention_layers=`` / ``mlp_layers=``).

    The block must add the sublayer's output to its residual stream (``out = x + attention(...)``, then
    ``+ mlp(...)``): replacing the module by one that returns zeros then keeps the residual, which is what a block
    without the sublayer computes.
    """

    module: str = field(metadata={"help": "the sublayer's module under the block, replaced on removal (self_attn)"})
    returns: str | list[str | None] = field(
        default="hidden",
        metadata={
            "help": "what its forward returns: 'hidden' (a tensor shaped like its input), or a list such as "
            "[hidden, null] for (output, attention weights)"
        },
    )
    cache: bool = field(
        default=False,
        metadata={"help": "it writes the KV cache: the removed one appends empty keys so sequence lengths stay right"},
    )
    added: str | None = field(
        default=None,
        metadata={"help": "the module whose output the block adds to the residual, if not `module` (a post-norm)"},
    )
    norms: list[str] = field(
        default_factory=list,
        metadata={
            "help": "norms that only this sublayer reads or that only normalise its output (input_layernorm): "
            "removed with it (an identity then stands in)"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.norms, str):
            self.norms = [self.norms]
        returns = [self.returns] if isinstance(self.returns, str) else self.returns
        if (
            not isinstance(returns, list)
            or returns.count("hidden") != 1
            or any(r not in ("hidden", None) for r in returns)
        ):
            raise RecipeError(
                f"depth.sublayers: `returns` is 'hidden' or a list with one 'hidden' and nulls, got {self.returns!r}."
            )


@dataclass
class DepthSpec:
    """How whole blocks are removed: what holds a block's index, and which config values hold one entry per block.

    Removing a block renumbers the blocks after it, and the KV cache finds a block's entries by the index its
    attention module stores (``layer_idx``); per-block config lists (``layer_types``, the sliding-window pattern)
    lose the removed block's entry so that a vanilla ``from_pretrained`` rebuilds the same blocks.
    """

    index_attributes: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "{module path under the block ('' = the block): attribute holding the block's index}"},
    )
    config_lists: list[str] = field(
        default_factory=list, metadata={"help": "config attributes with one entry per block, sliced with the blocks"}
    )
    count_attribute: str = field(default="num_hidden_layers", metadata={"help": "config: the number of blocks"})
    sublayers: dict[str, SublayerSpec] = field(
        default_factory=dict,
        metadata={"help": "{attention | mlp: how that sublayer is removed on its own}; unset: whole blocks only"},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.sublayers, dict) or any(name not in SUBLAYERS for name in self.sublayers):
            raise RecipeError(f"depth: `sublayers` maps {' / '.join(SUBLAYERS)} to how each is removed.")
        self.sublayers = {
            name: spec if isinstance(spec, SublayerSpec) else _build(SublayerSpec, spec, f"depth.sublayers.{name}")
            for name, spec in self.sublayers.items()
        }
        if not isinstance(self.index_attributes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.index_attributes.items()
        ):
            raise RecipeError(
                "depth: `index_attributes` maps module paths to attribute names, e.g. {self_attn: layer_idx}."
            )
        if isinstance(self.config_lists, str):
            self.config_lists = [self.config_lists]


@dataclass
class Targets:
    """Default pruning targets: fractions of each kind's units to remove. A kind registered outside hf_prune is
    given by its name in the same mapping (``targets: {heads: 0.25, adapter_neurons: 0.5}``), kept in ``kinds``."""

    heads: float = 0.0
    neurons: float = 0.0
    experts: float = 0.0
    expert_neurons: float = 0.0
    cross_heads: float = 0.0
    kinds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def named(cls) -> tuple[str, ...]:
        """The kinds whose target is a field of its own (the shipped ones); other kinds' are in ``kinds``."""
        return tuple(f.name for f in fields(cls) if f.name != "kinds")

    def __post_init__(self) -> None:
        for name in self.named():
            check_fraction(name, getattr(self, name))
        registered = _registered_kinds()
        for name, value in self.kinds.items():
            if name not in registered:
                raise RecipeError(
                    f"targets: '{name}' is no registered unit kind (registered: {sorted(registered)}); import the "
                    "module that registers it before loading the recipe, or fix the name."
                )
            check_fraction(name, value)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str) -> Targets:
        """Targets from a recipe's ``targets`` mapping: known fields, and other registered kinds by name."""
        names = set(cls.named())
        unknown = sorted(set(data) - names - _registered_kinds())
        if unknown:
            raise RecipeError(
                f"{source}: unknown key(s) {unknown}; allowed keys are {sorted(names)}, or the name of a registered "
                "unit kind (import the module that registers it before loading the recipe)."
            )
        own = {key: value for key, value in data.items() if key in names}
        return _build(cls, {**own, "kinds": {k: v for k, v in data.items() if k not in names}}, source)

    def fraction(self, kind: str) -> float:
        """The default fraction of ``kind``'s units to remove (0 for a kind the recipe gives none)."""
        return getattr(self, kind) if kind in self.named() else self.kinds.get(kind, 0.0)


def _registered_kinds() -> set[str]:
    from .kinds import registered_kinds  # the registry reads recipes: import it once both exist

    return {kind.name for kind in registered_kinds()}


@dataclass
class GGUFSpec:
    """How llama.cpp represents the architecture: what ``hf-prune export --format gguf`` writes.

    transformers rotates the two halves of each head (NeoX style). llama.cpp architectures with "normal" RoPE rotate
    consecutive pairs instead, so their Q and K rows are permuted on export (``permute_qk``).
    """

    arch: str = field(metadata={"help": "llama.cpp architecture for layouts where every layer keeps the same counts"})
    permute_qk: bool = field(default=False, metadata={"help": "arch rotates consecutive pairs: permute Q/K rows"})
    per_layer_arch: str | None = field(
        default=None,
        metadata={"help": "llama.cpp architecture that reads per-layer head counts and FFN widths (deci); unset: none"},
    )
    per_layer_permute_qk: bool = field(default=True, metadata={"help": "per_layer_arch rotates consecutive pairs"})
    per_layer_missing: str = field(
        default="",
        metadata={"help": "why no llama.cpp architecture can hold this family's non-uniform layouts (for the error)"},
    )
    per_layer_skips: bool = field(
        default=False,
        metadata={
            "help": "per_layer_arch runs a block with 0 heads without attention and one with FFN width 0 without "
            "FFN (deci: Nemotron-NAS's attention-free and FFN-free blocks), so removed sublayers export"
        },
    )

    def __post_init__(self) -> None:
        for name in ("arch", "per_layer_arch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise RecipeError(f"gguf: `{name}` must be a llama.cpp architecture name, got {value!r}.")


@dataclass
class StackSpec:
    """One of several block lists of a model (an encoder-decoder's encoder and decoder).

    The recipe's fields describe a block; a stack names its block list and overrides the fields where its blocks
    differ (their config attributes, a cross-attention only decoder blocks have, other module paths). Blocks are
    numbered across the stacks, in the order given: the first stack's blocks first.
    """

    name: str = field(metadata={"help": "what the card and reports call it (encoder, decoder)"})
    layers: list[str] = field(metadata={"help": "candidate paths of its block list under the base model"})
    overrides: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "recipe fields for its blocks, merged into the recipe's: {attention: {heads_attribute: ...}}; "
            "a section set to null is absent from its blocks (cross_attention: null)"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):
            self.layers = [self.layers]
        if not self.name or not self.layers:
            raise RecipeError("stacks: every stack needs a `name` and its `layers` (the block list's path).")
        if not isinstance(self.overrides, dict):
            raise RecipeError(f"stack '{self.name}': `overrides` maps recipe fields to this stack's values.")
        fixed = sorted(set(self.overrides) & {"name", "model_types", "layers", "stacks", "targets", "gguf"})
        if fixed:
            raise RecipeError(f"stack '{self.name}': {fixed} apply to the whole model and cannot be overridden.")


@dataclass
class Recipe:
    """Everything hf_prune needs to know about one architecture."""

    name: str
    model_types: list[str]
    attention: AttentionSpec
    layers: list[str] = field(
        default_factory=list, metadata={"help": "candidate paths of the block list (unset when `stacks` names them)"}
    )
    mlp: MLPSpec | None = field(default=None, metadata={"help": "the dense MLP; optional when `experts` is given"})
    targets: Targets = field(default_factory=Targets)
    protected_layers: list[int] = field(default_factory=list, metadata={"help": "blocks never pruned"})
    description: str = ""
    gguf: GGUFSpec | None = field(default=None, metadata={"help": "how llama.cpp represents it; unset: no GGUF export"})
    depth: DepthSpec | None = field(
        default=None, metadata={"help": "how whole blocks are removed (layers=...); unset: no depth pruning"}
    )
    experts: ExpertsSpec | None = field(
        default=None, metadata={"help": "the mixture of experts of each block (MoE models); unset: none"}
    )
    cross_attention: AttentionSpec | None = field(
        default=None,
        metadata={
            "help": "a decoder block's attention over the encoder output (its heads are pruned apart from "
            "self-attention's); unset: none"
        },
    )
    stacks: list[StackSpec] = field(
        default_factory=list,
        metadata={"help": "several block lists (encoder and decoder), each with its overrides; unset: one list"},
    )
    kinds: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={
            "help": "sections of unit kinds registered outside hf_prune, by kind name (where their weights are; "
            "each kind reads its own); unset: none"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.attention, dict):
            self.attention = _build(AttentionSpec, self.attention, f"recipe '{self.name}' attention")
        if isinstance(self.cross_attention, dict):
            self.cross_attention = _build(AttentionSpec, self.cross_attention, f"recipe '{self.name}' cross_attention")
        if not isinstance(self.stacks, list):
            raise RecipeError(f"recipe '{self.name}': `stacks` is a list of {{name, layers, overrides}} entries.")
        self.stacks = [
            _build(StackSpec, s, f"recipe '{self.name}' stacks") if isinstance(s, dict) else s for s in self.stacks
        ]
        if isinstance(self.mlp, dict):
            self.mlp = _build(MLPSpec, self.mlp, f"recipe '{self.name}' mlp")
        if isinstance(self.targets, dict):
            self.targets = Targets.from_mapping(self.targets, f"recipe '{self.name}' targets")
        if isinstance(self.gguf, dict):
            self.gguf = _build(GGUFSpec, self.gguf, f"recipe '{self.name}' gguf")
        if isinstance(self.depth, dict):
            self.depth = _build(DepthSpec, self.depth, f"recipe '{self.name}' depth")
        if isinstance(self.experts, dict):
            self.experts = _build(ExpertsSpec, self.experts, f"recipe '{self.name}' experts")
        self._check_kinds()
        if self.mlp is None and self.experts is None and not self.kinds:
            raise RecipeError(
                f"recipe '{self.name}' needs `mlp` (the dense MLP's projections), or `experts` for a "
                "mixture-of-experts model without a dense MLP."
            )
        if isinstance(self.layers, str):
            self.layers = [self.layers]
        if not self.model_types or not (self.layers or self.stacks):
            raise RecipeError(f"recipe '{self.name}' needs non-empty `model_types`, and `layers` or `stacks`.")
        if self.stacks and self.layers:
            raise RecipeError(f"recipe '{self.name}': give `layers` or `stacks` (each with its layers), not both.")
        names = [stack.name for stack in self.stacks]
        if len(set(names)) != len(names):
            raise RecipeError(f"recipe '{self.name}': stack names {names} must differ.")
        for stack in self.stacks:
            self.for_stack(stack.name)  # each stack's blocks must make a valid recipe (errors name the stack)

    def _check_kinds(self) -> None:
        """Refuse a ``kinds`` section that names no registered kind (its module is not imported, or a typo)."""
        registered = _registered_kinds()
        if not isinstance(self.kinds, dict) or not all(isinstance(v, dict) for v in self.kinds.values()):
            raise RecipeError(f"recipe '{self.name}': `kinds` maps kind names to their sections (mappings).")
        unknown = sorted(set(self.kinds) - registered)
        if unknown:
            raise RecipeError(
                f"recipe '{self.name}': kinds {unknown} are not registered (registered: {sorted(registered)}); import "
                "the module that registers them (hf_prune.register_kind) before loading the recipe."
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> Recipe:
        """Build a recipe from its plain-dict (YAML/JSON) form, with errors that name the bad key."""
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: expected a mapping at the top level, got {type(data).__name__}.")
        return _build(cls, data, source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Recipe:
        """Load a recipe from a YAML file."""
        path = Path(path)
        try:
            with path.open(encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            raise RecipeError(f"recipe file '{path}' is not valid YAML: {err}") from None
        return cls.from_dict(data, source=str(path))

    def for_stack(self, name: str) -> Recipe:
        """The single-list recipe of stack ``name``'s blocks: the recipe with the stack's overrides merged in."""
        stack = next((s for s in self.stacks if s.name == name), None)
        if stack is None:
            raise RecipeError(f"recipe '{self.name}' has no stack '{name}'; it has {[s.name for s in self.stacks]}.")
        where = f"recipe '{self.name}' stack '{name}'"
        try:
            return Recipe.from_dict(stack_recipe(self.to_dict(), asdict(stack)), where)
        except RecipeError as err:
            message = str(err)
            raise RecipeError(message if message.startswith(where) else f"{where}: {message}") from None

    def stack_recipes(self) -> list[tuple[str, Recipe]]:
        """``(stack name, its blocks' recipe)`` for every stack, in block order; ``[("", self)]`` with one list."""
        if not self.stacks:
            return [("", self)]
        return [(stack.name, self.for_stack(stack.name)) for stack in self.stacks]

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (what ``surgery`` consumes and what is stored in ``config.json``).

        Fields a recipe does not use (depth, experts, cross-attention, stacks) are left out, so checkpoints that do
        not need them read as before.
        """
        data = asdict(self)
        for optional in ("depth", "experts", "cross_attention"):
            if data[optional] is None:
                del data[optional]
        for optional in ("stacks", "kinds"):
            if not data[optional]:
                del data[optional]
        data["targets"].update(data["targets"].pop("kinds"))  # other kinds' targets by name, as a recipe gives them
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def check_fraction(name: str, value: float) -> None:
    """Raise unless ``value`` is a fraction in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        why = " Removing everything would empty the layers." if isinstance(value, int | float) and value >= 1 else ""
        raise ValueError(f"`{name}` must be a fraction in [0, 1) (0.5 removes half), got {value!r}.{why}")


def _check_quantities(where: str, *mappings: dict[str, dict[str, str]]) -> None:
    for mapping in mappings:
        for attributes in mapping.values():
            for attribute, quantity in attributes.items():
                if quantity not in QUANTITIES:
                    raise RecipeError(
                        f"{where}: attribute '{attribute}' maps to unknown quantity '{quantity}'; "
                        f"choose one of {', '.join(QUANTITIES)}."
                    )


def _build(cls: type, data: dict[str, Any], source: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecipeError(f"{source}: unknown key(s) {unknown}; allowed keys are {sorted(names)}.")
    try:
        return cls(**data)
    except TypeError as err:
        raise RecipeError(f"{source}: {err}") from None


# ---------------------------------------------------------------------------------------------------------
# Shipped recipes.
# ---------------------------------------------------------------------------------------------------------


def recipes_dir() -> Path:
    """Folder of the shipped YAML recipes (inside the wheel, or ``recipes/`` in a source checkout)."""
    packaged = resources.files("hf_prune") / "recipes"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "recipes"


def shipped_recipes() -> dict[str, Recipe]:
    """All shipped recipes by name."""
    return {path.stem: Recipe.from_yaml(path) for path in sorted(recipes_dir().glob("*.yaml"))}


def recipe_for_model_type(model_type: str) -> Recipe:
    """The first shipped recipe that covers ``model_type`` (by name)."""
    return recipes_for_model_type(model_type)[0]


def recipes_for_model_type(model_type: str) -> list[Recipe]:
    """Every shipped recipe that covers ``model_type``, by name: variants of one family may share it (T5 with a
    ReLU or a gated FFN), and the first whose modules a model has describes it (:class:`ModelStructure`)."""
    recipes = shipped_recipes()
    matching = [recipe for recipe in recipes.values() if model_type in recipe.model_types]
    if matching:
        return matching
    raise RecipeError(
        f"no recipe for model_type '{model_type}'. Shipped recipes: {', '.join(sorted(recipes))}. "
        "Write a YAML recipe for it (see 'Adding an architecture' in the README; "
        "`hf-prune recipes --show llama` prints a complete example) and pass recipe='path/to/recipe.yaml'."
    )


def resolve_recipe(recipe: str | os.PathLike[str] | Recipe | dict[str, Any], model_type: str | None) -> Recipe:
    """Turn ``"auto"``, a shipped name, a YAML path, a dict or a Recipe into a :class:`Recipe`."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    text = str(recipe)
    if text == "auto":
        if model_type is None:
            raise RecipeError("recipe='auto' needs a model with `config.model_type`; pass a recipe explicitly.")
        return recipe_for_model_type(model_type)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        if not Path(text).is_file():
            raise FileNotFoundError(f"recipe file '{text}' does not exist.")
        return Recipe.from_yaml(text)
    recipes = shipped_recipes()
    if text not in recipes:
        raise RecipeError(f"unknown recipe '{text}'. Shipped recipes: {', '.join(sorted(recipes))}.")
    return recipes[text]
