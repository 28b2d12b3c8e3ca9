"""The packed JSON forms of masks and scores (hf_prune.packed): exact, small, and old plain lists still load."""

from __future__ import annotations

import json

import torch

import hf_prune
from hf_prune.packed import pack_mask, pack_scores, unpack_mask, unpack_scores
from hf_prune.structure import ModelStructure

from .architectures import CASES_BY_NAME


def test_masks_and_scores_round_trip_exactly_through_json() -> None:
    generator = torch.Generator().manual_seed(0)
    for size in (1, 7, 8, 9, 14336):
        mask = torch.rand(size, generator=generator) > 0.5
        assert torch.equal(unpack_mask(json.loads(json.dumps(pack_mask(mask)))), mask)
        scores = torch.randn(size, generator=generator) * 1e-6
        back = unpack_scores(json.loads(json.dumps(pack_scores(scores))))
        assert back.dtype == torch.float32 and torch.equal(back, scores)


def test_an_8b_llama_layer_packs_many_times_smaller_than_plain_lists() -> None:
    mask = torch.rand(14336, generator=torch.Generator().manual_seed(0)) > 0.5
    scores = torch.rand(14336, generator=torch.Generator().manual_seed(1))
    assert len(json.dumps(pack_mask(mask))) * 20 < len(json.dumps(mask.tolist()))
    assert len(json.dumps(pack_scores(scores))) * 2 < len(json.dumps(scores.tolist()))


def test_masks_and_scores_saved_as_plain_lists_by_older_versions_still_load() -> None:
    structure = ModelStructure(CASES_BY_NAME["llama"].build())
    masks = hf_prune.MaskSet(structure)
    old = {"heads": [[True] * 7 + [False]] * 3, "neurons": [[False] + [True] * 95] * 3}
    masks.load_state_dict(old)
    assert masks.kept_heads == [7, 7, 7] and masks.kept_neurons == [95, 95, 95]
    assert [m.tolist() for m in masks.heads] == old["heads"]
    again = hf_prune.MaskSet(structure)
    again.load_state_dict(json.loads(json.dumps(masks.state_dict())))
    assert all(torch.equal(a, b) for a, b in zip(again.neurons, masks.neurons, strict=True))

    importance = hf_prune.get_importance("taylor")
    importance.load_state_dict({"updates": 2, "heads": [[0.5] * 8] * 3, "neurons": [[0.25] * 96] * 3})
    assert importance.updates == 2 and float(importance.values["heads"][0][0]) == 0.5
    packed = json.loads(json.dumps(importance.state_dict()))
    assert "f32" in packed["heads"][0]
    fresh = hf_prune.get_importance("taylor")
    fresh.load_state_dict(packed)
    assert all(torch.equal(a, b) for a, b in zip(fresh.values["neurons"], importance.values["neurons"], strict=True))
