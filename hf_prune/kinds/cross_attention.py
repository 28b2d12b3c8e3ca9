"""Cross-attention heads: a decoder block's heads over the encoder output (Whisper's ``encoder_attn``).

They are pruned apart from the block's self-attention heads: their queries read the decoder's stream but their keys
and values read the encoder output, so a head can matter to one and not to the other. Blocks without a
cross-attention (an encoder's) have none of them. The surgery is self-attention's, run on the recipe's
``cross_attention`` section (:func:`hf_prune.surgery.cross_view`); cross-attention without GQA is what the
supported families have, so a head's keys and values go with its query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import surgery
from ..allocation import KindRequest, single_unit_request
from ..recipe import Recipe
from .base import Reducer, Restorer, UnitKind, register_kind, zero_sum

if TYPE_CHECKING:
    from ..config import PruningConfig
    from ..structure import ModelStructure

ROLES = ("q", "k", "v", "o")


class CrossHeads(UnitKind):
    """A cross-attention head: ``head_dim`` rows of the cross-attention's q, k and v, and the matching columns of o."""

    name = "cross_heads"
    label = "cross-attention heads"
    part = "cross_attention"

    def restorer(self) -> Restorer:
        return surgery.restore_cross_attention

    def applies(self, recipe: Recipe) -> bool:
        return recipe.cross_attention is not None

    def paths(self, recipe: Recipe) -> dict[str, str]:
        spec = recipe.cross_attention
        return {} if spec is None else {f"cross_{role}": getattr(spec, role) for role in ROLES}

    def count(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
        if not recipe.get("cross_attention"):
            return 0  # an encoder block
        return surgery.count_heads(layer, surgery.cross_view(recipe), head_dim)

    def config_attribute(self, recipe: Recipe) -> str | None:
        return None if recipe.cross_attention is None else recipe.cross_attention.heads_attribute

    def group_sum(
        self, structure: ModelStructure, index: int, counts: dict[str, int], rows: Reducer, cols: Reducer
    ) -> torch.Tensor:
        hd, heads = structure.head_dim, counts[self.name]
        if not heads:
            return torch.zeros(0)
        parts = (rows("cross_q"), rows("cross_k"), rows("cross_v"), cols("cross_o"))
        return zero_sum(*parts, size=heads * hd).view(heads, hd).sum(1)

    def mask_module(self, structure: ModelStructure, index: int) -> nn.Module:
        return structure.module(index, "cross_o")

    def unit_width(self, structure: ModelStructure) -> int:
        return structure.head_dim

    def context_flops(self, structure: ModelStructure, counts: dict[str, int], seq_len: int) -> int:
        # Scores against the encoder's ``seq_len`` positions and the weighted sum of their values.
        return 4 * seq_len * counts[self.name] * structure.head_dim

    def remove(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int, keep: dict[str, list[int]]) -> None:
        surgery.prune_attention(layer, surgery.cross_view(recipe), head_dim, keep[self.name])

    def check_plan(self, structure: ModelStructure, index: int, keep: dict[str, list[int]]) -> None:
        if structure.shape(index)[self.name] and not keep.get(self.name):
            raise ValueError(f"block {index} would keep no cross-attention head; keep at least one.")

    def plan_request(
        self,
        structure: ModelStructure,
        scores: Sequence[torch.Tensor],
        fraction: float,
        config: PruningConfig,
        masked: Sequence[torch.Tensor] | None,
    ) -> KindRequest:
        # Blocks without a cross-attention have no units: they keep none and remove none.
        request = single_unit_request(self.name, scores, fraction, masked=masked)
        request.label = self.label
        request.tie_groups = structure.tied_blocks("cross_attention")
        request.tied = bool(request.tie_groups)
        return request

    def unit_cost(self, structure: ModelStructure, measure: str, seq_len: int) -> float:
        hd = structure.head_dim
        block = structure.reference_block("cross_o")
        hidden = surgery.output_size(structure.module(block, "cross_o"))
        biases = sum(structure.module(block, f"cross_{r}").bias is not None for r in ("q", "k", "v"))
        if measure == "params":
            return 4 * hidden * hd + biases * hd
        # Per decoder token: q and o, k and v (counted per token, as for self-attention), scores and values.
        return 4 * 2 * hidden * hd + 4 * seq_len * hd


register_kind(CrossHeads())
