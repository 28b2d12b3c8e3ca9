"""Bad input: every mistake gets an error that names the problem and the fix, and leaves the model untouched."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as T
import yaml
from torch import nn

import hf_prune
from hf_prune import surgery
from hf_prune.recipe import Recipe, recipes_dir, shipped_recipes
from hf_prune.structure import ModelStructure

from .architectures import CASES_BY_NAME, STRUCTURE_ONLY


def _llama() -> nn.Module:
    return CASES_BY_NAME["llama"].build()  # 3 layers, 8 query heads / 2 KV heads, head_dim 16, 96 neurons


def _snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything pruning could change: weights (values and shapes), module attributes and the config."""
    return {
        "state": {name: tensor.detach().clone() for name, tensor in model.state_dict().items()},
        "attributes": {
            name: {k: v for k, v in vars(module).items() if isinstance(v, int | float | str | bool)}
            for name, module in model.named_modules()
        },
        "config": model.config.to_dict(),
        "class": type(model),
    }


def _assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    after = _snapshot(model)
    assert after["class"] is before["class"]
    assert after["config"] == before["config"]
    assert after["attributes"] == before["attributes"]
    assert after["state"].keys() == before["state"].keys()
    for name, tensor in before["state"].items():
        assert after["state"][name].shape == tensor.shape, f"{name} changed shape"
        assert torch.equal(after["state"][name], tensor), f"{name} changed values"


def _llama_recipe(tmp_path: Path, edit: Any = None, text: str | None = None) -> str:
    """A copy of the shipped llama recipe with ``edit(data)`` applied (or raw ``text``), as a YAML path."""
    path = tmp_path / "my_recipe.yaml"
    if text is None:
        data = yaml.safe_load((recipes_dir() / "llama.yaml").read_text(encoding="utf-8"))
        if edit is not None:
            edit(data)
        text = yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------------------
# Architectures without a recipe, and recipes that do not match the model.
# ---------------------------------------------------------------------------------------------------------


def _electra() -> nn.Module:
    config = T.ElectraConfig(
        vocab_size=96,
        embedding_size=32,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    return T.ElectraModel(config).eval()


def _opt() -> nn.Module:
    config = T.OPTConfig(
        vocab_size=96,
        hidden_size=64,
        ffn_dim=96,
        word_embed_proj_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    return T.OPTForCausalLM(config).eval()


@pytest.mark.parametrize(("build", "model_type"), [(_electra, "electra"), (_opt, "opt")], ids=["electra", "opt"])
def test_unknown_architecture_lists_shipped_recipes_and_how_to_write_one(build: Any, model_type: str) -> None:
    model = build()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=f"no recipe for model_type '{model_type}'") as info:
        hf_prune.prune(model, heads=0.5, neurons=0.5, **STRUCTURE_ONLY)
    message = str(info.value)
    for name in shipped_recipes():
        assert name in message
    assert "Write a YAML recipe" in message and "recipe='path/to/recipe.yaml'" in message
    assert "recipes --show llama" in message  # where to find a complete example
    _assert_untouched(model, before)


def test_unknown_recipe_name_lists_shipped_recipes() -> None:
    model = _llama()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"unknown recipe 'lama'\. Shipped recipes: bert, distilbert"):
        hf_prune.prune(model, recipe="lama", heads=0.5)
    _assert_untouched(model, before)


def test_missing_recipe_file_is_named(tmp_path: Path) -> None:
    model = _llama()
    with pytest.raises(FileNotFoundError, match=r"recipe file '.*nope\.yaml' does not exist"):
        hf_prune.prune(model, recipe=str(tmp_path / "nope.yaml"), heads=0.5)


@pytest.mark.parametrize(
    ("edit", "error", "names"),
    [
        (lambda r: r["attention"].update(q="self_attn.query_proj"), AttributeError, ["'self_attn.query_proj'"]),
        (lambda r: r["mlp"].update(down="mlp.down"), AttributeError, ["'mlp.down'"]),
        (lambda r: r.update(layers=["decoder.layers"]), AttributeError, ["['decoder.layers']", "layers:"]),
    ],
    ids=["attention-path", "mlp-path", "layer-list"],
)
def test_recipe_naming_missing_modules_is_refused(
    tmp_path: Path, edit: Any, error: type[Exception], names: list[str]
) -> None:
    model = _llama()
    before = _snapshot(model)
    with pytest.raises(error) as info:
        hf_prune.prune(model, recipe=_llama_recipe(tmp_path, edit), heads=0.5, neurons=0.5)
    message = str(info.value)
    for name in names:
        assert name in message
    assert "print(model)" in message  # how to find the right names
    _assert_untouched(model, before)


@pytest.mark.parametrize("where", ["attention", "mlp"])
def test_recipe_with_missing_module_attribute_path_leaves_model_untouched(tmp_path: Path, where: str) -> None:
    def edit(recipe: dict[str, Any]) -> None:
        recipe[where]["module_attributes"] = {"self_atn": {"num_key_value_groups": "kv_groups"}}

    model = _llama()
    before = _snapshot(model)
    with pytest.raises(AttributeError, match="'self_atn'"):
        hf_prune.prune(model, recipe=_llama_recipe(tmp_path, edit), heads=0.5, neurons=0.5)
    _assert_untouched(model, before)


@pytest.mark.parametrize(
    ("edit", "bad_key"),
    [
        (lambda r: r.update(atention=r.pop("attention")), "atention"),
        (lambda r: r["attention"].update(query="self_attn.q_proj"), "query"),
        (lambda r: r["mlp"].update(intermediate_size="intermediate_size"), "intermediate_size"),
        (lambda r: r["targets"].update(blocks=0.5), "blocks"),  # experts is a target since MoE recipes
    ],
    ids=["top-level", "attention", "mlp", "targets"],
)
def test_recipe_with_unknown_key_names_it_and_the_allowed_keys(tmp_path: Path, edit: Any, bad_key: str) -> None:
    path = _llama_recipe(tmp_path, edit)
    with pytest.raises(ValueError, match=rf"unknown key\(s\) \['{bad_key}'\]; allowed keys are \[") as info:
        Recipe.from_yaml(path)
    assert "my_recipe.yaml" in str(info.value) or "recipe 'llama'" in str(info.value)  # says which file/recipe
    model = _llama()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=bad_key):
        hf_prune.prune(model, recipe=path, heads=0.5)
    _assert_untouched(model, before)


@pytest.mark.parametrize(
    "text",
    [
        "name: llama\nattention: {q: self_attn.q_proj\n",  # unclosed flow mapping
        "name: llama\n  model_types: [llama]\n layers: [layers]\n",  # broken indentation
        "name: [llama\n",
    ],
    ids=["unclosed-mapping", "indentation", "unclosed-list"],
)
def test_invalid_yaml_recipe_is_refused_with_its_path(tmp_path: Path, text: str) -> None:
    path = _llama_recipe(tmp_path, text=text)
    model = _llama()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"recipe file '.*my_recipe.yaml' is not valid YAML"):
        hf_prune.prune(model, recipe=path, heads=0.5)
    _assert_untouched(model, before)


def test_recipe_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = _llama_recipe(tmp_path, text="- layers\n- attention\n")
    with pytest.raises(ValueError, match="expected a mapping at the top level, got list"):
        Recipe.from_yaml(path)


def test_recipe_missing_projections_says_which_are_needed(tmp_path: Path) -> None:
    path = _llama_recipe(tmp_path, lambda r: r["attention"].pop("k"))
    with pytest.raises(ValueError, match="either `qkv` \\(fused\\) or all of `q`, `k` and `v`"):
        Recipe.from_yaml(path)
    path = _llama_recipe(tmp_path, lambda r: r["attention"].pop("o"))
    with pytest.raises(ValueError, match=r"attention.*'o'"):
        Recipe.from_yaml(path)


# ---------------------------------------------------------------------------------------------------------
# Fractions.
# ---------------------------------------------------------------------------------------------------------

BAD_FRACTIONS = [-0.1, 1.0, 1.5, True]


@pytest.mark.parametrize("value", BAD_FRACTIONS, ids=repr)
@pytest.mark.parametrize("name", ["heads", "neurons"])
def test_fraction_outside_unit_interval_is_refused(name: str, value: Any) -> None:
    expected = rf"`{name}` must be a fraction in \[0, 1\) \(0.5 removes half\), got {value!r}"
    with pytest.raises(ValueError, match=expected):
        hf_prune.PruningConfig(**{name: value})
    model = _llama()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=expected):
        hf_prune.prune(model, **{name: value})
    with pytest.raises(ValueError, match=expected):
        hf_prune.prune(model, hf_prune.PruningConfig(), **{name: value})
    _assert_untouched(model, before)


@pytest.mark.parametrize("value", BAD_FRACTIONS, ids=repr)
def test_recipe_default_target_outside_unit_interval_is_refused(tmp_path: Path, value: Any) -> None:
    path = _llama_recipe(tmp_path, lambda r: r["targets"].update(neurons=value))
    with pytest.raises(ValueError, match=r"`neurons` must be a fraction in \[0, 1\)"):
        Recipe.from_yaml(path)


def test_protected_layer_out_of_range_is_refused() -> None:
    model = _llama()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="protected layer 7 does not exist \\(the model has 3\\)"):
        hf_prune.prune(model, heads=0.5, protected_layers=[7])
    _assert_untouched(model, before)


# ---------------------------------------------------------------------------------------------------------
# Targets that would empty a layer, and GQA layouts that cannot be kept valid.
# ---------------------------------------------------------------------------------------------------------


def _layer0(model: nn.Module) -> tuple[nn.Module, dict[str, Any], int]:
    structure = ModelStructure(model)
    return structure.layers[0], structure.recipe_dict, structure.head_dim


@pytest.mark.parametrize("case", ["llama", "bert", "gpt2", "phi3"])
def test_surgery_refuses_to_empty_a_layer(case: str) -> None:
    model = CASES_BY_NAME[case].build()
    layer, recipe, head_dim = _layer0(model)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="refusing to remove every attention head of a layer; keep at least one"):
        surgery.prune_attention(layer, recipe, head_dim, keep_heads=[])
    with pytest.raises(ValueError, match="refusing to remove every MLP neuron of a layer; keep at least one"):
        surgery.prune_mlp(layer, recipe, head_dim, [])
    _assert_untouched(model, before)


def test_surgery_refuses_out_of_range_indices() -> None:
    model = _llama()
    layer, recipe, head_dim = _layer0(model)
    before = _snapshot(model)
    with pytest.raises(IndexError, match="the layer has 8 query and 2 KV heads"):
        surgery.prune_attention(layer, recipe, head_dim, [0, 1, 2, 3, 4, 5, 6, 8], [0, 1])
    with pytest.raises(IndexError, match="the layer has 96 neurons"):
        surgery.prune_mlp(layer, recipe, head_dim, [0, 96])
    _assert_untouched(model, before)


@pytest.mark.parametrize("ranking", ["uniform", "global"])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "gqa_mode"), [(8, 8, "auto"), (8, 2, "auto"), (8, 2, "query_heads"), (8, 1, "auto")]
)
def test_plan_never_empties_a_layer(ranking: str, heads: int, kv_heads: int, gqa_mode: str) -> None:
    generator = torch.Generator().manual_seed(0)
    head_scores = [torch.rand(heads, generator=generator) for _ in range(4)]
    neuron_scores = [torch.rand(n, generator=generator) for n in (1, 5, 96, 300)]
    plans = hf_prune.plan_pruning(
        head_scores, [kv_heads] * 4, neuron_scores, 0.99, 0.99, ranking=ranking, gqa_mode=gqa_mode, neuron_multiple=8
    )
    for plan in plans:
        assert plan.keep_heads and plan.keep_kv_heads and plan.keep_neurons
        surgery.check_gqa_mapping(heads, kv_heads, plan.keep_heads, plan.keep_kv_heads)


def test_prune_at_099_keeps_one_unit_per_layer() -> None:
    model = _llama()
    report = hf_prune.prune(model, heads=0.99, neurons=0.99, neuron_multiple=1, **STRUCTURE_ONLY)
    assert report.layers_after == [{"heads": 4, "kv_heads": 1, "neurons": 1}] * 3
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[3, 4, 5]])).logits).all()


@pytest.mark.parametrize(
    ("keep_heads", "keep_kv", "match"),
    [
        ([0, 1, 2, 4], [0, 1], "would serve"),  # 3 query heads in group 0, 1 in group 1
        ([0, 1, 2, 4], None, "would serve"),  # KV heads inferred from the query heads
        ([0, 1], [0, 1], "would serve"),  # KV head 1 would serve no query head
        ([0, 1, 4, 5], [0], "query head 4 reads KV head 1, which is being removed"),
    ],
    ids=["unbalanced", "unbalanced-inferred", "orphan-kv", "orphan-query"],
)
def test_unbalanced_gqa_keep_set_is_refused(keep_heads: list[int], keep_kv: list[int] | None, match: str) -> None:
    model = _llama()
    layer, recipe, head_dim = _layer0(model)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=match) as info:
        surgery.prune_attention(layer, recipe, head_dim, keep_heads, keep_kv)
    assert "same number of query heads from every group" in str(info.value) or "whole KV groups" in str(info.value)
    _assert_untouched(model, before)


def test_kv_groups_on_a_single_kv_head_names_query_heads() -> None:
    model = CASES_BY_NAME["gemma3_mqa"].build()  # 8 query heads, 1 KV head
    before = _snapshot(model)
    with pytest.raises(ValueError, match="gqa_mode='kv_groups' cannot prune a layer with a single KV head") as info:
        hf_prune.prune(model, heads=0.5, gqa_mode="kv_groups")
    assert "gqa_mode='query_heads'" in str(info.value)
    _assert_untouched(model, before)


def test_unknown_gqa_mode_and_ranking_are_refused() -> None:
    with pytest.raises(ValueError, match=r"gqa_mode must be one of .*'kv_groups'.*got 'groups'"):
        hf_prune.PruningConfig(gqa_mode="groups")
    with pytest.raises(ValueError, match=r"ranking must be one of .*'global'.*got 'layerwise'"):
        hf_prune.PruningConfig(ranking="layerwise")
    with pytest.raises(ValueError, match="neuron_multiple must be a positive integer, got 0"):
        hf_prune.PruningConfig(neuron_multiple=0)


# ---------------------------------------------------------------------------------------------------------
# Quantized models.
# ---------------------------------------------------------------------------------------------------------


class Linear8bitLt(nn.Linear):
    """Stands in for bitsandbytes' int8 layer: an nn.Linear subclass whose weight holds int8 codes."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None)
        codes = (linear.weight.detach() * 127 / linear.weight.detach().abs().max()).round().to(torch.int8)
        self.weight = nn.Parameter(codes, requires_grad=False)


def _quantize_k_proj(model: nn.Module, layer: int) -> None:
    attention = model.model.layers[layer].self_attn
    attention.k_proj = Linear8bitLt(attention.k_proj)


def test_quantized_projection_is_refused_with_its_path() -> None:
    model = _llama()
    _quantize_k_proj(model, 0)
    before = _snapshot(model)
    with pytest.raises(TypeError, match=r"'self_attn\.k_proj' is a Linear8bitLt") as info:
        hf_prune.prune(model, heads=0.5, neurons=0.5, **STRUCTURE_ONLY)
    assert "load the model in float32/float16/bfloat16, prune it, then quantize" in str(info.value)
    _assert_untouched(model, before)


def test_quantized_projection_in_a_later_layer_is_refused() -> None:
    model = _llama()
    _quantize_k_proj(model, 2)
    before = _snapshot(model)
    with pytest.raises(TypeError, match="Linear8bitLt"):
        hf_prune.prune(model, heads=0.5, neurons=0.5, **STRUCTURE_ONLY)
    _assert_untouched(model, before)


def _bnb_quantizer() -> Any:
    return types.SimpleNamespace(quantization_config=types.SimpleNamespace(quant_method="bitsandbytes"))


def test_model_with_a_quantizer_is_refused() -> None:
    model = _llama()
    model.hf_quantizer = _bnb_quantizer()
    before = _snapshot(model)
    with pytest.raises(TypeError, match="this model is quantized with bitsandbytes; its weights cannot be sliced"):
        hf_prune.prune(model, heads=0.5, neurons=0.5, **STRUCTURE_ONLY)
    structure = ModelStructure(model)
    # apply_plan is public too: it must refuse on its own.
    plans = hf_prune.plan_pruning([torch.rand(8)] * 3, [2] * 3, [torch.rand(96)] * 3, 0.5, 0.5)
    with pytest.raises(TypeError, match="quantized with bitsandbytes"):
        hf_prune.apply_plan(structure, plans)
    _assert_untouched(model, before)


# ---------------------------------------------------------------------------------------------------------
# Saving.
# ---------------------------------------------------------------------------------------------------------


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def pruned_llama() -> nn.Module:
    model = _llama()
    hf_prune.prune(model, heads=0.5, neurons=0.5, **STRUCTURE_ONLY)
    return model


@pytest.fixture
def existing(tmp_path: Path) -> Path:
    """A previous checkpoint directory, with a nested file, in an otherwise empty parent."""
    target = tmp_path / "parent" / "checkpoint"
    (target / "nested").mkdir(parents=True)
    (target / "config.json").write_text('{"old": true}\n')
    (target / "nested" / "weights.bin").write_bytes(bytes(range(256)))
    return target


def test_save_into_non_empty_directory_refuses_and_changes_nothing(pruned_llama: nn.Module, existing: Path) -> None:
    before = _tree(existing)
    with pytest.raises(FileExistsError, match="already exists and is not empty; pass overwrite=True") as info:
        hf_prune.save_pretrained(pruned_llama, existing)
    assert "Nothing was written" in str(info.value)
    assert _tree(existing) == before
    assert sorted(p.name for p in existing.parent.iterdir()) == ["checkpoint"]


def test_save_onto_a_file_refuses(pruned_llama: nn.Module, tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.write_text("not a directory")
    with pytest.raises(FileExistsError, match="exists and is not a directory"):
        hf_prune.save_pretrained(pruned_llama, target, overwrite=True)
    assert target.read_text() == "not a directory"


def test_save_with_overwrite_replaces_atomically(pruned_llama: nn.Module, existing: Path) -> None:
    hf_prune.save_pretrained(pruned_llama, existing, overwrite=True)
    assert not (existing / "nested").exists(), "the old checkpoint must be replaced, not merged into"
    assert (existing / "config.json").read_text() != '{"old": true}\n'
    assert list(existing.glob("*.safetensors"))
    assert sorted(p.name for p in existing.parent.iterdir()) == ["checkpoint"], "no staging/backup dirs left"
    loaded = hf_prune.from_pretrained(existing)
    assert ModelStructure(loaded).shapes() == ModelStructure(pruned_llama).shapes()


@pytest.mark.parametrize("overwrite", [True, False])
def test_failure_during_save_keeps_previous_checkpoint(
    pruned_llama: nn.Module, existing: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    def broken_save(save_directory: Any, *args: Any, **kwargs: Any) -> None:
        (Path(save_directory) / "model.safetensors").write_bytes(b"half a file")  # midway
        raise RuntimeError("disk full")

    monkeypatch.setattr(pruned_llama, "save_pretrained", broken_save)
    before = _tree(existing)
    if overwrite:
        with pytest.raises(RuntimeError, match="disk full"):
            hf_prune.save_pretrained(pruned_llama, existing, overwrite=True)
    else:  # a fresh target: nothing may appear under its name
        fresh = existing.parent / "fresh"
        with pytest.raises(RuntimeError, match="disk full"):
            hf_prune.save_pretrained(pruned_llama, fresh)
        assert not fresh.exists()
    assert _tree(existing) == before
    assert sorted(p.name for p in existing.parent.iterdir()) == ["checkpoint"], "no staging dirs left behind"


def test_failure_of_the_final_rename_keeps_previous_checkpoint(
    pruned_llama: nn.Module, existing: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    real_replace = os.replace
    failures = [OSError("rename failed")]  # only the first rename onto the target fails (staging -> target)

    def flaky_replace(src: Any, dst: Any) -> None:
        if Path(dst) == existing.resolve() and failures:
            raise failures.pop()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    before = _tree(existing)
    with pytest.raises(OSError, match="rename failed"):
        hf_prune.save_pretrained(pruned_llama, existing, overwrite=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert existing.is_dir() and _tree(existing) == before
    assert sorted(p.name for p in existing.parent.iterdir()) == ["checkpoint"]


# ---------------------------------------------------------------------------------------------------------
# Loading a checkpoint written in a newer format.
# ---------------------------------------------------------------------------------------------------------


def _with_format(directory: Path, version: object) -> None:
    path = directory / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data[surgery.CONFIG_KEY]["format_version"] = version
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("uniform", [True, False], ids=["vanilla-loadable", "per-layer"])
def test_checkpoint_in_a_newer_format_is_refused_on_load(tmp_path: Path, uniform: bool) -> None:
    model = _llama()
    hf_prune.prune(model, heads=0.5, neurons=0.5, protected_layers=[] if uniform else [0])
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    newer = surgery.FORMAT_VERSION + 1
    _with_format(tmp_path / "pruned", newer)
    expected = (
        rf"written by hf_prune {hf_prune.__version__} with format {newer}; this hf_prune \({hf_prune.__version__}\) "
        rf"reads formats up to {surgery.FORMAT_VERSION}: upgrade hf_prune"
    )
    with pytest.raises(ValueError, match=expected):
        hf_prune.from_pretrained(tmp_path / "pruned")


def test_model_whose_config_has_a_newer_format_is_refused(pruned_llama: nn.Module) -> None:
    """A vanilla-loadable checkpoint loaded by plain transformers still carries the block: pruning it again
    reads the recorded recipe and head size, so the format is checked there too."""
    meta = getattr(pruned_llama.config, surgery.CONFIG_KEY)
    setattr(pruned_llama.config, surgery.CONFIG_KEY, {**meta, "format_version": surgery.FORMAT_VERSION + 1})
    with pytest.raises(ValueError, match=f"with format {surgery.FORMAT_VERSION + 1}; this hf_prune"):
        hf_prune.prune(pruned_llama, heads=0.2)


def test_checkpoint_in_a_newer_format_is_refused_by_the_shipped_loader(tmp_path: Path) -> None:
    """trust_remote_code runs the loader code saved with the checkpoint: it checks the format as well."""
    model = _llama()
    hf_prune.prune(model, heads=0.5, neurons=0.5, protected_layers=[0])
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    _with_format(tmp_path / "pruned", surgery.FORMAT_VERSION + 1)
    with pytest.raises(ValueError, match=f"reads formats up to {surgery.FORMAT_VERSION}: upgrade hf_prune"):
        T.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", trust_remote_code=True)


@pytest.mark.parametrize("version", ["2", 0, 1.5, None])
def test_checkpoint_with_a_damaged_format_version_is_refused(tmp_path: Path, version: object) -> None:
    model = _llama()
    hf_prune.prune(model, heads=0.5, neurons=0.5)
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    _with_format(tmp_path / "pruned", version)
    with pytest.raises(ValueError, match=rf"format_version={version!r} .*a format version is a positive integer"):
        hf_prune.from_pretrained(tmp_path / "pruned")
