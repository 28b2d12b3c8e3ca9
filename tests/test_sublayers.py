"""Attention-only and MLP-only removal (hf_prune/depth.py, ``depth.sublayers`` in the recipes): the model without a
block's attention (or MLP) equals the dense one with that sublayer's output zeroed, in forward and in cached
generation (the hard case: block 0's attention, which the KV cache counts sequence lengths by, and Gemma 3's sliding
window); backward; closed-form counts; save -> load through hf_prune and without it; the scores; and the errors."""

from __future__ import annotations

import copy
import json
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import transformers as T

import hf_prune
from hf_prune.depth import DepthPlan, remove_sublayers, sublayer_scores, sublayers_skipped
from hf_prune.recipe import RecipeError, shipped_recipes
from hf_prune.structure import ModelStructure

from .architectures import CASES_BY_NAME, MOE_CASES_BY_NAME
from .test_architectures import _assert_loads_without_hf_prune, _assert_same_generation

ATOL = 1e-5
# Causal LMs with a `depth.sublayers` section: plain, with layer types, with post-norms and a sliding window, MoE.
NAMES = ["llama", "qwen2", "qwen3", "phi3", "gemma3", "gemma2", "mixtral", "qwen2_moe", "gpt_oss"]
ONLY = {"heads": 0.0, "neurons": 0.0, "experts": 0.0, "expert_neurons": 0.0}


def _build(name: str) -> torch.nn.Module:
    if name == "gpt_oss":  # one layer type per block
        layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
        return MOE_CASES_BY_NAME[name].build(num_hidden_layers=3, layer_types=layer_types)
    if name in MOE_CASES_BY_NAME:
        return MOE_CASES_BY_NAME[name].build(num_hidden_layers=3)
    return CASES_BY_NAME[name].build()


def _ids(length: int = 10) -> torch.Tensor:
    return torch.randint(3, 90, (2, length), generator=torch.Generator().manual_seed(0))


def _calibration() -> list[dict[str, torch.Tensor]]:
    ids = _ids(12)
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}]


REMOVE = {"attention": [0, 2], "mlp": [1]}  # block 0's attention: the KV cache reads sequence lengths there


@pytest.mark.parametrize("name", NAMES)
def test_removed_sublayers_equal_zeroed_ones_in_forward_and_cached_generation(name: str) -> None:
    model = _build(name)
    twin = copy.deepcopy(model)
    structure = ModelStructure(model)
    sublayers = structure.recipe.depth.sublayers
    removed_parameters = sum(  # the sublayer, and the norms only it reads (input_layernorm...)
        p.numel()
        for part, blocks in REMOVE.items()
        for i in blocks
        for path in (sublayers[part].module, *sublayers[part].norms)
        for p in structure.layers[i].get_submodule(path).parameters()
    )
    assert all(sublayers[part].norms for part in REMOVE)
    dense_parameters = sum(p.numel() for p in model.parameters())
    remove_sublayers(structure, REMOVE)
    assert ModelStructure(model).removed_sublayers == REMOVE
    assert dense_parameters - sum(p.numel() for p in model.parameters()) == removed_parameters  # closed form
    counts = ModelStructure(model).shapes()
    assert counts[0]["heads"] == counts[2]["heads"] == 0 and counts[1]["heads"] > 0

    ids = _ids()
    skip = partial(sublayers_skipped, ModelStructure(twin), REMOVE)
    with skip(), torch.no_grad():
        masked_logits = twin(ids).logits
        assert (masked_logits - _build(name)(ids).logits).abs().max() > 1e-3  # removing them changes the model
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, masked_logits, atol=ATOL, rtol=0)
    # past Gemma 3's sliding window of 8
    _assert_same_generation(
        model, twin, ids, skip, attention_mask=torch.ones_like(ids), max_new_tokens=12, pad_token_id=0
    )

    model.train()
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.model.layers[1].self_attn.parameters())


def test_checkpoints_load_through_hf_prune_and_without_it(tmp_path: Path) -> None:
    ids, directories = _ids(), []  # items for the loader without hf_prune
    for name in ("llama", "gemma3", "mixtral"):
        model = _build(name)
        remove_sublayers(ModelStructure(model), REMOVE)
        directory = tmp_path / name
        hf_prune.save_pretrained(model, directory)
        config = json.loads((directory / "config.json").read_text())
        assert config["hf_prune"]["removed_sublayers"] == REMOVE and "auto_map" in config
        assert "blocks without a sublayer" in config["hf_prune"]["not_vanilla_because"]
        with torch.no_grad():
            logits = model(ids).logits
        torch.save({"inputs": {"input_ids": ids}, "logits": logits}, f"{directory}.pt")
        directories.append({"dir": str(directory), "auto": "AutoModelForCausalLM", "vanilla": False})
        loaded = hf_prune.from_pretrained(directory).eval()
        assert ModelStructure(loaded).removed_sublayers == REMOVE
        # Plain transformers refuses it rather than rebuilding the removed modules with random weights.
        with pytest.raises(RuntimeError, match="is a per-layer attribute"):
            T.AutoModelForCausalLM.from_pretrained(directory)
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, logits, atol=ATOL, rtol=0)

    _assert_loads_without_hf_prune(directories)


def test_prune_removes_the_least_influential_sublayers_after_heads_and_neurons() -> None:
    model = _build("llama")
    report = hf_prune.prune(
        model, heads=0.25, neurons=0.25, attention_layers=0.34, mlp_layers=0.34, calibration=_calibration()
    )
    sublayers = report.extra["sublayers"]
    assert sublayers["criterion"] == "block_influence"
    for part in ("attention", "mlp"):
        scores = sublayers["scores"][part]
        assert len(scores) == 3 and sublayers["removed"][part] == [min(range(3), key=lambda i: scores[i])]
    attention_gone, mlp_gone = sublayers["removed"]["attention"][0], sublayers["removed"]["mlp"][0]
    assert report.layers_after[attention_gone]["heads"] == 0 and report.layers_after[mlp_gone]["neurons"] == 0
    assert report.kept[attention_gone]["keep_heads"] == [] and not report.vanilla_loadable
    assert report.after.parameters == sum(p.numel() for p in model.parameters())
    card = str(hf_prune.build_model_card(report))
    assert f"the attention sublayer of 1 block ({attention_gone}, chosen by block influence)" in card


def test_block_influence_of_a_sublayer_is_one_minus_the_cosine_of_the_stream_it_changes() -> None:
    """Computed by hand for block 1's attention: 1 - cos(x, x + attention(norm(x))), averaged over the tokens."""
    model = _build("llama")
    structure = ModelStructure(model)
    batch = _calibration()[0]
    scores = sublayer_scores(structure, [batch], "block_influence", ["attention", "mlp"])
    captured = {}
    block = model.model.layers[1]
    handles = [
        block.register_forward_hook(
            lambda m, a, k, o: captured.update(x=k.get("hidden_states", a[0] if a else None)), with_kwargs=True
        ),
        block.self_attn.register_forward_hook(lambda m, a, o: captured.update(a=o[0])),
    ]
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for handle in handles:
        handle.remove()
    x, a = captured["x"], captured["a"]
    expected = (1 - torch.nn.functional.cosine_similarity(x.double(), (x + a).double(), dim=-1)).mean()
    assert float(scores["attention"][1]) == pytest.approx(float(expected), rel=1e-5)
    assert scores["mlp"].shape == (3,) and bool((scores["mlp"] > 0).all())


def test_a_sublayer_the_block_does_not_add_as_declared_is_refused() -> None:
    """Gemma 3 adds its attention through a post-norm: without `added`, the residual check names the fix."""
    recipe = shipped_recipes()["gemma3"].to_dict()
    recipe["depth"]["sublayers"]["attention"]["added"] = None
    model = _build("gemma3")
    with pytest.raises(RecipeError, match="`added:` for a post-norm"):
        sublayer_scores(ModelStructure(model, recipe), _calibration(), "block_influence", ["attention"])


def test_bad_requests_are_refused_before_any_work_and_leave_the_model_untouched() -> None:
    model = _build("llama")
    state = copy.deepcopy(model.state_dict())
    calibration = _calibration()
    with pytest.raises(ValueError, match="removes the attention sublayer of all 3 blocks"):
        hf_prune.prune(model, attention_layers=0.9, calibration=calibration, **ONLY)
    with pytest.raises(ValueError, match="with a flops/params/latency target is not supported"):
        hf_prune.prune(model, attention_layers=0.34, params=0.2, calibration=calibration)
    with pytest.raises(ValueError, match="layer_importance='angular' ranks spans"):
        hf_prune.prune(model, mlp_layers=0.34, layer_importance="angular", calibration=calibration, **ONLY)
    with pytest.raises(ValueError, match="refusing to remove the mlp sublayer of every block"):
        remove_sublayers(ModelStructure(model), {"mlp": [0, 1, 2]})
    with pytest.raises(ValueError, match="PruningCallback does not remove them during training"):
        hf_prune.PruningCallback(attention_layers=0.25)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not ModelStructure(model).removed_sublayers

    bert = CASES_BY_NAME["bert"].build()  # post-norm blocks: a zero attention output is no identity there
    with pytest.raises(RecipeError, match="names no way to remove the attention sublayer on its own"):
        hf_prune.prune(bert, attention_layers=0.34, calibration=calibration, **ONLY)

    remove_sublayers(ModelStructure(model), {"attention": [1]})
    with pytest.raises(ValueError, match="does not prune such a model further"):
        hf_prune.prune(model, heads=0.25, importance="magnitude", reconstruct=False)


def test_cli_removes_sublayers_self_calibrated_and_the_card_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    from .cli_run import run_cli

    _build("llama").save_pretrained(tmp_path / "dense")
    output = tmp_path / "pruned"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code, _, err = run_cli(
            capsys, "prune", tmp_path / "dense", "--attention-layers", "0.34", "--heads", "0", "--neurons", "0",
            "--calibration-samples", "4", "--output", output,
        )  # fmt: skip
    assert code == 0, err
    report = json.loads((output / "pruning_report.json").read_text())
    assert len(report["extra"]["sublayers"]["removed"]["attention"]) == 1 and not report["vanilla_loadable"]
    assert "attention sublayer of 1 block" in (output / "README.md").read_text()
    loaded = hf_prune.from_pretrained(output)
    assert list(ModelStructure(loaded).removed_sublayers) == ["attention"]
    code, out, _ = run_cli(capsys, "inspect", output)  # the table marks the block
    block = report["extra"]["sublayers"]["removed"]["attention"][0]
    assert code == 0 and "(attention removed)" in next(
        line for line in out.splitlines() if line.startswith(f"{block:>5}")
    )
    code, out, _ = run_cli(capsys, "inspect", output, "--json")
    assert json.loads(out)["removed_sublayers"] == {"attention": [block]}


def test_onnx_export_holds_removed_sublayers_and_gguf_writes_no_op_blocks(tmp_path: Path) -> None:
    """ONNX traces any layout. GGUF writes llama.cpp's per-layer `deci` architecture, whose graph runs a block with
    0 heads without attention and one with FFN width 0 without FFN: the removed sublayers' tensors (and their norms)
    are not in the file. Families whose llama.cpp architecture cannot skip a sublayer are refused by name."""
    import gguf

    from hf_prune.export import ExportError

    from .export_models import llama_without_sublayers

    folder = llama_without_sublayers(tmp_path / "pruned", {"attention": [1, 2], "mlp": [1]})
    result = hf_prune.export_checkpoint(folder, tmp_path / "pruned.onnx", format="onnx")
    assert (tmp_path / "pruned.onnx").exists() and result["max_abs_diff"] <= 1e-4

    info = hf_prune.export_checkpoint(folder, tmp_path / "pruned.gguf", format="gguf", outtype="f32")
    assert (info["arch"], info["layout"]) == ("deci", "per_layer")
    reader = gguf.GGUFReader(tmp_path / "pruned.gguf")

    def field(name: str) -> object:
        value = reader.fields[name]
        parts = [value.parts[i].tolist() for i in value.data]
        return [p[0] for p in parts] if len(parts) > 1 else parts[0][0]

    assert field("deci.attention.head_count") == [8, 0, 0]
    assert field("deci.attention.head_count_kv") == [2, 0, 0]
    assert field("deci.feed_forward_length") == [96, 0, 96]
    names = {t.name for t in reader.tensors}
    assert not {n for n in names if n.startswith(("blk.1.", "blk.2.attn"))}  # norms included: llama.cpp reads none
    assert {"blk.2.ffn_norm.weight", "blk.2.ffn_down.weight", "blk.0.attn_norm.weight"} <= names

    # What llama.cpp cannot run is refused before writing (found by running it: tests/test_export_llama_cpp.py).
    refused = {
        "qwen3": ({"mlp": [1]}, T.Qwen3Config, T.Qwen3ForCausalLM, "no llama.cpp architecture named for this family"),
        "block0": ({"attention": [0]}, T.LlamaConfig, T.LlamaForCausalLM, "only where block 0 has attention heads"),
        "ffn-only": ({"mlp": [1]}, T.LlamaConfig, T.LlamaForCausalLM, r"drops the attention output .*blocks \[1\]"),
        "last": ({"attention": [2], "mlp": [2]}, T.LlamaConfig, T.LlamaForCausalLM, "last block has no FFN"),
    }
    for name, (remove, config_cls, model_cls, why) in refused.items():
        folder = llama_without_sublayers(tmp_path / name, remove, config_cls, model_cls)
        with pytest.raises(ExportError, match=f"blocks without a sublayer .*{why}"):
            hf_prune.export_checkpoint(folder, tmp_path / f"{name}.gguf", format="gguf")
        assert not (tmp_path / f"{name}.gguf").exists()


def test_records_that_older_readers_would_misread_carry_format_2(tmp_path: Path) -> None:
    """Removed sublayers (and neurons inside experts) are format 2: hf_prune of format 1 would ignore them and build a
    model the weights do not fit. Checkpoints without them stay format 1, readable by older hf_prune."""
    plain = _build("llama")
    hf_prune.prune(plain, heads=0.5, importance="magnitude", reconstruct=False)
    hf_prune.save_pretrained(plain, tmp_path / "plain")
    skipped = _build("llama")
    remove_sublayers(ModelStructure(skipped), {"mlp": [1]})
    hf_prune.save_pretrained(skipped, tmp_path / "skipped")
    moe = _build("mixtral")
    hf_prune.prune(moe, experts=0.34, importance="random", reconstruct=False)
    hf_prune.save_pretrained(moe, tmp_path / "moe")
    versions = [
        json.loads((tmp_path / name / "config.json").read_text())["hf_prune"]["format_version"]
        for name in ("plain", "skipped", "moe")
    ]
    assert versions == [1, 2, 2]


def test_blocks_then_sublayers_in_one_call_keep_protected_blocks_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """layers= removes blocks first; the sublayers are then chosen among the blocks that remain, with the protected
    ones renumbered past the removed blocks (block 2 of 3 is block 1 once block 0 is gone)."""
    prune_module = sys.modules["hf_prune.prune"]  # the module (the package's `prune` is the function)
    seen: list[list[int]] = []
    plan = prune_module.plan_sublayers

    def recording(structure, batches, fractions, criterion, protected):  # type: ignore[no-untyped-def]
        seen.append(list(protected))
        return plan(structure, batches, fractions, criterion, protected)

    monkeypatch.setattr(prune_module, "plan_sublayers", recording)
    monkeypatch.setattr(prune_module, "plan_depth", lambda *args, **kwargs: DepthPlan("given", [0]))
    model = _build("llama")
    report = hf_prune.prune(
        model, layers=0.34, attention_layers=0.5, protected_layers=[2], calibration=_calibration(), **ONLY
    )
    assert report.removed_layers == [0] and seen == [[1]]
    assert report.extra["sublayers"]["removed"]["attention"] == [0]  # of the 2 left, the one not protected
