"""The worked example in examples/custom_recipe/ passes the checks every shipped recipe passes
(tests/test_architectures.py): masked == pruned, generation with a KV cache, backward, parameter count, save/load."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers as T

import hf_prune
from hf_prune.cli import main
from hf_prune.importance import get_importance
from hf_prune.recipe import Recipe, shipped_recipes
from hf_prune.structure import ModelStructure

from .architectures import STRUCTURE_ONLY, _llama_like
from .test_architectures import _assert_same_generation

ATOL = 1e-5
RECIPE = str(Path(__file__).resolve().parent.parent / "examples" / "custom_recipe" / "arcee.yaml")


# The matrix's tiny GQA config (tests/architectures.py), with biases to exercise bias slicing (AFM has none).
_build = _llama_like(
    T.ArceeConfig, T.ArceeForCausalLM, attention_bias=True, pad_token_id=0, bos_token_id=1, eos_token_id=2
)


def _inputs() -> torch.Tensor:
    return torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(1))


def _logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


def _masked_and_pruned(
    ranking: str, gqa_mode: str = "auto", attention: str = "sdpa"
) -> tuple[torch.nn.Module, torch.nn.Module]:
    pruned = _build()
    pruned.set_attn_implementation(attention)
    masked = copy.deepcopy(pruned)
    structure = ModelStructure(pruned, RECIPE)
    scores = get_importance("random").scores(structure)
    kv_heads = [s.kv_heads for s in structure.shapes()]
    plans = hf_prune.plan_pruning(scores.heads, kv_heads, scores.neurons, 0.5, 0.5, ranking=ranking, gqa_mode=gqa_mode)
    masks = hf_prune.MaskSet(ModelStructure(masked, RECIPE))
    masks.set_from_plan(plans)
    masks.attach()
    hf_prune.apply_plan(structure, plans)
    return masked, pruned


def test_the_example_is_for_an_architecture_hf_prune_does_not_ship() -> None:
    recipe = Recipe.from_yaml(RECIPE)
    assert recipe.model_types == ["arcee"]
    assert all("arcee" not in r.model_types for r in shipped_recipes().values())
    with pytest.raises(ValueError, match="no recipe for model_type 'arcee'"):
        ModelStructure(_build())
    structure = ModelStructure(_build(), RECIPE)
    assert structure.head_dim == 16 and structure.shapes()[0].kv_heads == 2


@pytest.mark.parametrize(
    ("ranking", "gqa_mode", "attention"),
    [
        ("uniform", "auto", "sdpa"),
        ("global", "auto", "sdpa"),
        ("global", "query_heads", "sdpa"),
        # Eager attention reads `num_key_value_groups` (SDPA infers the grouping from shapes): this case fails
        # if the recipe's module_attributes forgets it.
        ("uniform", "query_heads", "eager"),
    ],
)
def test_masked_model_equals_pruned_model(ranking: str, gqa_mode: str, attention: str) -> None:
    masked, pruned = _masked_and_pruned(ranking, gqa_mode, attention)
    input_ids = _inputs()
    torch.testing.assert_close(_logits(pruned, input_ids), _logits(masked, input_ids), atol=ATOL, rtol=0)
    assert all(s.heads < 8 and s.neurons < 96 for s in ModelStructure(pruned, RECIPE).shapes())


def test_generate_with_kv_cache_matches_masked_model() -> None:
    masked, pruned = _masked_and_pruned("global")
    _assert_same_generation(pruned, masked, _inputs()[:1, :5], max_new_tokens=6)


def test_backward_reaches_pruned_weights() -> None:
    _, pruned = _masked_and_pruned("global")
    pruned.train()
    input_ids = _inputs()
    pruned(input_ids, labels=input_ids).loss.backward()
    structure = ModelStructure(pruned, RECIPE)
    for i in range(structure.num_layers):
        for role in ("q", "k", "v", "o", "up", "down"):
            weight = structure.module(i, role).weight
            assert weight.grad is not None and weight.grad.shape == weight.shape
            assert torch.isfinite(weight.grad).all()


def test_parameter_count_matches_closed_form() -> None:
    model = _build()
    dense = sum(p.numel() for p in model.parameters())
    report = hf_prune.prune(model, recipe=RECIPE, heads=0.5, neurons=0.5, ranking="global", **STRUCTURE_ONLY)
    hidden, head_dim = 64, 16
    per_head = 2 * hidden * head_dim + head_dim  # q rows (+ bias) and o columns
    per_kv = 2 * hidden * head_dim + 2 * head_dim  # k and v rows (+ biases)
    per_neuron = 2 * hidden  # up row and down column, no gate, no MLP bias
    removed = sum(
        (b["heads"] - a["heads"]) * per_head
        + (b["kv_heads"] - a["kv_heads"]) * per_kv
        + (b["neurons"] - a["neurons"]) * per_neuron
        for b, a in zip(report.layers_before, report.layers_after, strict=True)
    )
    assert report.before.parameters == dense
    assert report.after.parameters == sum(p.numel() for p in model.parameters()) == dense - removed
    assert report.recipe == "arcee" and report.flops_ratio > 1.0


def test_uniform_checkpoint_loads_with_plain_transformers(tmp_path: Path) -> None:
    model = _build()
    report = hf_prune.prune(model, recipe=RECIPE, heads=0.5, neurons=0.5, **STRUCTURE_ONLY)
    assert report.vanilla_loadable, "head_dim_attribute makes a uniform plan expressible in the config"
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (4, 1, 48)
    assert "auto_map" not in config
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert type(loaded) is T.ArceeForCausalLM
    input_ids = _inputs()
    torch.testing.assert_close(_logits(loaded, input_ids), _logits(model, input_ids), atol=ATOL, rtol=0)
    # The checkpoint carries its recipe: no need to point at the YAML file again.
    assert ModelStructure(loaded).recipe.name == "arcee"


def test_heterogeneous_checkpoint_round_trips(tmp_path: Path) -> None:
    model = _build()
    report = hf_prune.prune(model, recipe=RECIPE, heads=0.5, neurons=0.5, protected_layers=[0], **STRUCTURE_ONLY)
    assert not report.vanilla_loadable  # layer 0 stays whole: the per-layer structure is recorded
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    input_ids = _inputs()
    expected = _logits(model, input_ids)
    loaded = hf_prune.from_pretrained(tmp_path / "pruned").eval()
    torch.testing.assert_close(_logits(loaded, input_ids), expected, atol=ATOL, rtol=0)
    assert ModelStructure(loaded).shapes() == ModelStructure(model, RECIPE).shapes()
    remote = T.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", trust_remote_code=True).eval()
    torch.testing.assert_close(_logits(remote, input_ids), expected, atol=ATOL, rtol=0)


def test_cli_prunes_with_the_recipe_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _build().save_pretrained(tmp_path / "dense")
    output = tmp_path / "pruned"
    argv = [
        "prune",
        str(tmp_path / "dense"),
        "--recipe",
        RECIPE,
        "--heads",
        "0.5",
        "--neurons",
        "0.5",
        "-o",
        str(output),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((output / "pruning_report.json").read_text())
    # self-calibrated and reconstructed: 2 query heads of each KV group go, both KV heads stay
    assert report["recipe"] == "arcee" and report["layers_after"] == [{"heads": 4, "kv_heads": 2, "neurons": 48}] * 3
    assert report["config"]["gqa_mode"] == "query_heads"
    assert type(T.AutoModelForCausalLM.from_pretrained(output)) is T.ArceeForCausalLM
