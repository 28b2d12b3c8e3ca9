"""Depth pruning (hf_prune.depth): whole blocks scored, removed and recorded, on every family of the matrix."""

from __future__ import annotations

import copy
import json
import warnings
from functools import partial
from pathlib import Path
from unittest import mock

import pytest
import torch

import hf_prune
from hf_prune.depth import blocks_to_remove, choose_blocks, choose_span, plan_depth, skipped
from hf_prune.recipe import RecipeError
from hf_prune.structure import ModelStructure

from .architectures import CASES, CASES_BY_NAME, Case
from .cli_run import run_cli
from .test_architectures import (
    ATOL,
    _assert_loads_without_hf_prune,
    _assert_same_generation,
    _auto_class,
    _inputs,
    _logits,
)

IDS = [case.name for case in CASES]
DECODERS = [case for case in CASES if case.decoder]
ONE_OF_THREE = 0.34  # the matrix's models have 3 blocks: one goes


def _batches(case: Case) -> list[dict[str, torch.Tensor]]:
    if case.inputs is not None:
        return [case.inputs() | {"labels": torch.tensor([0, 2])} for _ in range(2)]
    ids = torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(2))
    batches = [{"input_ids": ids[i : i + 2], "attention_mask": torch.ones(2, 16, dtype=torch.long)} for i in (0, 2)]
    for batch in batches:
        batch["labels"] = batch["input_ids"].clone() if case.decoder else torch.tensor([0, 2])
    return batches


def _depth_pruned(case: Case, **settings: object) -> tuple[torch.nn.Module, torch.nn.Module, hf_prune.PruningReport]:
    """(dense model, the same with the removed blocks skipped by hooks, pruned model) -> (masked, pruned, report)."""
    pruned = case.build()
    masked = copy.deepcopy(pruned)
    report = hf_prune.prune(
        pruned,
        layers=ONE_OF_THREE,
        calibration=_batches(case),
        reconstruct=False,
        **{"importance": "magnitude", **settings},
    )
    return masked, pruned, report


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_removing_blocks_computes_what_skipping_them_computes(case: Case) -> None:
    masked, pruned, report = _depth_pruned(case)
    assert len(report.removed_layers) == 1
    inputs = _inputs(case)
    structure = ModelStructure(masked)
    with skipped(structure.layers, report.removed_layers):
        expected = _logits(masked, inputs)
    torch.testing.assert_close(_logits(pruned, inputs), expected, atol=ATOL, rtol=0)
    dense = _logits(masked, inputs)
    assert (dense - expected).norm() > 1e-3 * dense.norm(), "skipping a block must matter"

    after = ModelStructure(pruned)
    assert after.num_layers == 2 and after.config.num_hidden_layers == 2
    spec = after.recipe.depth
    for position, layer in enumerate(after.layers):  # the KV cache reads these: renumbered 0..n-1
        for path, attribute in spec.index_attributes.items():
            assert getattr(layer.get_submodule(path) if path else layer, attribute) == position
    for name in spec.config_lists:
        before = getattr(structure.config, name)
        assert getattr(after.config, name) == [v for i, v in enumerate(before) if i not in report.removed_layers]
    # Heads and neurons were not asked for: every remaining block keeps them all.
    assert [a for i, a in enumerate(report.layers_after) if i not in report.removed_layers] == [
        b for i, b in enumerate(report.layers_before) if i not in report.removed_layers
    ]
    assert report.layers_after[report.removed_layers[0]] == {"heads": 0, "kv_heads": 0, "neurons": 0}


@pytest.mark.parametrize("case", DECODERS, ids=[c.name for c in DECODERS])
def test_generate_with_kv_cache_after_removing_blocks(case: Case) -> None:
    """The cache is indexed by the renumbered layer_idx (and Gemma 3 / Qwen's layer types were sliced)."""
    masked, pruned, report = _depth_pruned(case, heads=0.5, neurons=0.5, ranking="global")
    # The masked reference: the same blocks skipped (their plans, all empty, do not matter), the same heads and
    # neurons of the other blocks masked.
    structure = ModelStructure(masked)
    masks = hf_prune.MaskSet(structure)
    everything = hf_prune.LayerPlan([0], [0], [0])
    masks.set_from_plan(
        [everything if i in report.removed_layers else hf_prune.LayerPlan(**k) for i, k in enumerate(report.kept)]
    )
    masks.attach()
    prompt = _inputs(case)["input_ids"][:1, :5]
    skip = partial(skipped, structure.layers, report.removed_layers)
    _assert_same_generation(pruned, masked, prompt, masked_context=skip, max_new_tokens=6)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parameter_count_after_depth_is_the_dense_count_less_the_removed_blocks(case: Case) -> None:
    dense = case.build()
    _, pruned, report = _depth_pruned(case)
    layers = ModelStructure(dense).layers
    removed = sum(p.numel() for i in report.removed_layers for p in layers[i].parameters())
    assert sum(p.numel() for p in pruned.parameters()) == report.after.parameters
    assert report.after.parameters == report.before.parameters - removed


def test_depth_pruned_checkpoints_load_three_ways(tmp_path: Path) -> None:
    """Depth alone keeps every block's widths: plain from_pretrained. With global width pruning on top, the
    recorded per-layer structure (renumbered) loads through hf_prune and through trust_remote_code."""
    items = []
    for case in CASES:
        for width in ({}, {"heads": 0.5, "neurons": 0.5, "ranking": "global", "importance": "random"}):
            _, pruned, report = _depth_pruned(case, **width)
            directory = tmp_path / f"{case.name}-{'width' if width else 'depth'}"
            hf_prune.save_pretrained(pruned, directory)
            inputs = _inputs(case)
            logits = _logits(pruned, inputs)
            torch.save({"inputs": inputs, "logits": logits}, directory.parent / f"{directory.name}.pt")
            if not width:
                assert report.vanilla_loadable, case.name
            reloaded = hf_prune.from_pretrained(directory).eval()
            torch.testing.assert_close(_logits(reloaded, inputs), logits, atol=ATOL, rtol=0)
            items.append({"dir": str(directory), "auto": _auto_class(case), "vanilla": report.vanilla_loadable})
    assert not all(item["vanilla"] for item in items)
    _assert_loads_without_hf_prune(items)


def _identity_block(model: torch.nn.Module, index: int) -> torch.nn.Module:
    """Zero block ``index``'s attention and MLP outputs: its output is its input."""
    structure = ModelStructure(model)
    for module in (structure.attention_output(index), structure.mlp_output(index)):
        torch.nn.init.zeros_(module.weight)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    return model


@pytest.mark.parametrize("criterion", ["block_influence", "angular", "loss"])
def test_each_criterion_finds_the_block_that_changes_nothing(criterion: str) -> None:
    case = CASES_BY_NAME["llama"]
    model = _identity_block(case.build(), 1)
    structure = ModelStructure(model)
    plan = plan_depth(structure, _batches(case), ONE_OF_THREE, criterion)
    assert abs(plan.scores[1]) < 1e-6
    assert all(abs(s) > 1e-4 for i, s in enumerate(plan.scores) if i != 1)
    if criterion == "loss":  # a random model's loss may even drop without a block: the smallest change goes
        assert plan.remove == [min(range(3), key=lambda i: plan.scores[i])]
    else:
        assert plan.remove == [1]
    with pytest.raises(ValueError, match="protected"):  # all of them protected
        plan_depth(structure, _batches(case), ONE_OF_THREE, criterion, protected=[0, 1, 2])


def test_protected_blocks_stay_and_spans_avoid_them() -> None:
    case = CASES_BY_NAME["llama"]
    model = _identity_block(case.build(), 1)
    plan = plan_depth(ModelStructure(model), _batches(case), ONE_OF_THREE, "block_influence", protected=[1])
    assert plan.remove and 1 not in plan.remove
    assert choose_span(torch.tensor([0.3, 0.1, 0.2, 0.05]), 2, protected=[3]) == [1, 2]
    assert choose_span(torch.tensor([0.3, 0.1, 0.2]), 2) == [1, 2]
    assert choose_blocks(torch.tensor([0.5, 0.1, 0.1, 0.9]), 1) == [2]  # ties: the later block goes


def test_block_counts_round_to_the_nearest_and_never_empty_the_model() -> None:
    assert blocks_to_remove(0.25, 30) == 7  # 7.5 blocks: a tie keeps the block
    assert blocks_to_remove(0.26, 30) == 8
    assert blocks_to_remove(0.1, 30) == 3 and blocks_to_remove(0.0, 30) == 0
    with pytest.raises(ValueError, match="removes all 2 blocks"):
        blocks_to_remove(0.9, 2)
    with pytest.raises(ValueError, match="protected"):
        blocks_to_remove(0.5, 4, protected=[0, 1, 2])


def test_a_cost_target_counts_the_removed_blocks() -> None:
    case = CASES_BY_NAME["llama"]
    model = case.build()
    report = hf_prune.prune(
        model, layers=ONE_OF_THREE, params=0.5, calibration=_batches(case), importance="magnitude", reconstruct=False
    )
    assert len(report.removed_layers) == 1
    removed = 1 - report.after.block_parameters / report.before.block_parameters
    assert removed == pytest.approx(0.5, abs=0.03)
    kept = [a for i, a in enumerate(report.layers_after) if i not in report.removed_layers]
    assert any(a["neurons"] < 96 for a in kept), "width pruning removes the rest of the target"
    with pytest.warns(UserWarning, match="more than the params=0.2 target"):
        report = hf_prune.prune(
            case.build(), layers=ONE_OF_THREE, params=0.2, calibration=_batches(case), importance="magnitude"
        )
    assert report.layers_after[0]["neurons"] in (0, 96)


def test_report_summary_and_card_show_the_removed_blocks() -> None:
    case = CASES_BY_NAME["gemma3"]
    _, _, report = _depth_pruned(case, layer_importance="angular")
    assert report.extra["depth"]["criterion"] == "angular"
    assert "block removed" in report.summary()
    card = str(hf_prune.build_model_card(report))
    assert "1 of its 3 transformer blocks" in card and "block removed" in card
    back = hf_prune.PruningReport.from_dict(json.loads(report.to_json()))
    assert back.removed_layers == report.removed_layers


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


def test_a_recipe_without_depth_fields_is_refused_with_the_model_untouched() -> None:
    case = CASES_BY_NAME["llama"]
    model = case.build()
    recipe = hf_prune.shipped_recipes()["llama"].to_dict()
    del recipe["depth"]
    state = _state(model)
    with pytest.raises(RecipeError, match="no `depth` section"):
        hf_prune.prune(model, layers=ONE_OF_THREE, recipe=recipe, calibration=_batches(case))
    assert _unchanged(model, state)


def test_depth_problems_are_refused_before_the_model_generates_its_calibration_text() -> None:
    """Self-calibration takes minutes on a real model: a recipe or a count that cannot work fails first."""
    model = CASES_BY_NAME["llama"].build()
    recipe = hf_prune.shipped_recipes()["llama"].to_dict()
    del recipe["depth"]
    with mock.patch("hf_prune.prune.prepare_calibration", side_effect=AssertionError("calibrated")) as calibrate:
        with pytest.raises(RecipeError, match="no `depth` section"):
            hf_prune.prune(model, layers=ONE_OF_THREE, recipe=recipe)
        with pytest.raises(ValueError, match="removes all 3 blocks"):
            hf_prune.prune(model, layers=0.9)
    calibrate.assert_not_called()


def test_undeclared_block_indices_and_per_block_config_lists_are_refused() -> None:
    case = CASES_BY_NAME["qwen3"]
    model = case.build()
    state = _state(model)
    recipe = hf_prune.shipped_recipes()["qwen3"].to_dict()
    recipe["depth"]["config_lists"] = []
    with pytest.raises(RecipeError, match=r"\['layer_types'\].*depth.config_lists"):
        hf_prune.prune(model, layers=ONE_OF_THREE, recipe=recipe, calibration=_batches(case))
    recipe = hf_prune.shipped_recipes()["qwen3"].to_dict()
    recipe["depth"]["index_attributes"] = {}
    with pytest.raises(RecipeError, match=r"self_attn.*layer_idx"):
        hf_prune.prune(model, layers=ONE_OF_THREE, recipe=recipe, calibration=_batches(case))
    assert _unchanged(model, state)


def test_removing_every_block_is_refused() -> None:
    model = CASES_BY_NAME["llama"].build()
    structure = ModelStructure(model)
    with pytest.raises(ValueError, match="all 3 blocks"):
        hf_prune.remove_blocks(structure, [0, 1, 2])
    assert structure.num_layers == 3


def test_an_encoder_without_data_and_an_unknown_criterion_say_what_to_do() -> None:
    model = CASES_BY_NAME["bert"].build()
    state = _state(model)
    with pytest.raises(ValueError, match="calibration-data"):
        hf_prune.prune(model, layers=ONE_OF_THREE)
    assert _unchanged(model, state)
    with pytest.raises(ValueError, match="layer_importance"):
        hf_prune.PruningConfig(layers=0.25, layer_importance="cosine")


def test_cli_removes_blocks_self_calibrated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES_BY_NAME["llama"]
    case.build().save_pretrained(tmp_path / "dense")
    output = tmp_path / "pruned"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code, _, err = run_cli(
            capsys, "prune", tmp_path / "dense", "--layers", "0.34", "--calibration-samples", "4", "--output", output
        )
    assert code == 0, err
    report = json.loads((output / "pruning_report.json").read_text())
    assert len(report["removed_layers"]) == 1 and report["vanilla_loadable"]
    assert json.loads((output / "config.json").read_text())["num_hidden_layers"] == 2
    loaded = hf_prune.from_pretrained(output)
    assert ModelStructure(loaded).num_layers == 2


def test_a_vision_model_prunes_calibrated_on_images_and_its_card_says_so() -> None:
    """Images instead of token ids: the probe, the calibration record and the card follow the model's input."""
    case = CASES_BY_NAME["vit"]
    model = case.build()
    report = hf_prune.prune(model, layers=ONE_OF_THREE, heads=0.25, calibration=_batches(case), importance="fisher")
    assert report.extra["calibration"]["sequences"] == 4 and "tokens" not in report.extra["calibration"]
    assert "4 sequences." in str(hf_prune.build_model_card(report))
    assert len(report.removed_layers) == 1 and report.vanilla_loadable
