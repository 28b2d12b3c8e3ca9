"""Attention heads: query heads, and the key/value heads that GQA shares between them.

Query heads and KV heads are two kinds of one part, not one kind with a coupled unit. They have their own counts
(``num_attention_heads`` / ``num_key_value_heads``), their own rows (q and o against k and v), their own costs, and
checkpoints record them separately. But only query heads are scored, masked and chosen: a KV head has no output of
its own to mask (its values reach the model only through the query heads that read it), so its kept units follow
from the kept query heads, and :func:`hf_prune.surgery.prune_attention` removes both in one call that checks the GQA
mapping stays valid. The allocator's GQA units (whole KV groups, or one query head per group) are built on the query
heads' scores, into which each KV head's k/v weights are folded (:meth:`QueryHeads.combine`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import surgery
from ..allocation import KindRequest, head_request
from ..recipe import Recipe
from .base import Reducer, Restorer, UnitKind, register_kind, zero_sum

if TYPE_CHECKING:
    from ..config import PruningConfig
    from ..structure import ModelStructure


def _projection_paths(recipe: Recipe, roles: Sequence[str]) -> dict[str, str]:
    att = recipe.attention
    return {role: getattr(att, role) for role in roles if getattr(att, role)}


def _hidden_and_bias(structure: ModelStructure, role: str) -> tuple[int, bool]:
    """The model width (output features of ``o``) and whether projection ``role`` of block 0 has a bias."""
    block = structure.reference_block("o")
    return surgery.output_size(structure.module(block, "o")), structure.module(block, role).bias is not None


class QueryHeads(UnitKind):
    """A query head: ``head_dim`` rows of q and the matching columns of o."""

    name = "heads"
    label = "heads"
    prose = "attention heads"
    own_fraction = False  # a cost target chooses heads and neurons
    part = "attention"

    def restorer(self) -> Restorer:
        return surgery.restore_attention

    def paths(self, recipe: Recipe) -> dict[str, str]:
        return _projection_paths(recipe, ("qkv", "o") if recipe.attention.qkv else ("q", "o"))

    def count(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
        return surgery.count_heads(layer, recipe, head_dim)

    def config_attribute(self, recipe: Recipe) -> str | None:
        return recipe.attention.heads_attribute

    def group_sum(
        self, structure: ModelStructure, index: int, counts: dict[str, int], rows: Reducer, cols: Reducer
    ) -> torch.Tensor:
        hd = structure.head_dim
        width = counts["heads"] * hd
        if structure.recipe.attention.qkv:
            fused = rows("qkv")
            q = None if fused is None else fused[:width]
        else:
            q = rows("q")
        return zero_sum(q, cols("o"), size=width).view(counts["heads"], hd).sum(1)

    def combine(self, sums: dict[str, torch.Tensor], counts: dict[str, int]) -> torch.Tensor:
        """Its own q/o part plus an equal share of its KV head's k/v part."""
        group = counts["heads"] // counts["kv_heads"]
        return sums["heads"] + sums["kv_heads"].repeat_interleave(group) / group

    def mask_module(self, structure: ModelStructure, index: int) -> nn.Module:
        return structure.module(index, "o")

    def unit_width(self, structure: ModelStructure) -> int:
        return structure.head_dim

    def context_flops(self, structure: ModelStructure, counts: dict[str, int], seq_len: int) -> int:
        # q.k scores and the weighted sum of values: 2 x seq_len x head_dim multiply-accumulates each, per head.
        return 4 * seq_len * counts["heads"] * structure.head_dim

    def remove(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int, keep: dict[str, list[int]]) -> None:
        surgery.prune_attention(layer, recipe, head_dim, keep["heads"], keep.get("kv_heads"))

    def plan_request(
        self,
        structure: ModelStructure,
        scores: Sequence[torch.Tensor],
        fraction: float,
        config: PruningConfig,
        masked: Sequence[torch.Tensor] | None,
    ) -> KindRequest:
        # A per-head tensor shared by the blocks of a stack allows one set of heads for all of them.
        groups = structure.tied_blocks("attention")
        kv_heads = [s.kv_heads for s in structure.shapes()]
        return head_request(scores, kv_heads, fraction, config.gqa_mode, masked, bool(groups), groups)

    def unit_cost(self, structure: ModelStructure, measure: str, seq_len: int) -> float:
        hd = structure.head_dim
        hidden, bias = _hidden_and_bias(structure, "qkv" if structure.recipe.attention.qkv else "q")
        if measure == "params":
            return 2 * hidden * hd + (hd if bias else 0)
        # q and o matmuls, plus its share of attention scores and the weighted sum of values.
        return 2 * 2 * hidden * hd + 4 * seq_len * hd


class KVHeads(UnitKind):
    """A key/value head: ``head_dim`` rows of k and of v, read by ``heads // kv_heads`` query heads."""

    name = "kv_heads"
    label = "KV heads"
    part = "attention"
    follows = "heads"

    def paths(self, recipe: Recipe) -> dict[str, str]:
        return _projection_paths(recipe, ("qkv",) if recipe.attention.qkv else ("k", "v"))

    def count(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
        return surgery.count_kv_heads(layer, recipe, head_dim)

    def config_attribute(self, recipe: Recipe) -> str | None:
        return recipe.attention.kv_heads_attribute

    def group_sum(
        self, structure: ModelStructure, index: int, counts: dict[str, int], rows: Reducer, cols: Reducer
    ) -> torch.Tensor:
        hd = structure.head_dim
        q_width, width = counts["heads"] * hd, counts["kv_heads"] * hd
        if structure.recipe.attention.qkv:
            fused = rows("qkv")
            k, v = (None, None) if fused is None else (fused[q_width : q_width + width], fused[q_width + width :])
        else:
            k, v = rows("k"), rows("v")
        return zero_sum(k, v, size=width).view(counts["kv_heads"], hd).sum(1)

    def check(self, counts: dict[str, int], index: int) -> None:
        if counts["kv_heads"] and counts["heads"] % counts["kv_heads"]:
            raise ValueError(
                f"layer {index} has {counts['heads']} query heads, not a multiple of {counts['kv_heads']} KV heads."
            )

    def keep_following(self, leader_keep: Sequence[int], counts: dict[str, int]) -> list[int]:
        """Every KV head that a kept query head reads (query head ``h`` reads ``h // group``)."""
        group = counts["heads"] // counts["kv_heads"]
        return sorted({h // group for h in leader_keep})

    def unit_cost(self, structure: ModelStructure, measure: str, seq_len: int) -> float:
        hd = structure.head_dim
        hidden, bias = _hidden_and_bias(structure, "qkv" if structure.recipe.attention.qkv else "k")
        if measure == "params":
            return 2 * hidden * hd + (2 * hd if bias else 0)
        return 2 * 2 * hidden * hd


register_kind(QueryHeads())
register_kind(KVHeads())
