"""Recipes: the shipped YAML files load, resolve by model_type, and round-trip through their dict form."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hf_prune.recipe import (
    QUANTITIES,
    Recipe,
    RecipeError,
    SharedHeadTensor,
    recipe_for_model_type,
    recipes_dir,
    recipes_for_model_type,
    resolve_recipe,
    shipped_recipes,
)
from hf_prune.structure import ModelStructure

from .architectures import CASES, Case

SHIPPED = sorted(path.stem for path in recipes_dir().glob("*.yaml"))


def test_recipes_dir_is_the_source_checkout_recipes_folder() -> None:
    # In a source checkout (and an editable install) the recipes live in ./recipes; the wheel case is in
    # tests/test_packaging.py.
    assert recipes_dir() == Path(__file__).resolve().parent.parent / "recipes"
    assert len(SHIPPED) >= 10


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_loads(name: str) -> None:
    recipe = Recipe.from_yaml(recipes_dir() / f"{name}.yaml")
    assert recipe.name == name, "the file name and `name:` must agree (resolve_recipe looks recipes up by file)"
    assert recipe.model_types and (recipe.layers or recipe.stacks) and recipe.description
    assert shipped_recipes()[name] == recipe
    assert resolve_recipe(name, None) == recipe
    assert 0.0 <= recipe.targets.heads < 1.0 and 0.0 <= recipe.targets.neurons < 1.0


def test_model_types_are_claimed_by_one_recipe_only_but_variants_of_one_family() -> None:
    """T5 with a ReLU FFN and with a gated one share model_type 't5'; the model's modules choose (test_seq2seq)."""
    owners: dict[str, list[str]] = {}
    for name, recipe in shipped_recipes().items():
        for model_type in recipe.model_types:
            owners.setdefault(model_type, []).append(name)
    assert {t: names for t, names in owners.items() if len(names) > 1} == {"t5": ["t5", "t5_gated"]}


@pytest.mark.parametrize(
    ("name", "model_type"),
    [(name, model_type) for name, recipe in shipped_recipes().items() for model_type in recipe.model_types],
)
def test_auto_resolves_every_model_type(name: str, model_type: str) -> None:
    assert name in [recipe.name for recipe in recipes_for_model_type(model_type)]
    assert resolve_recipe("auto", model_type).name == recipe_for_model_type(model_type).name
    assert recipe_for_model_type(model_type).name == (name if model_type != "t5" else "t5")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_auto_resolves_the_test_matrix_models(case: Case) -> None:
    expected = case.name.split("_")[0]  # gemma3_mqa uses the gemma3 recipe
    assert ModelStructure(case.build()).recipe.name == expected


def test_auto_needs_a_model_type() -> None:
    with pytest.raises(ValueError, match=re.escape("recipe='auto' needs a model with `config.model_type`")):
        resolve_recipe("auto", None)


@pytest.mark.parametrize("name", SHIPPED)
def test_to_dict_from_dict_round_trip(name: str) -> None:
    recipe = shipped_recipes()[name]
    data = recipe.to_dict()
    assert Recipe.from_dict(copy.deepcopy(data)) == recipe
    assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe
    assert Recipe.from_dict(data).to_dict() == data
    assert resolve_recipe(data, None) == recipe  # a dict (as stored in config.json) resolves too
    assert resolve_recipe(recipe, None) is recipe


def test_yaml_path_resolves(tmp_path: Path) -> None:
    path = tmp_path / "mine.yml"
    path.write_text(shipped_recipes()["llama"].to_yaml(), encoding="utf-8")
    assert resolve_recipe(str(path), None) == shipped_recipes()["llama"]
    assert resolve_recipe(path, None) == shipped_recipes()["llama"]


def _llama_dict() -> dict[str, Any]:
    return copy.deepcopy(shipped_recipes()["llama"].to_dict())


@pytest.mark.parametrize(
    ("section", "field"),
    [("attention", "module_attributes"), ("attention", "module_config"), ("mlp", "module_attributes")],
)
def test_unknown_quantity_in_module_attributes_is_rejected(section: str, field: str) -> None:
    data = _llama_dict()
    data[section][field] = {"self_attn": {"num_key_value_groups": "groups"}}
    with pytest.raises(
        ValueError, match=f"{section}: attribute 'num_key_value_groups' maps to unknown quantity"
    ) as info:
        Recipe.from_dict(data)
    message = str(info.value)
    assert "'groups'" in message
    assert all(quantity in message for quantity in QUANTITIES), "the error lists the valid quantities"


def test_every_quantity_is_accepted() -> None:
    data = _llama_dict()
    data["attention"]["module_attributes"] = {"self_attn": {f"attr_{q}": q for q in QUANTITIES}}
    assert Recipe.from_dict(data).attention.module_attributes["self_attn"]["attr_kv_width"] == "kv_width"


def test_layers_may_be_a_single_string() -> None:
    data = _llama_dict()
    data["layers"] = "model.layers"
    assert Recipe.from_dict(data).layers == ["model.layers"]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(model_types=[]), "needs non-empty `model_types`, and `layers` or `stacks`"),
        (lambda d: d.update(layers=[]), "needs non-empty `model_types`, and `layers` or `stacks`"),
        (lambda d: d["attention"].update(qkv="self_attn.qkv_proj"), "either `qkv` or `q`/`k`/`v`, not both"),
        (lambda d: d["mlp"].update(gate_up="mlp.gate_up_proj"), "exactly one of `up` or `gate_up`"),
        (lambda d: d["mlp"].pop("up"), "exactly one of `up` or `gate_up`"),
    ],
    ids=["no-model-types", "no-layers", "qkv-and-q", "up-and-gate-up", "no-up"],
)
def test_inconsistent_recipes_are_rejected(edit: Any, match: str) -> None:
    data = _llama_dict()
    edit(data)
    with pytest.raises(ValueError, match=match):
        Recipe.from_dict(data)


def test_shared_head_tensors_parse_and_round_trip() -> None:
    recipe = shipped_recipes()["mpnet"]
    (entry,) = recipe.attention.shared_head_tensors
    assert isinstance(entry, SharedHeadTensor)
    assert (entry.parameter, entry.dim, entry.module_attributes) == (
        "encoder.relative_attention_bias.weight",
        1,
        {"embedding_dim": "heads"},
    )
    assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe
    assert shipped_recipes()["llama"].attention.shared_head_tensors == []  # optional: absent from every other recipe


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ({"encoder.bias.weight": 1}, "a list of"),
        ([{"parameter": "encoder.bias.weight"}], "missing 1 required positional argument: 'dim'"),
        ([{"parameter": "encoder.bias.weight", "dim": -1}], "`dim` must be an axis index >= 0"),
        ([{"parameter": "encoder.bias.weight", "dim": 1, "axis": 1}], r"unknown key\(s\) \['axis'\]"),
        (
            [{"parameter": "encoder.bias.weight", "dim": 1, "module_attributes": {"n": "columns"}}],
            "maps to unknown quantity 'columns'",
        ),
    ],
    ids=["not-a-list", "no-dim", "negative-dim", "unknown-key", "unknown-quantity"],
)
def test_malformed_shared_head_tensors_are_recipe_errors(entries: Any, match: str) -> None:
    data = _llama_dict()
    data["attention"]["shared_head_tensors"] = entries
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict(data)
