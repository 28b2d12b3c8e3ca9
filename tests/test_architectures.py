"""Every shipped recipe on a tiny random model: masks == surgery, generate, backward, save/load, parameter count."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as T

import hf_prune
from hf_prune.importance import get_importance
from hf_prune.structure import ModelStructure

from .architectures import CASES, CASES_BY_NAME, PUBLISHED, STRUCTURE_ONLY, Case

ATOL = 1e-5
MATRIX = CASES + PUBLISHED  # synthetic rows, and every family at its smallest real checkpoint's dimensions
IDS = [case.name for case in MATRIX]
# The published rows' masked == pruned and save/load are the fraction sweep's and the CLI's job (further down);
# here they run in the full suite only, to keep CI short.
HEAVY = [pytest.param(case, id=case.name, marks=pytest.mark.slow) for case in PUBLISHED]
SYNTHETIC_IDS = [case.name for case in CASES]
PUBLISHED_IDS = [case.name for case in PUBLISHED]


def _inputs(case: Case) -> dict[str, torch.Tensor]:
    if case.inputs is not None:
        return case.inputs()
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
        scores.heads,
        [s.kv_heads for s in shapes],
        scores.neurons,
        0.5,
        0.5,
        ranking=ranking,
        neuron_multiple=1,
        tied_heads=bool(structure.recipe.attention.shared_head_tensors),  # MPNet: one position bias for all layers
    )


def _masked_and_pruned(
    case: Case, ranking: str, attn: str = "sdpa"
) -> tuple[torch.nn.Module, torch.nn.Module, list[hf_prune.LayerPlan]]:
    pruned = case.build()
    if attn == "sdpa" and not pruned._supports_sdpa:
        attn = "eager"  # Gemma 2's soft-capping has no SDPA path: eager is what it runs
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
@pytest.mark.parametrize("case", [*CASES, *HEAVY], ids=[*SYNTHETIC_IDS, *PUBLISHED_IDS])
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


def _pruned_with_masked_twin(
    build: Callable[[], torch.nn.Module], **settings: object
) -> tuple[torch.nn.Module, torch.nn.Module, Any]:
    """(a model pruned by ``hf_prune.prune(**settings)``, an unpruned copy masked with the same plan, the report)."""
    model = build()
    masked = copy.deepcopy(model)
    report = hf_prune.prune(model, **settings)
    masks = hf_prune.MaskSet(ModelStructure(masked))
    masks.set_from_plan([hf_prune.LayerPlan(**kept) for kept in report.kept])
    masks.attach()
    return model, masked, report


def _assert_same_generation(
    pruned: torch.nn.Module,
    masked: torch.nn.Module,
    prompt: torch.Tensor,
    masked_context: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
    **settings: object,
) -> Any:
    """Greedy generation with the KV cache gives the same tokens and, at every step, the same logits (``ATOL``);
    the masked model generates inside ``masked_context`` (hooks that skip what the pruned model removed). Returns
    the pruned model's output."""
    kwargs = dict(do_sample=False, use_cache=True, return_dict_in_generate=True, output_logits=True)
    kwargs.update(settings)
    with torch.no_grad():
        out_pruned = pruned.generate(prompt, **kwargs)
        with masked_context():
            out_masked = masked.generate(prompt, **kwargs)
    assert torch.equal(out_pruned.sequences, out_masked.sequences)
    for a, b in zip(out_pruned.logits, out_masked.logits, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    return out_pruned


@pytest.mark.parametrize("case", [c for c in MATRIX if c.decoder], ids=[c.name for c in MATRIX if c.decoder])
def test_generate_with_kv_cache_matches_masked_model(case: Case) -> None:
    masked, pruned, _ = _masked_and_pruned(case, "global")
    _assert_same_generation(pruned, masked, _inputs(case)["input_ids"][:1, :5], max_new_tokens=6)


@pytest.mark.parametrize("case", MATRIX, ids=IDS)
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
    dense = case.build()
    for entry in ModelStructure(dense).recipe.attention.shared_head_tensors:  # sliced once, with every block's heads
        tensor = dense.base_model.get_parameter(entry.parameter)
        removed += (before[0].heads - after[0].heads) * tensor.numel() // tensor.shape[entry.dim]
    return sum(p.numel() for p in dense.parameters()) - removed


@pytest.mark.parametrize("case", MATRIX, ids=IDS)
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
@pytest.mark.parametrize("case", [*CASES, *HEAVY], ids=[*SYNTHETIC_IDS, *PUBLISHED_IDS])
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
    return {"dir": str(directory), "auto": _auto_class(case), "vanilla": report.vanilla_loadable}


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
    for case in CASES:  # the published rows: test_cli_checkpoints_of_every_published_family_load_without_hf_prune
        for ranking in ("uniform", "global"):
            items.append(_save_case(case, ranking, tmp_path / f"{case.name}-{ranking}"))
    assert any(item["vanilla"] for item in items) and not all(item["vanilla"] for item in items)
    _assert_loads_without_hf_prune(items)


def _assert_loads_without_hf_prune(items: list[dict[str, object]]) -> None:
    """Load every saved item in one process where hf_prune cannot be imported, and compare with its logits."""
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


# ---------------------------------------------------------------------------------------------------------
# Every family at its smallest real checkpoint's dimensions, at the fractions users choose, through the CLI.
# ---------------------------------------------------------------------------------------------------------

FRACTIONS = (0.1, 0.25, 0.3, 0.5)


def _auto_class(case: Case) -> str:
    if case.inputs is not None:
        return "AutoModelForImageClassification"
    return "AutoModelForCausalLM" if case.decoder else "AutoModelForSequenceClassification"


def _target(fraction: float) -> dict[str, object]:
    """Alternate the two kinds of target users set: a fraction of heads and neurons, or of the parameters (with
    both rankings), so that every family meets each kind at two fractions."""
    if fraction in (0.1, 0.3):
        return {"params": fraction, "ranking": "global" if fraction == 0.3 else "uniform"}
    return {"heads": fraction, "neurons": fraction, "ranking": "global" if fraction == 0.5 else "uniform"}


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("case", PUBLISHED, ids=PUBLISHED_IDS)
def test_published_dimensions_prune_save_and_load_at_every_fraction(
    case: Case, fraction: float, tmp_path: Path
) -> None:
    """masked == pruned, a valid GQA layout, and a checkpoint that loads: vanilla where the report promises it (the
    config class accepted the counts), through hf_prune otherwise, with the reason recorded."""
    model = case.build()
    report = hf_prune.prune(model, importance="magnitude", reconstruct=False, **_target(fraction))
    inputs = _inputs(case)
    masked = case.build()
    masks = hf_prune.MaskSet(ModelStructure(masked))
    masks.set_from_plan([hf_prune.LayerPlan(**kept) for kept in report.kept])
    masks.attach()
    expected = _logits(model, inputs)
    torch.testing.assert_close(expected, _logits(masked, inputs), atol=ATOL, rtol=0)
    for layer in report.layers_after:
        assert layer["heads"] % layer["kv_heads"] == 0 and layer["heads"] >= 1 and layer["neurons"] >= 1
    assert report.after.parameters < report.before.parameters

    hf_prune.save_pretrained(model, tmp_path / "pruned")
    loaded = hf_prune.from_pretrained(tmp_path / "pruned").eval()
    torch.testing.assert_close(_logits(loaded, inputs), expected, atol=ATOL, rtol=0)
    if report.vanilla_loadable:
        assert report.not_vanilla_because == ""
        vanilla = getattr(T, _auto_class(case)).from_pretrained(tmp_path / "pruned").eval()
        assert type(vanilla).__module__.startswith("transformers.models.")
        torch.testing.assert_close(_logits(vanilla, inputs), expected, atol=ATOL, rtol=0)
    else:
        assert report.not_vanilla_because, "a checkpoint that needs hf_prune's loader says why"


def test_gemma3_270m_with_three_heads_falls_back_to_the_recorded_structure(tmp_path: Path) -> None:
    """Gemma 3 270M keeps 3 of its 4 heads at 0.25: Gemma3TextConfig refuses 640 % 3 != 0, so the checkpoint
    records its structure instead of crashing in save_pretrained (it did, after all the work)."""
    model = CASES_BY_NAME["gemma3-270m"].build()
    report = hf_prune.prune(model, heads=0.25, neurons=0.25, importance="magnitude", reconstruct=False)
    assert [layer["heads"] for layer in report.layers_after] == [3, 3]
    assert not report.vanilla_loadable
    assert "Gemma3TextConfig refuses 3 attention heads" in report.not_vanilla_because
    assert "not a multiple of the number of attention heads (3)" in report.not_vanilla_because
    assert report.not_vanilla_because in report.summary()
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["num_attention_heads"] == 4 and "auto_map" in config  # global values stay the valid dense ones
    inputs = _inputs(CASES_BY_NAME["gemma3-270m"])
    torch.testing.assert_close(
        _logits(hf_prune.from_pretrained(tmp_path / "pruned"), inputs), _logits(model, inputs), atol=ATOL, rtol=0
    )


def test_phi3_long_rope_refuses_fewer_heads_and_falls_back(tmp_path: Path) -> None:
    """Phi-3's long-RoPE factors must have (hidden_size / heads) / 2 entries: fewer heads fail Phi3Config's own
    validation, although the modeling code reads head_dim. The same mechanism catches it (no Phi-3 rule)."""
    head_dim = 96
    config = T.Phi3Config(
        vocab_size=128,
        hidden_size=768,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=64,
        original_max_position_embeddings=32,
        pad_token_id=0,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0] * (head_dim // 2),
            "long_factor": [2.0] * (head_dim // 2),
            "partial_rotary_factor": 1.0,
        },
    )
    torch.manual_seed(0)
    model = T.Phi3ForCausalLM(config).eval()
    report = hf_prune.prune(model, heads=0.25, neurons=0.25, importance="magnitude", reconstruct=False)
    assert not report.vanilla_loadable and "short_factor" in report.not_vanilla_because
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    inputs = _inputs(CASES_BY_NAME["phi3-mini"])
    torch.testing.assert_close(
        _logits(hf_prune.from_pretrained(tmp_path / "pruned"), inputs), _logits(model, inputs), atol=ATOL, rtol=0
    )


def _cli_target(fraction: float) -> list[str]:
    """The same targets as `_target`, spelled as a user types them."""
    argv = []
    for name, value in _target(fraction).items():
        argv += [f"--{name}", str(value)]
    return argv


# 0.25 takes the CLI's default path (decoders self-calibrate: Taylor + reconstruction on a little sampled text,
# encoders without data fall back to magnitude). The other fractions check what the CLI maps and saves at that
# size, with the cheap data-free criterion, so that the sweep stays within CI's time.
CLI_RUNS = [(case, fraction) for case in PUBLISHED for fraction in FRACTIONS]
CLI_IDS = [f"{case.name}-{fraction}" for case, fraction in CLI_RUNS]


@pytest.fixture(scope="module")
def cli_pruned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    """`hf-prune prune` on every published family at every fraction, as a user runs it. One run per family and
    fraction, shared by the tests below."""
    from hf_prune.cli import main

    root = tmp_path_factory.mktemp("published")
    runs: dict[str, dict[str, object]] = {}
    for case in PUBLISHED:
        case.build().save_pretrained(root / case.name)
    for (case, fraction), run_id in zip(CLI_RUNS, CLI_IDS, strict=True):
        output = root / f"{run_id}-pruned"
        argv = [str(root / case.name), *_cli_target(fraction), "--output", str(output)]
        if fraction == 0.25:
            argv += ["--calibration-samples", "2", "--calibration-seq-len", "16"]
        else:
            argv += ["--importance", "magnitude", "--no-reconstruct"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the encoders' "no calibration data" fallback
            code = main(["prune", *argv])
        runs[run_id] = {"code": code, "output": output}
    return runs


def _expected_heads(case: Case, fraction: float, before: list[dict[str, int]]) -> list[int] | None:
    """Uniform head targets have a closed form: each layer keeps heads minus round(fraction * heads), at least one
    unit. The CLI self-calibrates and reconstructs, so under GQA a unit is one query head from every KV group
    (gqa_mode="auto" with reconstruction). Parameter targets and global ranking are checked by their budget instead."""
    target = _target(fraction)
    if "heads" not in target or target["ranking"] != "uniform":
        return None
    kept = []
    for layer in before:
        unit = layer["kv_heads"] if layer["kv_heads"] != layer["heads"] else 1  # heads per unit
        units = layer["heads"] // unit
        kept.append(unit * max(1, units - math.ceil(fraction * units - 0.5)))  # ties keep more
    return kept


@pytest.mark.parametrize(("case", "fraction"), CLI_RUNS, ids=CLI_IDS)
def test_cli_prunes_every_published_family_at_every_fraction(
    case: Case, fraction: float, cli_pruned: dict[str, dict[str, object]]
) -> None:
    run = cli_pruned[f"{case.name}-{fraction}"]
    assert run["code"] == 0
    output = Path(str(run["output"]))
    report = json.loads((output / "pruning_report.json").read_text())
    loaded = hf_prune.from_pretrained(output).eval()
    assert [dict(s.counts) for s in ModelStructure(loaded).shapes()] == report["layers_after"]
    assert report["layers_after"] != report["layers_before"]
    for layer in report["layers_after"]:
        assert layer["heads"] % layer["kv_heads"] == 0 and layer["heads"] >= 1 and layer["neurons"] >= 1
    target = _target(fraction)
    if "params" in target:  # the block-parameter budget is met, up to the rounding of tiny layers
        removed = 1 - report["after"]["block_parameters"] / report["before"]["block_parameters"]
        assert abs(removed - fraction) <= 0.02, removed
    expected = _expected_heads(case, fraction, report["layers_before"])
    if expected is not None:
        assert [layer["heads"] for layer in report["layers_after"]] == expected
    if case.decoder and fraction == 0.25:
        assert report["extra"]["reconstruction"]["projections"] > 0  # the default path, verified before saving
    assert report["vanilla_loadable"] or report["not_vanilla_because"], "the report says which way it went"
    if case.name == "gemma3-270m" and fraction == 0.25:  # 3 of 4 heads: the config refuses 640 / 3
        assert report["layers_after"][0]["heads"] == 3 and "Gemma3TextConfig refuses" in report["not_vanilla_because"]
    inputs = _inputs(case)
    if report["vanilla_loadable"]:
        vanilla = getattr(T, _auto_class(case)).from_pretrained(output).eval()
        torch.testing.assert_close(_logits(vanilla, inputs), _logits(loaded, inputs), atol=ATOL, rtol=0)


def test_cli_checkpoints_of_every_published_family_load_without_hf_prune(
    cli_pruned: dict[str, dict[str, object]],
) -> None:
    """What the CLI wrote at every fraction loads with plain transformers: vanilla where the report promises it,
    else with trust_remote_code; the outputs equal hf_prune's loader's."""
    items = []
    for (case, _), run_id in zip(CLI_RUNS, CLI_IDS, strict=True):
        output = Path(str(cli_pruned[run_id]["output"]))
        inputs = _inputs(case)
        torch.save(
            {"inputs": inputs, "logits": _logits(hf_prune.from_pretrained(output).eval(), inputs)}, f"{output}.pt"
        )
        report = json.loads((output / "pruning_report.json").read_text())
        items.append({"dir": str(output), "auto": _auto_class(case), "vanilla": report["vanilla_loadable"]})
    assert any(item["vanilla"] for item in items) and not all(item["vanilla"] for item in items)
    _assert_loads_without_hf_prune(items)
