"""Nothing broken is ever written: per-head tensors outside the blocks are declared or refused up front, and every
pruned model is run against the masked one before prune(), the CLI or the callback can save it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as T
import yaml
from torch import nn

import hf_prune
from hf_prune.recipe import RecipeError, recipes_dir
from hf_prune.structure import ModelStructure
from hf_prune.verify import PrunedModelError

from .architectures import CASES_BY_NAME, STRUCTURE_ONLY
from .cli_run import run_cli
from .test_callback import _args, _dataset
from .test_errors import _assert_untouched, _snapshot

BIAS = "encoder.relative_attention_bias.weight"


def _mpnet(seed: int = 0) -> nn.Module:
    """A tiny MPNet encoder: 2 layers of 6 heads of 8, and one (32 buckets x 6 heads) position bias for both."""
    torch.manual_seed(seed)
    config = T.MPNetConfig(
        vocab_size=96, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=64, num_labels=3
    )
    return T.MPNetForSequenceClassification(config).eval()


def _mpnet_recipe(declare_bias: bool) -> dict[str, Any]:
    """The shipped MPNet recipe, or the one a user wrote from the README before it could name the bias."""
    data = yaml.safe_load((recipes_dir() / "mpnet.yaml").read_text(encoding="utf-8"))
    if not declare_bias:
        data["attention"].pop("shared_head_tensors")
    return data


def _ids() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**_ids()).logits


def _bias(model: nn.Module) -> torch.Tensor:
    return model.base_model.get_parameter(BIAS)


# ---------------------------------------------------------------------------------------------------------
# A per-head tensor the recipe does not describe: refused before any work.
# ---------------------------------------------------------------------------------------------------------


def test_an_undeclared_per_head_tensor_refuses_head_pruning_up_front() -> None:
    model = _mpnet()
    before = _snapshot(model)
    with pytest.raises(RecipeError, match=r"encoder\.relative_attention_bias\.weight \(32, 6\)") as info:
        hf_prune.prune(model, recipe=_mpnet_recipe(False), heads=0.5, neurons=0.5, **STRUCTURE_ONLY)
    assert "attention.shared_head_tensors" in str(info.value) and "heads=0" in str(info.value)
    _assert_untouched(model, before)


def test_an_undeclared_per_head_tensor_still_allows_neuron_pruning(tmp_path: Path) -> None:
    model = _mpnet()
    hf_prune.prune(model, recipe=_mpnet_recipe(False), heads=0.0, neurons=0.5, **STRUCTURE_ONLY)
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    torch.testing.assert_close(_logits(hf_prune.from_pretrained(tmp_path / "pruned")), _logits(model))


def test_the_cli_refuses_an_undeclared_per_head_tensor_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The user's MPNet run of the issue: it used to exit 0 and save a model whose every forward pass failed."""
    _mpnet().save_pretrained(tmp_path / "dense")
    recipe = tmp_path / "mpnet.yaml"
    recipe.write_text(yaml.safe_dump(_mpnet_recipe(False)), encoding="utf-8")
    output = tmp_path / "pruned"
    argv = ["prune", tmp_path / "dense", "--recipe", recipe, "--heads", "0.5", "--neurons", "0.5", "--output", output]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "relative_attention_bias" in err and "shared_head_tensors" in err
    assert not output.exists()


# ---------------------------------------------------------------------------------------------------------
# Verify before the write: the pruned model must run, and equal the masked one.
# ---------------------------------------------------------------------------------------------------------


def test_apply_plan_refuses_a_pruned_model_that_fails() -> None:
    """apply_plan is public and plans come from anywhere: the forward pass after surgery catches what the up-front
    check was not asked about."""
    model = _mpnet()
    structure = ModelStructure(model, _mpnet_recipe(False))
    plans = [hf_prune.LayerPlan([0, 1, 2], [0, 1, 2], list(range(64))) for _ in range(2)]
    with pytest.raises(PrunedModelError, match="fails on a small input") as info:
        hf_prune.apply_plan(structure, plans)
    assert "attention.shared_head_tensors" in str(info.value) and "Nothing was written" in str(info.value)


def _scaling_recipe(tmp_path: Path, quantity: str = "heads") -> str:
    """A llama recipe with a plausible mistake: it 'updates' the attention's score scaling to the head count. The
    pruned model runs, but computes something else than the masked one (relative distance 0.18 on the tiny
    llama; mapped to the neuron count, 0.71)."""
    data = yaml.safe_load((recipes_dir() / "llama.yaml").read_text(encoding="utf-8"))
    data["attention"]["module_attributes"]["self_attn"]["scaling"] = quantity
    path = tmp_path / "llama_scaling.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def test_prune_refuses_a_pruned_model_that_disagrees_with_the_masked_one(tmp_path: Path) -> None:
    model = CASES_BY_NAME["llama"].build()
    with pytest.raises(PrunedModelError, match="disagrees with the masked model: relative distance"):
        hf_prune.prune(model, recipe=_scaling_recipe(tmp_path), heads=0.5, neurons=0.5, **STRUCTURE_ONLY)


def test_the_cli_writes_nothing_when_the_pruned_model_disagrees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    CASES_BY_NAME["llama"].build().save_pretrained(tmp_path / "dense")
    output = tmp_path / "pruned"
    argv = ["prune", tmp_path / "dense", "--recipe", _scaling_recipe(tmp_path), "--heads", "0.5", "--neurons", "0.5"]
    argv += ["--importance", "magnitude", "--no-reconstruct", "--output", output]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "disagrees with the masked model" in err
    assert not output.exists()


def _train(model: nn.Module, output: Path, config: hf_prune.PruningConfig, lm: bool) -> hf_prune.PruningCallback:
    callback = hf_prune.PruningCallback(config)
    args = _args(output, max_steps=8)
    T.Trainer(model=model, args=args, train_dataset=_dataset(decoder=lm), callbacks=[callback]).train()
    return callback


def test_the_callback_refuses_to_end_with_a_broken_model(tmp_path: Path) -> None:
    """The callback removes the masked groups at the end of training, right before Trainer.save_model: the same
    check runs there, and neither the report nor a checkpoint is written."""
    config = hf_prune.PruningConfig(
        recipe=_scaling_recipe(tmp_path), heads=0.5, neurons=0.5, importance="magnitude", end=0.5, update_every=2
    )
    with pytest.raises(PrunedModelError, match="disagrees with the masked model"):
        _train(CASES_BY_NAME["llama"].build(), tmp_path / "run", config, lm=True)
    assert not (tmp_path / "run" / "pruning_report.json").exists()


# ---------------------------------------------------------------------------------------------------------
# A declared shared per-head tensor: sliced with the heads, which every block keeps alike.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ranking", ["uniform", "global"])
def test_mpnet_prunes_heads_with_its_shared_position_bias(ranking: str, tmp_path: Path) -> None:
    dense = _mpnet()
    model = copy.deepcopy(dense)
    report = hf_prune.prune(model, heads=0.5, neurons=0.5, ranking=ranking, importance="random", reconstruct=False)
    kept = [layer["keep_heads"] for layer in report.kept]
    assert all(heads == kept[0] for heads in kept) and len(kept[0]) == 3, "one bias for all layers: the same heads"
    torch.testing.assert_close(_bias(model), _bias(dense)[:, kept[0]], atol=0, rtol=0)
    assert model.base_model.encoder.relative_attention_bias.embedding_dim == 3

    masked = copy.deepcopy(dense)
    masks = hf_prune.MaskSet(ModelStructure(masked))
    masks.set_from_plan([hf_prune.LayerPlan(**plan) for plan in report.kept])
    masks.attach()
    torch.testing.assert_close(_logits(model), _logits(masked), atol=1e-5, rtol=0)

    hf_prune.save_pretrained(model, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["hf_prune"]["recipe"]["attention"]["shared_head_tensors"][0]["parameter"] == BIAS
    for loaded in (
        hf_prune.from_pretrained(tmp_path / "pruned"),
        T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned", trust_remote_code=True),
    ):
        assert tuple(_bias(loaded).shape) == (32, 3)
        torch.testing.assert_close(_logits(loaded), _logits(model), atol=1e-5, rtol=0)


def test_mpnet_reconstruction_runs_with_the_shared_bias(tmp_path: Path) -> None:
    """Reconstruction feeds every block the arguments of one dense forward pass (the 6-head position bias among
    them); it works on the masked model and the surgery comes after, so the bias stays consistent throughout."""
    model = _mpnet()
    batches = [{**_ids(), "labels": torch.tensor([0, 1])} for _ in range(4)]
    report = hf_prune.prune(model, heads=0.5, neurons=0.5, calibration=batches)
    assert report.extra["reconstruction"]["projections"] == 4
    assert tuple(_bias(model).shape) == (32, 3)
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    torch.testing.assert_close(_logits(hf_prune.from_pretrained(tmp_path / "pruned")), _logits(model))


def test_mpnet_gradual_pruning_keeps_the_same_heads_in_every_block(tmp_path: Path) -> None:
    model = _mpnet()
    config = hf_prune.PruningConfig(heads=0.5, neurons=0.5, importance="taylor", end=0.5, update_every=2)
    callback = _train(model, tmp_path / "run", config, lm=False)
    kept = [layer["keep_heads"] for layer in callback.report.kept]
    assert all(heads == kept[0] for heads in kept) and len(kept[0]) == 3
    assert tuple(_bias(model).shape) == (32, 3)
    assert torch.isfinite(_logits(model)).all()


def test_protected_layers_are_refused_with_a_shared_per_head_tensor() -> None:
    model = _mpnet()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"protected layers \[0\] would keep heads that the others lose"):
        hf_prune.prune(model, heads=0.5, neurons=0.5, protected_layers=[0], **STRUCTURE_ONLY)
    _assert_untouched(model, before)
    hf_prune.prune(model, heads=0.0, neurons=0.5, protected_layers=[0], **STRUCTURE_ONLY)  # neurons only: fine


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"parameter": BIAS, "dim": 0}, r"has shape \(32, 6\); its axis 0 should have one entry per query head"),
        ({"parameter": BIAS, "dim": 2}, r"its axis 2 should have one entry per query head"),
        ({"parameter": "encoder.relative_bias.weight", "dim": 1}, "has no attribute `relative_bias`|module path"),
        ({"parameter": "encoder.relative_attention_bias.bias", "dim": 1}, "has no parameter 'bias'"),
    ],
    ids=["wrong-axis", "axis-out-of-range", "no-such-module", "no-such-parameter"],
)
def test_a_wrong_shared_head_tensor_is_a_recipe_error(entry: dict[str, Any], match: str) -> None:
    data = _mpnet_recipe(True)
    data["attention"]["shared_head_tensors"] = [entry]
    with pytest.raises(RecipeError, match=match):
        ModelStructure(_mpnet(), data)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_rounding_passes_and_a_wrong_model_still_fails(dtype: torch.dtype, tmp_path: Path) -> None:
    """Half precision drifts more between masked and pruned sums; the limit allows that, not a wrong model."""
    model = CASES_BY_NAME["smollm2-135m"].build().to(dtype)
    hf_prune.prune(model, heads=0.5, neurons=0.5, ranking="global", **STRUCTURE_ONLY)
    broken = CASES_BY_NAME["llama"].build().to(dtype)
    recipe = _scaling_recipe(tmp_path, "neurons")
    with pytest.raises(PrunedModelError, match="disagrees with the masked model"):
        hf_prune.prune(broken, recipe=recipe, heads=0.5, neurons=0.5, **STRUCTURE_ONLY)


def test_a_model_that_cannot_be_probed_is_pruned_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the unpruned model does not run on token ids alone, nothing can be compared: that is said, not
    mistaken for a broken pruned model."""
    from hf_prune import verify

    run_probe = verify.run_probe
    calls = []

    def masked_model_needs_more(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append(model)
        if len(calls) == 1:
            raise TypeError("forward() missing 1 required argument: 'pixel_values'")
        return run_probe(model, inputs)

    monkeypatch.setattr(verify, "run_probe", masked_model_needs_more)
    model = CASES_BY_NAME["bert"].build()
    with pytest.warns(UserWarning, match="could not be verified: the masked model does not run on a probe"):
        report = hf_prune.prune(model, heads=0.5, neurons=0.5, **STRUCTURE_ONLY)
    assert len(calls) == 1 and report.layers_after[0]["heads"] == 4
