"""One-shot pruning to a target, and the report that says what changed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .allocation import LayerPlan, budget_fractions, plan_pruning
from .checkpoint import check_sliceable, drop_dequantized_marker, record_structure
from .config import PruningConfig
from .flops import Cost, measure_cost, unit_costs
from .importance import Importance, Scores, get_importance
from .structure import LayerShape, ModelStructure
from .surgery import prune_attention, prune_mlp

logger = logging.get_logger(__name__)

# PruningConfig fields that only the gradual callback uses: a one-shot report must not claim a schedule.
GRADUAL_FIELDS = ("schedule", "begin", "end", "update_every", "ema_beta")


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

    @property
    def parameter_ratio(self) -> float:
        return self.after.parameters / self.before.parameters

    @property
    def flops_ratio(self) -> float:
        """Dense FLOPs / pruned FLOPs per token (the theoretical speedup)."""
        return self.before.flops_per_token / self.after.flops_per_token

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["parameter_ratio"] = self.parameter_ratio
        data["flops_ratio"] = self.flops_ratio
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningReport:
        fields = {k: v for k, v in data.items() if k not in ("parameter_ratio", "flops_ratio")}
        fields["before"], fields["after"] = Cost(**data["before"]), Cost(**data["after"])
        return cls(**fields)

    def summary(self) -> str:
        """A short human-readable table."""
        lines = [
            f"recipe {self.recipe} ({self.model_type}), head_dim {self.head_dim}",
            f"parameters: {self.before.parameters:,} -> {self.after.parameters:,} ({self.parameter_ratio:.1%})",
            f"FLOPs/token @ {self.after.seq_len}: {self.before.flops_per_token:,} -> {self.after.flops_per_token:,}"
            f" (theoretical speedup x{self.flops_ratio:.2f})",
            "layer  heads  kv_heads  neurons",
        ]
        for i, (b, a) in enumerate(zip(self.layers_before, self.layers_after, strict=True)):
            lines.append(
                f"{i:>5}  {a['heads']:>2}/{b['heads']:<3} {a['kv_heads']:>2}/{b['kv_heads']:<5}"
                f" {a['neurons']:>5}/{b['neurons']}"
            )
        lines.append(
            "loads with plain transformers from_pretrained"
            if self.vanilla_loadable
            else "loads with hf_prune.from_pretrained, or transformers with trust_remote_code=True"
        )
        return "\n".join(lines)


def _shape_dicts(shapes: Sequence[LayerShape]) -> list[dict[str, int]]:
    return [{"heads": s.heads, "kv_heads": s.kv_heads, "neurons": s.neurons} for s in shapes]


def apply_plan(structure: ModelStructure, plans: Sequence[LayerPlan]) -> bool:
    """Physically remove everything the plans do not keep; returns True if the result is vanilla-loadable."""
    check_sliceable(structure.model)
    for i, plan in enumerate(plans):
        shape = structure.shape(i)
        if len(plan.keep_heads) != shape.heads or len(plan.keep_kv_heads) != shape.kv_heads:
            prune_attention(
                structure.layers[i], structure.recipe_dict, structure.head_dim, plan.keep_heads, plan.keep_kv_heads
            )
        if len(plan.keep_neurons) != shape.neurons:
            prune_mlp(structure.layers[i], structure.recipe_dict, structure.head_dim, plan.keep_neurons)
    drop_dequantized_marker(structure.model)
    return record_structure(structure)


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
    out-of-range protected layers are refused the same way everywhere.
    """
    targets = structure.recipe.targets
    heads = targets.heads if config.heads is None else config.heads
    neurons = targets.neurons if config.neurons is None else config.neurons
    protected = structure.recipe.protected_layers if config.protected_layers is None else config.protected_layers
    check_protected_layers(protected, structure.num_layers)
    return heads, neurons, list(protected)


def plan_for(
    structure: ModelStructure,
    scores: Scores,
    config: PruningConfig,
    progress: float = 1.0,
    masked_heads: Sequence[torch.Tensor] | None = None,
    masked_neurons: Sequence[torch.Tensor] | None = None,
) -> list[LayerPlan]:
    """The plan that reaches ``progress`` (0..1) of the config's target on ``structure``'s current blocks.

    The target is either fractions of heads and neurons, or a fraction of the blocks' FLOPs or parameters
    (``config.flops`` / ``config.params``), which the allocator meets as closely as the granularity allows.
    Either way ``progress`` scales the head and the neuron fraction of the full target: for a cost target,
    those that meet it on the current scores. (Solving each partial cost target on its own let the fine
    neurons fill it at every update, until no coarse head unit fitted any more and the full target was out of
    reach without bringing masked groups back.)
    """
    heads, neurons, protected = resolve_targets(config, structure)
    shapes = structure.shapes()
    common = dict(
        ranking=config.ranking,
        gqa_mode=config.gqa_mode,
        neuron_multiple=config.neuron_multiple,
        protected_layers=protected,
        masked_heads=masked_heads,
        masked_neurons=masked_neurons,
    )
    kv_heads = [s.kv_heads for s in shapes]
    cost_target = config.flops if config.flops is not None else config.params
    if cost_target is None:
        return plan_pruning(scores.heads, kv_heads, scores.neurons, heads * progress, neurons * progress, **common)

    kind = "flops" if config.flops is not None else "params"
    costs = unit_costs(structure, kind, config.flops_seq_len)
    cost = measure_cost(structure, config.flops_seq_len)
    total = cost.block_flops_per_token if kind == "flops" else cost.block_parameters
    before = [(s.heads, s.kv_heads, s.neurons) for s in shapes]

    def removed_fraction(plans: list[LayerPlan]) -> float:
        removed = sum(
            costs.removed(b, (len(p.keep_heads), len(p.keep_kv_heads), len(p.keep_neurons)))
            for b, p in zip(before, plans, strict=True)
        )
        return removed / total

    heads, neurons = budget_fractions(
        scores.heads, kv_heads, scores.neurons, removed_fraction, cost_target, config.heads, **common
    )
    return plan_pruning(scores.heads, kv_heads, scores.neurons, heads * progress, neurons * progress, **common)


def prune(
    model: nn.Module,
    config: PruningConfig | None = None,
    **overrides: Any,
) -> PruningReport:
    """Remove a fraction of attention heads and MLP neurons from ``model``, in place.

    Example::

        report = hf_prune.prune(model, heads=0.5, neurons=0.5)            # magnitude, uniform per layer
        report = hf_prune.prune(model, heads=0.3, neurons=0.3, ranking="global")
        print(report.summary())

    Args:
        model: a transformers model of an architecture with a recipe.
        config: a :class:`PruningConfig`; keyword ``overrides`` replace its fields. ``importance`` may also be
            an :class:`Importance` instance that was already fitted (e.g. Taylor scores accumulated over
            calibration batches).
    """
    criterion = overrides.get("importance")
    if isinstance(criterion, Importance):
        overrides["importance"] = criterion.name
    else:
        criterion = None
    config = (config or PruningConfig()).replace(**overrides)
    check_sliceable(model)
    structure = ModelStructure(model, config.recipe)
    heads, neurons, protected = resolve_targets(config, structure)  # also refuses unknown protected layers
    before_shapes, before_cost = structure.shapes(), measure_cost(structure, config.flops_seq_len)

    if criterion is None:
        criterion = get_importance(config.importance)
        if criterion.accumulates:
            raise ValueError(
                f"importance '{config.importance}' needs gradients or activations: pass an instance fitted on "
                "calibration data (see hf_prune.calibrate), or use PruningCallback during training."
            )
    plans = plan_for(structure, criterion.scores(structure), config)
    vanilla = apply_plan(structure, plans)
    report = PruningReport(
        model_type=structure.config.model_type,
        recipe=structure.recipe.name,
        config={
            **{k: v for k, v in config.to_dict().items() if k not in GRADUAL_FIELDS},
            "heads": heads,
            "neurons": neurons,
            "protected_layers": protected,
        },
        head_dim=structure.head_dim,
        layers_before=_shape_dicts(before_shapes),
        layers_after=_shape_dicts(structure.shapes()),
        before=before_cost,
        after=measure_cost(structure, config.flops_seq_len),
        vanilla_loadable=vanilla,
        kept=[asdict(plan) for plan in plans],
    )
    logger.info("pruned %s: %s parameters -> %s", report.recipe, report.before.parameters, report.after.parameters)
    return report
