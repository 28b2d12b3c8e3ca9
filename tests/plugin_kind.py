"""A unit kind that hf_prune does not ship: what a user writes to add one (tests/test_plugin_kind.py runs it).

``ffn_channels`` are the channels of a gated MLP (a row of gate and up, a column of down), declared under the
recipe's ``kinds`` section instead of ``mlp``. They are what hf_prune's own ``neurons`` are, so the test can check
that a kind written against the public interface alone prunes exactly as the shipped one does. Nothing in hf_prune
names this kind: this module, a recipe and the test are all it takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hf_prune import surgery
from hf_prune.allocation import KindRequest, single_unit_request
from hf_prune.kinds import UnitKind, registered_kinds
from hf_prune.kinds.base import Reducer, Restorer, zero_sum

NAME = "ffn_channels"
ROLES = ("ffn_gate", "ffn_up", "ffn_down")


def _section(recipe: dict[str, Any]) -> dict[str, str]:
    return recipe["kinds"][NAME]


def count_channels(layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
    return surgery.input_size(surgery.get_submodule(layer, _section(recipe)["ffn_down"]))


def keep_channels(layer: nn.Module, recipe: dict[str, Any], keep: Sequence[int]) -> None:
    section, index = _section(recipe), torch.as_tensor(list(keep), dtype=torch.long)
    for role in ("ffn_gate", "ffn_up"):
        surgery.keep_outputs(surgery.get_submodule(layer, section[role]), index)
    surgery.keep_inputs(surgery.get_submodule(layer, section["ffn_down"]), index)


def restore_channels(layer: nn.Module, recipe: dict[str, Any], head_dim: int, target: dict[str, int]) -> None:
    """The restore step: a dense-shaped block shrinks to its recorded count (the first channels)."""
    if NAME in (recipe.get("kinds") or {}) and target[NAME] != count_channels(layer, recipe, head_dim):
        keep_channels(layer, recipe, range(target[NAME]))


class FFNChannels(UnitKind):
    name = NAME
    label = "FFN channels"
    part = NAME

    def restorer(self) -> Restorer:
        return restore_channels

    def applies(self, recipe) -> bool:
        return NAME in recipe.kinds

    def paths(self, recipe) -> dict[str, str]:
        return {role: recipe.kinds[NAME][role] for role in ROLES}

    def count(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int) -> int:
        return count_channels(layer, recipe, head_dim)

    def group_sum(self, structure, index: int, counts: dict[str, int], rows: Reducer, cols: Reducer) -> torch.Tensor:
        return zero_sum(rows("ffn_gate"), rows("ffn_up"), cols("ffn_down"), size=counts[NAME])

    def mask_module(self, structure, index: int) -> nn.Module:
        return structure.module(index, "ffn_down")

    def remove(self, layer: nn.Module, recipe: dict[str, Any], head_dim: int, keep: dict[str, list[int]]) -> None:
        keep_channels(layer, recipe, keep[NAME])

    def check_keep(self, structure, index: int, keep: Sequence[int]) -> None:
        if not keep:
            raise ValueError(f"block {index} would keep no FFN channel; keep at least one.")

    def plan_request(self, structure, scores, fraction: float, config, masked) -> KindRequest:
        request = single_unit_request(NAME, scores, fraction, masked=masked)
        request.label = self.label
        return request

    def unit_cost(self, structure, measure: str, seq_len: int) -> float:
        hidden = surgery.output_size(structure.module(0, "ffn_down"))
        return 3 * hidden if measure == "params" else 2 * 3 * hidden  # a row of gate and up, a column of down


KIND = FFNChannels()


def is_registered() -> bool:
    return any(kind.name == NAME for kind in registered_kinds())


def recipe_dict(fraction: float = 0.25) -> dict[str, Any]:
    """The shipped Llama recipe with its MLP declared as ``ffn_channels`` (and a default target for them)."""
    from hf_prune.recipe import shipped_recipes

    data = shipped_recipes()["llama"].to_dict()
    for section in ("mlp", "depth", "gguf"):  # the MLP belongs to the plugin kind; depth and GGUF read `mlp`
        data.pop(section, None)
    data["name"] = "llama_ffn_channels"
    data["kinds"] = {NAME: {"ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}}
    data["targets"] = {"heads": 0.0, NAME: fraction}
    return data
