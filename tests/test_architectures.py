"""Every shipped recipe on a tiny random model: masks == surgery, generate, backward, save/load, parameter count."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers as T

import hf_prune
from hf_prune.importance import get_importance
from hf_prune.structure import ModelStructure

from .architectures import CASES, STRUCTURE_ONLY, Case

ATOL = 1e-5
IDS = [case.name for case in CASES]


def _inputs(case: Case) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 96, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if not case.decoder:
        attention_mask[1, 9:] = 0  # padding exercises the attention mask path
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _plan(model: torch.nn.Module, ranking: str, importance: str = "random") -> list[hf_prune.LayerPlan]:
    structure = ModelStructure(model)
    scores = get_importance(importance).scores(structure)
    shapes = structure.shapes()
    return hf_prune.plan_pruning(
        scores.heads, [s.kv_heads for s in shapes], scores.neurons, 0.5, 0.5, ranking=ranking, neuron_multiple=1
    )


def _masked_and_pruned(
    case: Case, ranking: str, attn: str = "sdpa"
) -> tuple[torch.nn.Module, torch.nn.Module, list[hf_prune.LayerPlan]]:
    pruned = case.build()
    pruned.set_attn_implementation(attn)
    masked = copy.deepcopy(pruned)
    plans = _plan(pruned, ranking)
    masks = hf_prune.MaskSet(ModelStructure(masked))
    masks.set_from_plan(plans)
    masks.attach()
    hf_prune.apply_plan(ModelStructure(pruned), plans)
    return masked, pruned, plans


@pytest.mark.parametrize("attn", ["sdpa", "eager"])  # eager reads num_key_value_groups: checks the recipes
@pytest.mark.parametrize("ranking", ["uniform", "global"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_masked_model_equals_pruned_model(case: Case, ranking: str, attn: str) -> None:
    masked, pruned, plans = _masked_and_pruned(case, ranking, attn)
    dense = case.build()
    inputs = _inputs(case)
    torch.testing.assert_close(_logits(pruned, inputs), _logits(masked, inputs), atol=ATOL, rtol=0)
    assert not torch.allclose(_logits(dense, inputs), _logits(masked, inputs), atol=1e-3), "masks must matter"
    shapes = ModelStructure(pruned).shapes()
    assert [s.heads for s in shapes] == [len(p.keep_heads) for p in plans]
    assert [s.neurons for s in shapes] == [len(p.keep_neurons) for p in plans]
    assert any(s.heads < ModelStructure(masked).shape(0).heads for s in shapes)


@pytest.mark.parametrize("case", [c for c in CASES if c.decoder], ids=[c.name for c in CASES if c.decoder])
def test_generate_with_kv_cache_matches_masked_model(case: Case) -> None:
    masked, pruned, _ = _masked_and_pruned(case, "global")
    prompt = _inputs(case)["input_ids"][:1, :5]
    kwargs = dict(max_new_tokens=6, do_sample=False, use_cache=True, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        out_pruned = pruned.generate(prompt, **kwargs)
        out_masked = masked.generate(prompt, **kwargs)
    assert torch.equal(out_pruned.sequences, out_masked.sequences)
    for a, b in zip(out_pruned.logits, out_masked.logits, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_reaches_pruned_weights(case: Case) -> None:
    _, pruned, _ = _masked_and_pruned(case, "global")
    pruned.train()
    inputs = _inputs(case)
    labels = inputs["input_ids"] if case.decoder else torch.tensor([0, 2])
    loss = pruned(**inputs, labels=labels).loss
    loss.backward()
    structure = ModelStructure(pruned)
    for i in range(structure.num_layers):
        for module in (structure.attention_output(i), structure.mlp_output(i)):
            assert module.weight.grad is not None
            assert module.weight.grad.shape == module.weight.shape
            assert torch.isfinite(module.weight.grad).all()


def _expected_parameters(case: Case, model: torch.nn.Module, before: list, after: list, head_dim: int) -> int:
    hidden = model.config.get_text_config().hidden_size
    per_head = 2 * hidden * head_dim + (head_dim if case.q_bias else 0)  # q rows + o columns
    per_kv = 2 * hidden * head_dim + (2 * head_dim if case.kv_bias else 0)  # k and v rows
    per_neuron = (case.mlp_in_projections + 1) * hidden + (1 if case.mlp_in_bias else 0)
    removed = sum(
        (b.heads - a.heads) * per_head + (b.kv_heads - a.kv_heads) * per_kv + (b.neurons - a.neurons) * per_neuron
        for b, a in zip(before, after, strict=True)
    )
    return sum(p.numel() for p in case.build().parameters()) - removed


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parameter_count_matches_closed_form(case: Case) -> None:
    model = case.build()
    structure = ModelStructure(model)
    before = structure.shapes()
    report = hf_prune.prune(model, heads=0.5, neurons=0.5, ranking="global", **STRUCTURE_ONLY)
    after = structure.shapes()
    assert report.after.parameters == sum(p.numel() for p in model.parameters())
    assert report.after.parameters == _expected_parameters(case, model, before, after, structure.head_dim)
    assert report.after.parameters < report.before.parameters
    assert report.flops_ratio > 1.0


@pytest.mark.parametrize("ranking", ["uniform", "global"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_save_and_load_with_hf_prune_round_trips(case: Case, ranking: str, tmp_path: Path) -> None:
    model = case.build()
    report = hf_prune.prune(model, heads=0.5, neurons=0.5, ranking=ranking, importance="random", reconstruct=False)
    inputs = _inputs(case)
    expected = _logits(model, inputs)
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    assert list((tmp_path / "pruned").glob("*.safetensors")), "weights must be safetensors"
    assert not list((tmp_path / "pruned").glob("*.bin"))
    loaded = hf_prune.from_pretrained(tmp_path / "pruned")
    assert type(loaded).__name__ == type(case.build()).__name__
    torch.testing.assert_close(_logits(loaded.eval(), inputs), expected, atol=ATOL, rtol=0)
    assert ModelStructure(loaded).shapes() == ModelStructure(model).shapes()
    if ranking == "uniform":
        assert report.vanilla_loadable == case.vanilla_when_uniform


def _save_case(case: Case, ranking: str, directory: Path) -> dict[str, object]:
    model = case.build()
    report = hf_prune.prune(model, heads=0.5, neurons=0.5, ranking=ranking, importance="random", reconstruct=False)
    inputs = _inputs(case)
    hf_prune.save_pretrained(model, directory)
    torch.save({"inputs": inputs, "logits": _logits(model, inputs)}, directory.parent / f"{directory.name}.pt")
    auto = "AutoModelForCausalLM" if case.decoder else "AutoModelForSequenceClassification"
    return {"dir": str(directory), "auto": auto, "vanilla": report.vanilla_loadable}


LOADER = textwrap.dedent(
    """
    import json, sys, torch
    sys.modules["hf_prune"] = None  # prove that hf_prune is not needed (importing it now fails)
    import transformers
    results = []
    for item in json.loads(sys.argv[1]):
        auto = getattr(transformers, item["auto"])
        data = torch.load(item["dir"] + ".pt")
        kwargs = {} if item["vanilla"] else {"trust_remote_code": True}
        model = auto.from_pretrained(item["dir"], **kwargs).eval()
        with torch.no_grad():
            logits = model(**data["inputs"]).logits
        results.append([item["dir"], float((logits - data["logits"]).abs().max()), type(model).__module__])
    print(json.dumps(results))
    """
)


def test_checkpoints_load_without_hf_prune(tmp_path: Path) -> None:
    """Vanilla from_pretrained where promised, trust_remote_code otherwise; hf_prune not importable."""
    items = []
    for case in CASES:
        for ranking in ("uniform", "global"):
            items.append(_save_case(case, ranking, tmp_path / f"{case.name}-{ranking}"))
    assert any(item["vanilla"] for item in items) and not all(item["vanilla"] for item in items)
    result = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps(items)], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for (directory, max_diff, module), item in zip(json.loads(result.stdout.splitlines()[-1]), items, strict=True):
        assert max_diff <= ATOL, f"{directory}: outputs differ by {max_diff}"
        if item["vanilla"]:
            assert module.startswith("transformers.models."), f"{directory} should load with plain transformers"
        else:
            assert "modeling_pruned" in module, f"{directory} should load through the shipped loader code"


def test_heterogeneous_checkpoint_refuses_vanilla_load(tmp_path: Path) -> None:
    """A checkpoint whose layers differ must not silently load into a dense-shaped model."""
    case = next(c for c in CASES if c.name == "llama")
    model = case.build()
    report = hf_prune.prune(
        model, heads=0.5, neurons=0.5, protected_layers=[0], **STRUCTURE_ONLY
    )  # layer 0 stays whole
    assert not report.vanilla_loadable
    model.save_pretrained(tmp_path)  # the plain transformers route (what Trainer.save_model does)
    assert (tmp_path / "modeling_pruned.py").is_file() and (tmp_path / "surgery.py").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert "per_layer_config" in config and "auto_map" in config and config["architectures"] == ["LlamaForCausalLM"]
    assert "allow_global_per_layer_attribute_access" not in config
    with pytest.raises(Exception, match="per-layer attribute"):
        T.LlamaForCausalLM.from_pretrained(tmp_path)


def test_gpt2_conv1d_sizes_follow_the_sliced_weights(tmp_path: Path) -> None:
    """GPT-2's Conv1D keeps its sizes in `nx` (inputs) and `nf` (outputs): both must match the weights after
    pruning, and after restoring the structure when the checkpoint is loaded."""
    from transformers.pytorch_utils import Conv1D

    model = next(c for c in CASES if c.name == "gpt2").build()
    hf_prune.prune(model, heads=0.5, neurons=0.5, neuron_multiple=1, **STRUCTURE_ONLY)
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    for current in (model, hf_prune.from_pretrained(tmp_path / "pruned")):
        conv1d = {name: m for name, m in current.named_modules() if isinstance(m, Conv1D)}
        assert conv1d
        for name, module in conv1d.items():
            assert (module.nx, module.nf) == tuple(module.weight.shape), name
