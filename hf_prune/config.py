"""PruningConfig: the one source of truth for pruning settings (Python, YAML and the CLI map onto it)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .allocation import GQA_MODES, RANKINGS
from .depth import DEPTH_CRITERIA
from .recipe import Targets, check_fraction
from .reconstruct import REFITS
from .schedule import Schedule

#: The cost targets, each a fraction of that cost of the blocks (of the whole forward pass, for latency) to remove.
COST_MEASURES = ("flops", "params", "latency")
#: The shipped kinds' fractions, each a setting of its own as in a recipe's targets (other kinds' are in ``kinds``).
KIND_FIELDS = Targets.named()
#: The depth targets: whole blocks, and the attention / MLP sublayer of a block on its own.
DEPTH_FRACTIONS = ("layers", "attention_layers", "mlp_layers")


@dataclass
class PruningConfig:
    """What to prune and how. Fractions are of the prunable units of the blocks the recipe describes."""

    recipe: str = field(default="auto", metadata={"help": "'auto', a shipped recipe name or a YAML path"})
    heads: float | None = field(
        default=None, metadata={"help": "fraction of attention heads to remove, in [0, 1); unset: recipe default"}
    )
    neurons: float | None = field(
        default=None, metadata={"help": "fraction of MLP neurons to remove, in [0, 1); unset: recipe default"}
    )
    experts: float | None = field(
        default=None,
        metadata={
            "help": "fraction of each MoE block's routed experts to remove, in [0, 1), never below top-k (fewer "
            "parameters; FLOPs per token stay, top-k experts still run); unset: recipe default"
        },
    )
    expert_neurons: float | None = field(
        default=None,
        metadata={
            "help": "fraction of the neurons inside each MoE expert to remove, in [0, 1), the same number from every "
            "expert of a block (fewer parameters and FLOPs per token); unset: recipe default"
        },
    )
    cross_heads: float | None = field(
        default=None,
        metadata={
            "help": "fraction of each decoder block's cross-attention heads to remove, in [0, 1) (encoder-decoder "
            "models such as Whisper; pruned apart from self-attention heads); unset: recipe default"
        },
    )
    kinds: dict[str, float] | None = field(
        default=None,
        metadata={
            "help": "fractions of the units of other registered kinds to remove, by kind name (kinds registered "
            "with hf_prune.register_kind outside hf_prune; CLI: --kinds NAME=FRACTION ...); unset: recipe defaults"
        },
    )
    importance: str = field(
        default="auto",
        metadata={
            "help": "importance criterion: 'auto' (data-driven when calibration data exists or can be generated, "
            "else magnitude), or a name from hf_prune.available_importances()"
        },
    )
    ranking: str = field(default="uniform", metadata={"help": "'uniform' per layer or 'global' across layers"})
    gqa_mode: str = field(
        default="auto",
        metadata={
            "help": "'kv_groups' (whole KV groups, shrinks the KV cache), 'query_heads' (the same number from every "
            "group) or 'auto': query heads when reconstruction follows (one-shot with data), else KV groups"
        },
    )
    neuron_multiple: int = field(default=8, metadata={"help": "kept neurons per layer are a multiple of this"})
    protected_layers: list[int] | None = field(
        default=None, metadata={"help": "blocks never pruned; unset: the recipe's protected_layers"}
    )
    flops: float | None = field(
        default=None,
        metadata={"help": "instead of fixed fractions: fraction of the blocks' FLOPs to remove, in (0, 1)"},
    )
    params: float | None = field(
        default=None,
        metadata={"help": "instead of fixed fractions: fraction of the blocks' parameters to remove, in (0, 1)"},
    )
    latency: float | None = field(
        default=None,
        metadata={
            "help": "instead of fixed fractions: fraction of the measured forward latency to remove, in (0, 1), at "
            "latency_batch_size x latency_seq_len on the model's device (a table measured once)"
        },
    )
    latency_batch_size: int = field(default=8, metadata={"help": "batch size of the latency target's measurements"})
    latency_seq_len: int = field(default=128, metadata={"help": "tokens per sequence of the latency measurements"})
    layers: float | None = field(
        default=None,
        metadata={
            "help": "fraction of whole blocks to remove (depth pruning, one-shot), in [0, 1); alone it removes only "
            "blocks, with heads/neurons/flops/params the rest is width pruning (cost targets count the blocks too)"
        },
    )
    attention_layers: float | None = field(
        default=None,
        metadata={
            "help": "fraction of blocks whose attention sublayer is removed on its own (one-shot, after heads and "
            "neurons), in [0, 1); the recipe's depth.sublayers says how"
        },
    )
    mlp_layers: float | None = field(
        default=None,
        metadata={"help": "fraction of blocks whose MLP (or MoE) sublayer is removed on its own, as attention_layers"},
    )
    layer_importance: str = field(
        default="block_influence",
        metadata={
            "help": "how blocks are scored: 'block_influence', 'angular' (consecutive blocks) or 'loss'; sublayers by "
            "'block_influence' or 'loss'"
        },
    )
    flops_seq_len: int = field(default=128, metadata={"help": "context length used to count attention FLOPs"})
    # -- one-shot calibration and reconstruction ---------------------------------------------------------------
    calibration_data: str | None = field(
        default=None,
        metadata={
            "help": "calibration text: a .txt/.jsonl/.json/.csv/.parquet file, a datasets folder or a Hub dataset "
            "id; unset: a causal LM samples its own (self-calibration)"
        },
    )
    calibration_split: str = field(default="train", metadata={"help": "split of a datasets folder or Hub dataset"})
    calibration_column: str | None = field(
        default=None, metadata={"help": "text column of the calibration data; unset: 'text' or the only string column"}
    )
    calibration_samples: int = field(default=32, metadata={"help": "calibration sequences (windows for causal LMs)"})
    calibration_seq_len: int = field(default=512, metadata={"help": "tokens per calibration sequence"})
    calibration_batch_size: int = field(
        default=1,
        metadata={
            "help": "sequences per calibration forward/backward pass: memory grows with it (Taylor sums gradients "
            "over the batches, so its scores do not depend on it)"
        },
    )
    reconstruct: bool | None = field(
        default=None,
        metadata={
            "help": "one-shot only (PruningCallback refuses True): after removal, fold the removed units' mean into "
            "the output bias and refit the output "
            "projections (reconstruct_refit), block by block, where held-out calibration windows confirm it; unset: "
            "whenever calibration data exists or can be generated, True: require it, False: off"
        },
    )
    reconstruct_refit: str = field(
        default="weights",
        metadata={
            "help": "what reconstruction may refit besides the bias: 'none', 'scales' (one per kept head/neuron) or "
            "'weights' (also a ridge refit of the kept columns of o/down), each only where held-out windows agree"
        },
    )
    reconstruct_reselect: bool = field(
        default=False,
        metadata={
            "help": "with reconstruction, choose again which heads/neurons of each block go (the counts stay as "
            "planned): the ones a least-squares refit of the rest makes up for best (structured OBS on the block's "
            "calibration inputs), kept only where held-out windows agree. Off by default: measured on SmolLM2, it "
            "did not help (README)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of self-calibration and of sampling calibration texts"})
    # -- gradual pruning (PruningCallback) -------------------------------------------------------------------
    schedule: str = field(default="cubic", metadata={"help": "one_shot, linear, cubic, exponential or iterative"})
    begin: int | float = field(default=0.0, metadata={"help": "schedule start: fraction of training, or an int step"})
    end: int | float = field(
        default=0.7, metadata={"help": "schedule end (structure frozen after it): fraction of training or int step"}
    )
    update_every: int = field(default=10, metadata={"help": "optimizer steps between mask updates"})
    ema_beta: float = field(
        default=0.9, metadata={"help": "moving-average factor of accumulated importance scores (taylor, fisher...)"}
    )
    compact: bool = field(
        default=False,
        metadata={
            "help": "remove masked units from the live model at every mask update, with the optimizer's state, so "
            "training gets cheaper as it prunes (single process; masking only when False)"
        },
    )

    def __post_init__(self) -> None:
        fractions = (*KIND_FIELDS, "flops", "params", "latency")
        for name in (*DEPTH_FRACTIONS, *fractions):
            value = getattr(self, name)
            if value is not None:
                check_fraction(name, value)
        self._check_kinds()
        given = [name for name in COST_MEASURES if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one cost target of {COST_MEASURES}, not {given}.")
        if self.neurons is not None and given:
            raise ValueError(
                f"`neurons` is solved for when a `{given[0]}` target is set; set `heads` to fix the head "
                "fraction, or drop the cost target."
            )
        # Builds (and so validates) the schedule; raises with a clear message on a bad kind/begin/end.
        self.to_schedule()
        if self.ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS}, got {self.ranking!r}.")
        if self.gqa_mode not in GQA_MODES:
            raise ValueError(f"gqa_mode must be one of {GQA_MODES}, got {self.gqa_mode!r}.")
        for name in (
            "neuron_multiple",
            "calibration_samples",
            "calibration_seq_len",
            "calibration_batch_size",
            "latency_batch_size",
            "latency_seq_len",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.layer_importance not in DEPTH_CRITERIA:
            raise ValueError(f"layer_importance must be one of {DEPTH_CRITERIA}, got {self.layer_importance!r}.")
        if self.reconstruct_refit not in REFITS:
            raise ValueError(f"reconstruct_refit must be one of {REFITS}, got {self.reconstruct_refit!r}.")
        if self.calibration_seq_len < 2:
            raise ValueError(f"calibration_seq_len must be at least 2 tokens, got {self.calibration_seq_len}.")

    def _check_kinds(self) -> None:
        if self.kinds is None:
            return
        if not isinstance(self.kinds, dict) or not all(isinstance(name, str) for name in self.kinds):
            raise ValueError(
                f"kinds maps kind names to fractions, e.g. {{'adapter_neurons': 0.5}}; got {self.kinds!r}."
            )
        named = sorted(set(self.kinds) & set(KIND_FIELDS))
        if named:
            raise ValueError(f"kinds={named} have settings of their own: set {named[0]}= directly, not in kinds=.")
        for name, value in self.kinds.items():
            check_fraction(f"kinds[{name!r}]", value)

    def fraction(self, kind: str) -> float | None:
        """The fraction of ``kind``'s units to remove that this config sets (its own field, else ``kinds``), or
        ``None`` where it leaves it to the recipe."""
        if kind in KIND_FIELDS:
            return getattr(self, kind)
        return (self.kinds or {}).get(kind)

    def with_fractions(self, fractions: dict[str, float]) -> PruningConfig:
        """A copy that sets these kinds' fractions (their own fields where they have one, else in ``kinds``)."""
        own = {name: value for name, value in fractions.items() if name in KIND_FIELDS}
        other = {name: value for name, value in fractions.items() if name not in KIND_FIELDS}
        return self.replace(**own, **({"kinds": {**(self.kinds or {}), **other}} if other else {}))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown pruning setting(s) {unknown}; allowed: {sorted(names)}.")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> PruningConfig:
        return cls.from_dict(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def cost_target(self) -> tuple[str, float] | None:
        """``(measure, fraction to remove)`` of the cost target (``flops``, ``params`` or ``latency``), if any."""
        return next(((name, getattr(self, name)) for name in COST_MEASURES if getattr(self, name) is not None), None)

    def to_schedule(self) -> Schedule:
        return Schedule(kind=self.schedule, begin=self.begin, end=self.end, every=self.update_every)

    def replace(self, **changes: Any) -> PruningConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)
