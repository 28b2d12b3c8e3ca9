"""PruningConfig: the one source of truth for pruning settings (Python, YAML and the CLI map onto it)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .allocation import GQA_MODES, RANKINGS
from .recipe import check_fraction


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
    importance: str = field(default="magnitude", metadata={"help": "importance criterion (see hf_prune.importance)"})
    ranking: str = field(default="uniform", metadata={"help": "'uniform' per layer or 'global' across layers"})
    gqa_mode: str = field(
        default="auto", metadata={"help": "'auto', 'kv_groups' (whole KV groups) or 'query_heads' (same per group)"}
    )
    neuron_multiple: int = field(default=8, metadata={"help": "kept neurons per layer are a multiple of this"})
    protected_layers: list[int] | None = field(
        default=None, metadata={"help": "blocks never pruned; unset: the recipe's protected_layers"}
    )
    flops_seq_len: int = field(default=128, metadata={"help": "context length used to count attention FLOPs"})

    def __post_init__(self) -> None:
        for name in ("heads", "neurons"):
            value = getattr(self, name)
            if value is not None:
                check_fraction(name, value)
        if self.ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS}, got {self.ranking!r}.")
        if self.gqa_mode not in GQA_MODES:
            raise ValueError(f"gqa_mode must be one of {GQA_MODES}, got {self.gqa_mode!r}.")
        if not isinstance(self.neuron_multiple, int) or self.neuron_multiple < 1:
            raise ValueError(f"neuron_multiple must be a positive integer, got {self.neuron_multiple!r}.")

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

    def replace(self, **changes: Any) -> PruningConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)
