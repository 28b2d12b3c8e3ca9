"""One-shot pruning to a target, and the report that says what changed."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .allocation import LayerPlan, Planner, auto_gqa_mode, budget_fractions
from .calibration import CalibrationData, is_causal_lm, prepare_calibration
from .checkpoint import check_sliceable, drop_dequantized_marker, layout_refusal, not_vanilla_because, record_structure
from .config import COST_MEASURES, DEPTH_FRACTIONS, PruningConfig
from .depth import (
    SUBLAYER_CRITERIA,
    blocks_to_remove,
    check_depth_recipe,
    check_sublayer_recipe,
    plan_depth,
    plan_sublayers,
    remove_blocks,
    remove_sublayers,
    sublayers_to_remove,
)
from .flops import Cost, UnitCosts, measure_cost, unit_costs
from .importance import Importance, Scores, calibrate, get_importance, importances_for
from .kinds import own_fraction_kinds
from .latency import measure_latency
from .latency_table import LatencyTable, measure_latency_table, meet_latency
from .masks import MaskSet
from .recipe import RecipeError
from .reconstruct import Reconstruction, SublayerPlan
from .structure import LayerShape, ModelStructure
from .surgery import prune_shared_heads
from .verify import check_pruned, masked_reference, probe_inputs

logger = logging.get_logger(__name__)

# PruningConfig fields that only the gradual callback uses: a one-shot report must not claim a schedule.
GRADUAL_FIELDS = ("schedule", "begin", "end", "update_every", "ema_beta", "compact")


@dataclass
class PruningReport:
    """What a pruning run removed and what it cost and gained (all figures measured on the model)."""

    model_type: str
    recipe: str
    config: dict[str, Any]
    head_dim: int
    layers_before: list[dict[str, int]]
    layers_after: list[dict[str, int]]
    before: Cost
    after: Cost
    vanilla_loadable: bool
    kept: list[dict[str, list[int]]] = field(default_factory=list)  # indices kept per layer (original numbering)
    extra: dict[str, Any] = field(default_factory=dict)
    not_vanilla_because: str = ""  # why the checkpoint needs hf_prune's loader (empty when vanilla-loadable)
    # Whole blocks removed (original numbering); their layers_after entries count zero heads and neurons.
    removed_layers: list[int] = field(default_factory=list)
    # How the blocks are named where the model has several block lists ("encoder 0", "decoder 0"); empty: numbered.
    block_names: list[str] = field(default_factory=list)

    @property
    def parameter_ratio(self) -> float:
        return self.after.parameters / self.before.parameters

    @property
    def flops_ratio(self) -> float:
        """Dense FLOPs / pruned FLOPs per token of the whole model as loaded and saved (the theoretical speedup)."""
        return self.before.flops_per_token / self.after.flops_per_token

    @property
    def block_flops_ratio(self) -> float:
        """Dense FLOPs / pruned FLOPs per token of the attention + MLP blocks alone."""
        return self.before.block_flops_per_token / self.after.block_flops_per_token

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["parameter_ratio"] = self.parameter_ratio
        data["flops_ratio"] = self.flops_ratio
        data["block_flops_ratio"] = self.block_flops_ratio
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningReport:
        fields = {k: v for k, v in data.items() if k not in ("parameter_ratio", "flops_ratio", "block_flops_ratio")}
        fields["before"], fields["after"] = Cost(**data["before"]), Cost(**data["after"])
        return cls(**fields)

    def summary(self) -> str:
        """A short human-readable table."""
        lines = [
            f"recipe {self.recipe} ({self.model_type}), head_dim {self.head_dim}",
            f"parameters: {self.before.parameters:,} -> {self.after.parameters:,} ({self.parameter_ratio:.1%})",
            f"FLOPs/token @ {self.after.seq_len}: {self.before.flops_per_token:,} -> {self.after.flops_per_token:,}"
            f" (theoretical speedup x{self.flops_ratio:.2f})",
            f"attention+MLP blocks: parameters {self.before.block_parameters:,} -> {self.after.block_parameters:,},"
            f" FLOPs/token {self.before.block_flops_per_token:,} -> {self.after.block_flops_per_token:,}"
            f" (x{self.block_flops_ratio:.2f})",
        ]
        kinds = list(self.layers_before[0]) if self.layers_before else []  # units per kind, in table order
        widths = {kind: max(len(kind), 2 * len(str(max(b[kind] for b in self.layers_before))) + 1) for kind in kinds}
        names = self.block_names or [str(i) for i in range(len(self.layers_before))]
        width = max(5, *(len(name) for name in names))
        lines.append("  ".join(["layer".rjust(width), *(kind.rjust(widths[kind]) for kind in kinds)]))
        for i, (b, a) in enumerate(zip(self.layers_before, self.layers_after, strict=True)):
            if i in self.removed_layers:
                lines.append(f"{names[i]:>{width}}  block removed")
                continue
            lines.append("  ".join([names[i].rjust(width), *(f"{a[k]}/{b[k]}".rjust(widths[k]) for k in kinds)]))
        lines.append(
            "loads with plain transformers from_pretrained"
            if self.vanilla_loadable
            else "loads with hf_prune.from_pretrained, or transformers with trust_remote_code=True"
            + (f" (per-layer structure recorded: {self.not_vanilla_because})" if self.not_vanilla_because else "")
        )
        return "\n".join(lines)


def _shape_dicts(shapes: Sequence[LayerShape]) -> list[dict[str, int]]:
    return [dict(s.counts) for s in shapes]


def layers_entries(structure: ModelStructure, removed: Sequence[int]) -> list[dict[str, int]]:
    """The report's ``layers_after``: counts per kind of every original block (zeros for removed blocks)."""
    empty = {kind.name: 0 for kind in structure.kinds}
    return in_original_numbering(_shape_dicts(structure.shapes()), removed, empty)


def kept_entries(structure: ModelStructure, plans: Sequence[LayerPlan], removed: Sequence[int]) -> list[Any]:
    """The report's ``kept``: ``keep_<kind>`` indices of every original block (empty for removed blocks)."""
    empty: dict[str, list[int]] = {f"keep_{kind.name}": [] for kind in structure.kinds}
    return in_original_numbering([plan.to_dict() for plan in plans], removed, empty)


def in_original_numbering(per_kept: Sequence[Any], removed: Sequence[int], empty: Any) -> list[Any]:
    """Per-block entries of the blocks that remain, spread back over the original blocks (``empty`` for removed)."""
    entries, gone = iter(per_kept), set(removed)
    return [empty if i in gone else next(entries) for i in range(len(per_kept) + len(removed))]


def sublayer_plans(structure: ModelStructure, index: int, plan: LayerPlan) -> tuple[SublayerPlan, ...]:
    """Block ``index``'s plan per part (``(attention, MLP)``, one per leading kind): what stays, and the surgery that
    removes the rest."""
    counts, layer = structure.shape(index).counts, structure.layers[index]
    subplans = []
    for leader in structure.leaders:
        part = structure.part(leader)
        changes = any(len(plan.keep[k.name]) != counts[k.name] for k in part)
        keep = {k.name: plan.keep[k.name] for k in part}
        # A kind that follows the leader (KV heads) spans a run of its units: each run keeps its count.
        followers = [k for k in part if k.follows == leader.name and counts[k.name]]
        size = counts[leader.name] // counts[followers[0].name] if followers else counts[leader.name]
        subplans.append(
            SublayerPlan(
                keep_units=plan.keep[leader.name] if changes else list(range(counts[leader.name])),
                units=counts[leader.name],
                remove=partial(leader.remove, layer, structure.recipe_dict_for(index), structure.head_dim, keep),
                groups=[list(range(start, start + size)) for start in range(0, counts[leader.name], max(size, 1))],
                fixed=leader.name == "heads" and bool(structure.recipe_for(index).attention.shared_head_tensors),
            )
        )
    return tuple(subplans)


def stack_block_names(structure: ModelStructure) -> list[str]:
    """The report's block names of a model with several block lists (``encoder 0``...); empty for one list."""
    return [structure.block_name(i) for i in range(structure.num_layers)] if len(structure.stacks) > 1 else []


def apply_plan(
    structure: ModelStructure, plans: Sequence[LayerPlan], reconstruction: Reconstruction | None = None
) -> bool:
    """Physically remove everything the plans do not keep; returns True if the result is vanilla-loadable.

    With ``reconstruction``, each output projection that loses units is first reconstructed on its calibration
    data, block by block (:mod:`hf_prune.reconstruct`); what was done per block lands in ``reconstruction.log``.
    Before any surgery the layout of the checkpoint is chosen: vanilla config fields where the config class
    accepts the planned counts, else the recorded per-layer structure. After surgery the pruned model is run
    once against the masked one (:mod:`hf_prune.verify`): if it fails or disagrees, :class:`PrunedModelError`
    says why, before anything can be written.
    """
    check_sliceable(structure.model)
    model, head_dim = structure.model, structure.head_dim
    subplans = [sublayer_plans(structure, i, plan) for i, plan in enumerate(plans)]
    changed = [sub for pair in subplans for sub in pair if len(sub.keep_units) != sub.units]
    shared = structure.shared_head_tensors()
    for blocks, entry in shared:
        if len({tuple(plans[i].keep_heads) for i in blocks}) > 1:
            raise ValueError(
                f"recipe '{structure.recipe.name}' declares a per-head tensor shared by blocks {list(blocks)} "
                f"({entry.parameter}): they must keep the same heads. Plan with hf_prune's allocation (it ties the "
                "heads of such models), or give those blocks the same keep_heads."
            )
    for i, plan in enumerate(plans):  # before any surgery: the model stays untouched when a kind refuses
        for kind in structure.leaders:
            kind.check_plan(structure, i, plan.keep)
    refusal = layout_refusal(structure, [p.counts() for p in plans])
    masks = MaskSet(structure)
    masks.set_from_plan(plans)
    if reconstruction is not None:
        # Kinds masked without a gated input (experts, at the router) are masked while the blocks are reconstructed,
        # so each block is fed what the pruned blocks before it compute; the others are zeroed by the reconstruction.
        masks.attach(kinds=[kind.name for kind in structure.leaders if not kind.gated])
        try:
            reconstruction.run(structure, subplans)  # the model stays dense-shaped (masked) until the surgery below
        finally:
            masks.detach()
        masks.set_from_plan(plans)  # the reconstruction may have chosen other units (the same counts)
    probe, reference = (probe_inputs(model), None) if changed else (None, None)
    if probe is not None:
        masks.attach()
        try:
            reference = masked_reference(model, probe)  # None (with a warning) if this model cannot be probed
        finally:
            masks.detach()
    for sub in changed:
        sub.remove()
    for start, _ in structure.stack_spans():  # each stack's shared tensors, with its first block's heads
        if structure.recipe_for(start).attention.shared_head_tensors:
            stack = structure.recipe_dict_for(start)
            prune_shared_heads(model, stack, head_dim, plans[start].keep_heads, dict(structure.shape(start).counts))
    if probe is not None and reference is not None:
        check_pruned(model, probe, reference, structure.recipe.name)
    drop_dequantized_marker(model)
    return record_structure(structure, refusal)


def check_head_tensors(structure: ModelStructure, prunes_heads: bool, protected: Sequence[int]) -> None:
    """Refuse head pruning that would leave a per-head tensor outside the blocks stale, before any work: one the
    recipe does not declare, or a declared shared one with protected layers (they would keep heads the others
    lose, and the one tensor cannot have both)."""
    if not prunes_heads:
        return
    recipe = structure.recipe
    undeclared = structure.undeclared_head_tensors()
    if undeclared:
        raise RecipeError(
            f"{type(structure.model).__name__} has parameter(s) outside the blocks with one entry per attention head "
            f"that recipe '{recipe.name}' does not describe: {', '.join(undeclared)}. Removing heads would leave them "
            "with the old head count and the pruned model would fail. If such a tensor is shared by every layer "
            "(a relative attention bias), declare it under `attention.shared_head_tensors` in the recipe (see "
            "'Adding an architecture' in the README); or prune neurons only (heads=0, CLI: --heads 0)."
        )
    shared = structure.shared_head_tensors()
    if shared and protected:
        raise ValueError(
            f"recipe '{recipe.name}' declares per-head tensors shared by every block "
            f"({', '.join(e.parameter for _, e in shared)}), so every block keeps the same "
            f"heads; protected layers {list(protected)} would keep heads that the others lose. Protect no layer, or "
            "prune neurons only (heads=0)."
        )


def _depth_given(config: PruningConfig) -> bool:
    """Whether the config removes whole blocks or sublayers."""
    return any(getattr(config, name) for name in DEPTH_FRACTIONS)


def _sublayer_fractions(config: PruningConfig) -> dict[str, float]:
    """``{"attention" | "mlp": fraction of blocks that lose that sublayer}``, for the ones asked for."""
    fractions = {"attention": config.attention_layers, "mlp": config.mlp_layers}
    return {part: fraction for part, fraction in fractions.items() if fraction}


def _width_given(config: PruningConfig) -> bool:
    """Whether the config sets any width target (heads, neurons, a kind removed by its own fraction, or a cost)."""
    own = [kind.name for kind in own_fraction_kinds()]
    return any(config.fraction(name) is not None for name in ("heads", "neurons", *own)) or any(
        getattr(config, name) is not None for name in COST_MEASURES
    )


def check_sublayers_request(
    config: PruningConfig, structure: ModelStructure, fractions: dict[str, float], protected: Sequence[int]
) -> None:
    """Refuse, before calibration, sublayer removal that cannot be done: a recipe without ``depth.sublayers`` for
    the part, a fraction that empties every block of it, a cost target (it would be met before the sublayers go)."""
    check_sublayer_recipe(structure, list(fractions))
    for part, fraction in fractions.items():
        sublayers_to_remove(fraction, structure.num_layers, part, protected)
    if config.cost_target is not None:
        raise ValueError(
            "attention_layers= / mlp_layers= with a flops/params/latency target is not supported: the target is met "
            "by heads and neurons before any sublayer goes. Give heads/neurons fractions with them, or a cost target "
            "alone."
        )
    if config.layer_importance not in SUBLAYER_CRITERIA:
        raise ValueError(
            f"sublayers are scored by {' or '.join(SUBLAYER_CRITERIA)}; layer_importance={config.layer_importance!r} "
            "ranks spans of whole blocks. Set layer_importance='block_influence' (or 'loss')."
        )


def _without_removed_parts(plan: LayerPlan, shape: LayerShape) -> LayerPlan:
    """``plan`` with no units kept of the kinds a removed sublayer took from the block (they count 0 now)."""
    return LayerPlan(keep={kind: units if shape[kind] else [] for kind, units in plan.keep.items()})


def check_protected_layers(protected: Sequence[int], num_layers: int) -> None:
    """Refuse protected layer indices that the model does not have (they would be ignored silently)."""
    for index in protected:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_layers:
            raise ValueError(
                f"protected layer {index!r} does not exist (the model has {num_layers}); protected_layers takes "
                f"block indices from 0 to {num_layers - 1}."
            )


def resolve_targets(config: PruningConfig, structure: ModelStructure) -> tuple[float, float, list[int]]:
    """Fractions and protected layers, falling back to the recipe's defaults where the config is unset.

    Every path that prunes (``prune()``, and ``PruningCallback`` when it sets up) resolves its targets here, so
    out-of-range protected layers, and head pruning that per-head tensors outside the blocks forbid, are refused
    the same way everywhere.
    """
    targets = structure.recipe.targets
    # A depth target alone removes only blocks; the recipe's width defaults apply when nothing is given at all.
    defaults = (0.0, 0.0) if _depth_given(config) and not _width_given(config) else (targets.heads, targets.neurons)
    heads = defaults[0] if config.heads is None else config.heads
    neurons = defaults[1] if config.neurons is None else config.neurons
    protected = structure.recipe.protected_layers if config.protected_layers is None else config.protected_layers
    check_protected_layers(protected, structure.num_layers)
    cost_target = config.cost_target is not None
    fixed = structure.recipe.attention.heads_fixed_because
    if fixed and heads > 0:
        raise ValueError(
            f"recipe '{structure.recipe.name}' cannot remove attention heads: {fixed}. Set heads=0 (CLI: --heads 0) "
            "and prune other units (experts=..., neurons=...)."
        )
    check_head_tensors(structure, heads > 0 or (cost_target and config.heads is None and not fixed), protected)
    for name, value in {"neurons": neurons, **resolve_fixed(config, structure)}.items():
        if value > 0 and not any(kind.name == name for kind in structure.kinds):
            raise ValueError(
                f"recipe '{structure.recipe.name}' has no {name} to remove ({name}={value}); it prunes "
                f"{', '.join(k.label for k in structure.leaders)}. Set {name}=0 or use another recipe."
            )
    return heads, neurons, list(protected)


def resolve_fixed(config: PruningConfig, structure: ModelStructure) -> dict[str, float]:
    """The fractions of the kinds removed by their own fraction (:func:`hf_prune.kinds.own_fraction_kinds`: each MoE
    block's experts, the neurons inside each expert, cross-attention heads, kinds registered elsewhere): the
    config's, else the recipe's defaults (none for a depth target alone). Every path that prunes reads them here, as
    it reads heads and neurons from :func:`resolve_targets`."""
    own = {kind.name for kind in own_fraction_kinds()}
    unknown = sorted(set(config.kinds or {}) - own)
    if unknown:
        raise ValueError(
            f"kinds={unknown}: no registered kind of that name is removed by its own fraction (those are "
            f"{sorted(own)}); import the module that registers it (hf_prune.register_kind), or fix the name."
        )
    depth_only = _depth_given(config) and not _width_given(config)
    fractions = {}
    for kind in own_fraction_kinds():
        value = config.fraction(kind.name)
        fractions[kind.name] = (
            value if value is not None else 0.0 if depth_only else structure.recipe.targets.fraction(kind.name)
        )
    return fractions


def resolve_experts(config: PruningConfig, structure: ModelStructure) -> float:
    """The fraction of each MoE block's experts to remove (:func:`resolve_fixed`)."""
    return resolve_fixed(config, structure)["experts"]


def plan_for(
    structure: ModelStructure,
    scores: Scores,
    config: PruningConfig,
    progress: float = 1.0,
    masked: dict[str, Sequence[torch.Tensor]] | None = None,
    before: Cost | None = None,
    latency: LatencyTable | None = None,
) -> list[LayerPlan]:
    """The plan that reaches ``progress`` (0..1) of the config's target on ``structure``'s current blocks.

    The target is either fractions of heads and neurons, or a fraction of the blocks' FLOPs or parameters
    (``config.flops`` / ``config.params``), which the allocator meets as closely as the granularity allows.
    Either way ``progress`` scales the head and the neuron fraction of the full target: for a cost target,
    those that meet it on the current scores. (Solving each partial cost target on its own let the fine
    neurons fill it at every update, until no coarse head unit fitted any more and the full target was out of
    reach without bringing masked groups back.) ``masked[kind]`` holds, per block, the units already removed.
    MoE experts and the neurons inside them are removed by their own fractions (``config.experts``,
    ``config.expert_neurons``, scaled by ``progress`` too), which a cost target counts but does not choose.
    ``before``: the cost of the blocks ``structure.shapes()`` describe, when that is not the model's current one
    (the callback's compaction plans on the shapes the model had).
    ``latency``: the measured table a ``config.latency`` target is met on (:mod:`hf_prune.latency_table`).
    """
    heads, neurons, protected = resolve_targets(config, structure)
    # Experts and the neurons inside them do not trade against a cost target.
    fixed = {name: fraction * progress for name, fraction in resolve_fixed(config, structure).items()}
    # Heads stay whole where the recipe forbids removing them, or where the criterion does not score them (a cost
    # target would otherwise spend its budget on heads ranked by nothing; a heads fraction is refused below).
    heads_stay = bool(structure.recipe.attention.heads_fixed_because) or "heads" not in scores
    if structure.recipe.attention.heads_fixed_because:
        heads = 0.0
    masked = masked or {}
    scores = _scores_for_targets(structure, scores, {"heads": heads, "neurons": neurons, **fixed})
    # One request per leading kind, built once: a cost target plans hundreds of times on the same scores.
    requests = {
        kind.name: kind.plan_request(structure, scores[kind.name], 0.0, config, masked.get(kind.name))
        for kind in structure.leaders
    }

    planner = Planner(list(requests.values()), config.ranking, protected)

    def plan(fractions: dict[str, float]) -> list[LayerPlan]:
        return planner.plan({**fixed, **fractions})

    if config.cost_target is not None:
        measure, cost_target = config.cost_target
        shapes = structure.shapes()
        costs: UnitCosts | LatencyTable
        if measure == "latency":
            if latency is None:
                raise ValueError("a latency target needs its measured table (hf_prune.latency_table).")
            costs, total = latency, latency.dense_ms
        else:
            costs = unit_costs(structure, measure, config.flops_seq_len)
            cost = before or measure_cost(structure, config.flops_seq_len)
            total = cost.block_flops_per_token if measure == "flops" else cost.block_parameters

        def removed_fraction(kept: list[dict[str, int]]) -> float:
            removed = sum(costs.removed(s.counts, k) for s, k in zip(shapes, kept, strict=True))
            return removed / total

        # The coarse heads on a grid, the fine neurons completing each (allocation.budget_fractions), on counts.
        heads, neurons = budget_fractions(
            lambda h, n: planner.counts({**fixed, "heads": h, "neurons": n}),
            removed_fraction,
            cost_target,
            0.0 if heads_stay else config.heads,
        )
    return plan({"heads": heads * progress, "neurons": neurons * progress})


def _scores_for_targets(structure: ModelStructure, scores: Scores, fractions: dict[str, float]) -> Scores:
    """``scores`` with every leading kind present: a criterion may score only some kinds (router statistics score
    experts; gate criteria do not). A kind it leaves out is refused when something of it is to be removed, naming
    the criteria that score it, and otherwise gets neutral scores (nothing of it is removed)."""
    complete = Scores(dict(scores))
    for kind in structure.leaders:
        if kind.name in complete:
            continue
        if fractions.get(kind.name, 0.0) > 0:
            raise ValueError(
                f"the importance criterion does not score {kind.label}, and {kind.name}={fractions[kind.name]} removes "
                f"some. Criteria that score {kind.label}: {', '.join(importances_for(kind))}."
            )
        complete[kind.name] = [torch.ones(s[kind.name]) for s in structure.shapes()]
    return complete


# What the decoder benchmark measured for magnitude scores (benchmarks/README.md), for the warning.
MAGNITUDE_ON_DECODERS = (
    "magnitude scores destroy causal LMs one-shot: SmolLM2-135M with 20% fewer block parameters went from "
    "perplexity 43 to 76,094 on held-out text. Leave importance='auto' (calibrated, self-generated data if you "
    "give none) or prune while training with PruningCallback."
)


def resolve_importance(
    name: str, model: nn.Module, calibration: CalibrationData | None, reconstructs: bool = True
) -> str:
    """The criterion ``'auto'`` stands for: the best measured one the data allows (benchmarks/README.md)."""
    if name != "auto":
        return name
    if calibration is None:
        return "magnitude"
    if is_causal_lm(model):
        return AUTO_CAUSAL_LM if reconstructs or not calibration.self_generated else AUTO_SELF_GENERATED_BARE
    labelled = all("labels" in batch for batch in calibration.batches)
    return AUTO_LABELLED if labelled else AUTO_UNLABELLED


# The defaults behind importance='auto' (README, "One-shot pruning without retraining"): Taylor was the best
# causal-LM criterion with reconstruction in benchmarks/quality_oneshot.py, on the plays and on self-generated
# text. Without reconstruction, on text the model sampled itself, Fisher: there the expected loss gradient is zero
# (the score-function identity), so Taylor's summed-gradient scores are noise (SmolLM2 at 20%: perplexity 805 vs
# Fisher's 117). Fisher is the best one-shot criterion on MiniLM-L6 with labels, and activation the best data-only
# one on SmolLM2 without reconstruction (benchmarks/quality_encoder.py, quality_decoder.py).
AUTO_CAUSAL_LM = "taylor"
AUTO_SELF_GENERATED_BARE = "fisher"
AUTO_LABELLED = "fisher"
AUTO_UNLABELLED = "activation"


def calibration_needs(config: PruningConfig, fitted: bool = False) -> tuple[list[str], bool]:
    """What requires calibration data (named, for the error), and whether the run wants any at all."""
    required_by = []
    if not fitted and config.importance != "auto" and get_importance(config.importance).accumulates:
        required_by.append(f"importance '{config.importance}'")
    if config.reconstruct:
        required_by.append("reconstruct=True")
    if config.layers:
        required_by.append(f"layers={config.layers} (layer_importance '{config.layer_importance}')")
    for part, fraction in _sublayer_fractions(config).items():
        required_by.append(f"{part}_layers={fraction}")
    wanted = bool(required_by) or config.reconstruct is None or (config.importance == "auto" and not fitted)
    return required_by, wanted


def gather_calibration(
    model: nn.Module, config: PruningConfig, calibration: Any, tokenizer: Any, fitted: bool
) -> CalibrationData | None:
    """The calibration data of this run: what was given, else text the model samples itself, else ``None``
    where nothing needs data (or nothing requires it and the model cannot generate: then it warns).

    ``fitted``: the criterion came already fitted, so only reconstruction may want data.
    """
    data = calibration if calibration is not None else config.calibration_data
    required_by, wanted = calibration_needs(config, fitted)
    if data is None and not wanted:
        return None
    if data is None and not is_causal_lm(model):
        if required_by:
            verb = "needs" if len(required_by) == 1 else "need"
            without = "" if config.layers else ", or use importance='magnitude' with reconstruct=False"
            raise ValueError(
                f"{' and '.join(required_by)} {verb} calibration data, and {type(model).__name__} cannot generate its "
                f"own: pass calibration=... (CLI: --calibration-data FILE){without}."
            )
        warnings.warn(
            f"{type(model).__name__} is not a causal LM, so it cannot calibrate itself, and no calibration data was "
            "given: pruning by weight magnitude, without reconstruction. Give data (calibration=... / "
            "--calibration-data FILE) for a calibrated criterion and reconstruction.",
            UserWarning,
            stacklevel=3,
        )
        return None
    return prepare_calibration(
        model,
        data,
        tokenizer,
        split=config.calibration_split,
        column=config.calibration_column,
        samples=config.calibration_samples,
        seq_len=config.calibration_seq_len,
        batch_size=config.calibration_batch_size,
        seed=config.seed,
    )


def width_after_depth(
    config: PruningConfig, dense: Cost, structure: ModelStructure, removed: Sequence[int], protected: Sequence[int]
) -> PruningConfig:
    """The width part of ``config`` on the blocks that remain after removing ``removed``.

    Protected layers are renumbered. A cost target counts the dense model's blocks, the removed ones included: the
    width pruning that follows removes only what the depth pruning left of it.
    """
    kept = [i for i in range(len(removed) + structure.num_layers) if i not in set(removed)]
    width = config.replace(layers=None, protected_layers=[kept.index(i) for i in protected if i in kept])
    if not _width_given(config):
        # A depth target alone: no width defaults from the recipe.
        return width.with_fractions(dict.fromkeys(["heads", "neurons", *(k.name for k in own_fraction_kinds())], 0.0))
    target = config.flops if config.flops is not None else config.params
    if target is None:
        return width
    kind = "flops" if config.flops is not None else "params"
    now = measure_cost(structure, config.flops_seq_len)
    total, left = (
        (dense.block_flops_per_token, now.block_flops_per_token)
        if kind == "flops"
        else (dense.block_parameters, now.block_parameters)
    )
    rest = (target * total - (total - left)) / left
    if rest <= 0:
        if rest < -0.005:
            warnings.warn(
                f"removing {len(removed)} blocks already takes {1 - left / total:.1%} of the blocks' {kind}, more than "
                f"the {kind}={target} target: no heads or neurons are removed. Lower layers= to meet the target.",
                UserWarning,
                stacklevel=3,
            )
        own = {k.name: config.fraction(k.name) or 0.0 for k in own_fraction_kinds()}
        return width.replace(**{kind: None}).with_fractions({"heads": 0.0, "neurons": 0.0, **own})
    return width.replace(**{kind: rest})


def latency_entry(
    table: LatencyTable, target: float, before: Sequence[dict[str, int]], structure: ModelStructure
) -> dict[str, Any]:
    """The report's record of a latency target: what was asked, what the table predicted and what the pruned model
    measures, on the same device and input size."""
    counts = [dict(s.counts) for s in structure.shapes()]
    measured = measure_latency(structure.model, table.batch_size, table.seq_len).median_ms
    return {
        "target_removed": target,
        "dense_ms": round(table.dense_ms, 3),
        "predicted_ms": round(table.predicted_ms(counts, list(before)), 3),
        "measured_ms": round(measured, 3),
        "measured_removed": round(1 - measured / table.dense_ms, 4),
        "table": table.to_dict(),
    }


def prune(
    model: nn.Module,
    config: PruningConfig | None = None,
    *,
    calibration: Any = None,
    tokenizer: Any = None,
    **overrides: Any,
) -> PruningReport:
    """Remove a fraction of attention heads, MLP neurons and MoE experts from ``model``, in place.

    Example::

        report = hf_prune.prune(model, params=0.2)                         # causal LM: self-calibrated
        report = hf_prune.prune(model, flops=0.4, calibration=texts, tokenizer=tokenizer)
        report = hf_prune.prune(model, heads=0.3, neurons=0.3, importance="magnitude", reconstruct=False)
        report = hf_prune.prune(model, layers=0.25)                        # whole blocks (Block Influence)
        report = hf_prune.prune(moe_model, experts=0.25)                   # a quarter of each MoE block's experts
        print(report.summary())

    Args:
        model: a transformers model of an architecture with a recipe.
        config: a :class:`PruningConfig`; keyword ``overrides`` replace its fields. ``importance`` may also be
            an :class:`Importance` instance that was already fitted (see :func:`hf_prune.calibrate`).
        calibration: calibration data: ready batches, a list of texts, a ``datasets.Dataset``, a file, folder or
            Hub dataset id, or a :class:`~hf_prune.calibration.CalibrationData`. Unset: ``config.calibration_data``,
            else a causal LM generates its own (seeded by ``config.seed``).
        tokenizer: the model's tokenizer, to tokenize calibration text.
    """
    criterion = overrides.get("importance")
    if isinstance(criterion, Importance):
        overrides["importance"] = criterion.name
    else:
        criterion = None
    config = (config or PruningConfig()).replace(**overrides)
    requested = config  # what the user asked for (the report's record); depth pruning rewrites the width part
    check_sliceable(model)
    structure = ModelStructure(model, config.recipe)
    if structure.has_adapters:  # reconstruction refits the base weights, under adapters that add to them
        if config.reconstruct:
            raise ValueError(
                "reconstruct=True on a model with LoRA adapters: reconstruction refits base weights that the adapters "
                "add to. Merge them first (model.merge_and_unload()), then prune with reconstruction."
            )
        config = config.replace(reconstruct=False)
    if len(structure.stacks) > 1:  # block-sequential refits assume one chain of blocks, each feeding the next
        if config.reconstruct:
            raise ValueError(
                f"reconstruct=True on a model with several block lists ({', '.join(s for s, _, _ in structure.stacks)}"
                "): reconstruction refits blocks in sequence, each on the pruned output of the one before, and a "
                "decoder's first block reads token embeddings, not the encoder's output. Prune with reconstruct=False."
            )
        config = config.replace(reconstruct=False)
    heads, neurons, protected = resolve_targets(config, structure)  # also refuses unknown protected layers
    if config.layers and config.latency is not None:
        raise ValueError(
            "a latency target with layers= is not supported yet: the latency table is measured on the model's "
            "blocks, before any is removed. Give a flops/params target with layers=, or latency= alone."
        )
    # Measured on the unpruned model, before calibration (minutes, and nothing the table would see changes).
    table = (
        measure_latency_table(structure, config.latency_batch_size, config.latency_seq_len)
        if config.latency is not None
        else None
    )
    if config.layers:  # before calibration, which may take minutes: the recipe and the count must allow it
        check_depth_recipe(structure)
        blocks_to_remove(config.layers, structure.num_layers, protected)
    sublayer_fractions = _sublayer_fractions(config)
    if sublayer_fractions:
        check_sublayers_request(config, structure, sublayer_fractions, protected)
    before_shapes, before_cost = structure.shapes(), measure_cost(structure, config.flops_seq_len)

    data = gather_calibration(model, config, calibration, tokenizer, fitted=criterion is not None)
    depth_plan, protected_now = None, list(protected)
    if config.layers:
        if data is None:  # calibration_needs made it required: only a fitted criterion with no data gets here
            raise ValueError("layers=... needs calibration data: pass calibration=... (CLI: --calibration-data).")
        depth_plan = plan_depth(structure, data.batches, config.layers, config.layer_importance, protected)
        remove_blocks(structure, depth_plan.remove)
        structure = ModelStructure(model, config.recipe)
        config = width_after_depth(config, before_cost, structure, depth_plan.remove, protected)
        heads, neurons, protected_now = resolve_targets(config, structure)  # renumbered past the removed blocks
    fixed = resolve_fixed(config, structure)
    prunes_width = heads > 0 or neurons > 0 or any(f > 0 for f in fixed.values()) or config.cost_target is not None
    if prunes_width and structure.removed_sublayers:
        raise ValueError(
            f"this model's {'; '.join(f'{p} of blocks {b}' for p, b in structure.removed_sublayers.items())} were "
            "removed as sublayers, and hf_prune does not prune such a model further. Prune heads, neurons and experts "
            "first, then remove sublayers in the same call (attention_layers=, mlp_layers=), or set the width targets "
            "to 0."
        )
    reconstructs = config.reconstruct is not False and data is not None and prunes_width
    config = config.replace(gqa_mode=auto_gqa_mode(config.gqa_mode, reconstructs))
    if criterion is None and not prunes_width:
        criterion = get_importance("magnitude")  # nothing to rank: keep every head and neuron of what remains
    elif criterion is None:
        name = resolve_importance(config.importance, model, data, reconstructs)
        cuts_heads_or_neurons = heads > 0 or neurons > 0 or config.cost_target is not None
        if name == "magnitude" and is_causal_lm(model) and cuts_heads_or_neurons:  # what the warning measured
            warnings.warn(MAGNITUDE_ON_DECODERS, UserWarning, stacklevel=2)
        criterion = get_importance(name)
        if criterion.accumulates:
            if data is None:
                raise ValueError(
                    f"importance '{name}' needs calibration data: pass calibration=... (CLI: --calibration-data), "
                    "or a criterion fitted with hf_prune.calibrate."
                )
            criterion = calibrate(model, data.batches, name, recipe=config.recipe)
    scores = criterion.scores(structure)
    latency_rounds: list[dict[str, float]] = []
    if table is None:
        plans = plan_for(structure, scores, config)
    else:  # the table's plan, corrected on measured copies of the pruned model

        def pruned_copy(candidate: list[LayerPlan]) -> nn.Module:
            trial = copy.deepcopy(model)
            apply_plan(ModelStructure(trial, structure.recipe), candidate)
            return trial

        plans, latency_rounds = meet_latency(
            model,
            table,
            config.latency or 0.0,
            lambda asked: plan_for(structure, scores, config.replace(latency=asked), latency=table),
            pruned_copy,
        )
    reconstruction = (
        Reconstruction(data.batches, refit=config.reconstruct_refit, reselect=config.reconstruct_reselect)
        if reconstructs
        else None
    )
    vanilla = apply_plan(structure, plans, reconstruction)
    sublayer_plan = None
    if sublayer_fractions:  # last: what remains of heads and neurons is scored with the sublayers that hold them
        assert data is not None  # calibration_needs made it required
        sublayer_plan = plan_sublayers(
            structure, data.batches, sublayer_fractions, config.layer_importance, protected_now
        )
        remove_sublayers(structure, sublayer_plan.remove)
        vanilla = vanilla and not sublayer_plan.remove
        plans = [_without_removed_parts(plan, shape) for plan, shape in zip(plans, structure.shapes(), strict=True)]
    removed = depth_plan.remove if depth_plan else []
    report = PruningReport(
        model_type=structure.config.model_type,
        recipe=structure.recipe.name,
        config={
            **{k: v for k, v in requested.to_dict().items() if k not in GRADUAL_FIELDS},
            "importance": criterion.name,
            "heads": heads,
            "neurons": neurons,
            **resolve_fixed(config, structure),
            "protected_layers": protected,
            "gqa_mode": config.gqa_mode,  # what "auto" meant for this run
        },
        head_dim=structure.head_dim,
        layers_before=_shape_dicts(before_shapes),
        layers_after=layers_entries(structure, removed),
        before=before_cost,
        after=measure_cost(structure, config.flops_seq_len),
        vanilla_loadable=vanilla,
        kept=kept_entries(structure, plans, removed),
        not_vanilla_because=not_vanilla_because(structure.config),
        block_names=stack_block_names(structure),
        removed_layers=removed,
    )
    if depth_plan is not None:
        report.extra["depth"] = depth_plan.describe()
    if sublayer_plan is not None:
        report.extra["sublayers"] = sublayer_plan.describe()
    if data is not None:
        report.extra["calibration"] = data.describe()
    if reconstruction is not None:
        report.extra["reconstruction"] = reconstruction.summary()
    if table is not None:
        report.extra["latency"] = latency_entry(table, config.latency, report.layers_before, structure)
        report.extra["latency"]["rounds"] = latency_rounds
    logger.info("pruned %s: %s parameters -> %s", report.recipe, report.before.parameters, report.after.parameters)
    return report
