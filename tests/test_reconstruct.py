"""Reconstruction after removal: closed-form errors match direct computation, each step lowers the error, and
reconstructed models save and load on every path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

import hf_prune
from hf_prune.reconstruct import Moments, apply_fix, plan_fix

from .test_calibration import tiny_llama
from .text_data import byte_tokenizer, texts

UNIT = 4  # columns per unit (a head's width)


def _activations(rows: int, units: int, seed: int) -> torch.Tensor:
    """Correlated inputs with a non-zero mean, like a projection's input."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(units * UNIT, units * UNIT, generator=g) / (units * UNIT) ** 0.5
    return torch.randn(rows, units * UNIT, generator=g) @ (torch.eye(units * UNIT) + mixing) + 0.7


def _moments(z: torch.Tensor) -> Moments:
    moments = Moments.zeros(z.shape[1])
    moments.add(z)
    return moments


def _direct_error(layer: nn.Linear, dense: nn.Linear, z: torch.Tensor, keep_columns: torch.Tensor) -> float:
    with torch.no_grad():
        target = dense(z)
        return float((layer(z[:, keep_columns]) - target).square().sum(1).mean() / target.square().sum(1).mean())


def _pruned_copy(dense: nn.Linear, keep_columns: torch.Tensor, bias: bool) -> nn.Linear:
    layer = nn.Linear(len(keep_columns), dense.out_features, bias=bias).double()
    with torch.no_grad():
        layer.weight.copy_(dense.weight[:, keep_columns])
        if bias:
            layer.bias.zero_()
    return layer


@pytest.mark.parametrize(("can_bias", "refit"), [(False, "none"), (True, "none"), (True, "scales"), (True, "weights")])
def test_closed_form_errors_match_the_real_outputs(can_bias: bool, refit: str) -> None:
    torch.manual_seed(0)
    units, keep_units = 6, [0, 2, 3, 5]
    z = _activations(400, units, seed=1).double()
    dense = nn.Linear(units * UNIT, 10, bias=False).double()
    keep_columns = torch.tensor([u * UNIT + i for u in keep_units for i in range(UNIT)])
    moments = _moments(z)
    fix = plan_fix(dense.weight.detach().double(), moments, moments, UNIT, keep_units, can_bias, refit)
    layer = _pruned_copy(dense, keep_columns, bias=can_bias)
    assert fix.error_pruned == pytest.approx(_direct_error(layer, dense, z, keep_columns), rel=1e-6)
    apply_fix(layer, fix, UNIT)
    assert fix.error_after == pytest.approx(_direct_error(layer, dense, z, keep_columns), rel=1e-4, abs=1e-9)
    assert fix.bias == can_bias and fix.refit == refit


def test_each_step_lowers_the_error_and_none_does_nothing() -> None:
    """Pruning alone < bias compensation < scales < a weight refit, on the calibration rows; a step that is
    switched off changes nothing."""
    torch.manual_seed(0)
    units, keep = 8, [1, 2, 4, 6, 7]
    z = _activations(500, units, seed=2).double()
    weight = torch.randn(12, units * UNIT, dtype=torch.float64)
    moments = _moments(z)
    errors = {}
    for name, can_bias, refit in (
        ("pruned", False, "none"),
        ("bias", True, "none"),
        ("scales", True, "scales"),
        ("weights", True, "weights"),
    ):
        fix = plan_fix(weight, moments, moments, UNIT, keep, can_bias, refit)
        errors[name] = fix.error_after
        if name == "pruned":
            assert fix.error_after == fix.error_pruned and fix.bias_values is None and fix.scale_values is None
    assert errors["pruned"] > errors["bias"] > errors["scales"] > errors["weights"]


def test_a_refit_that_fails_on_held_out_rows_is_not_taken() -> None:
    """On the fit rows the removed units copy the kept ones (scales of 2 would reconstruct them exactly); on the
    held-out rows they are independent, so any scale other than 1 hurts there. The refit is refused."""
    g = torch.Generator().manual_seed(5)
    kept = torch.randn(300, 2 * UNIT, generator=g, dtype=torch.float64)
    fit = torch.cat([kept, kept], dim=1)  # units 2, 3 repeat units 0, 1
    held = torch.randn(300, 4 * UNIT, generator=g, dtype=torch.float64)
    weight = torch.cat([torch.eye(2 * UNIT), torch.eye(2 * UNIT)], dim=1).double()
    trusting = plan_fix(weight, _moments(fit), _moments(fit), UNIT, [0, 1], can_bias=False, refit="scales")
    assert trusting.refit == "scales" and trusting.error_after < 1e-6  # what the fit rows alone would say
    fix = plan_fix(weight, _moments(fit), _moments(held), UNIT, [0, 1], can_bias=False, refit="scales")
    assert fix.refit == "none" and fix.scale_values is None and fix.error_after == fix.error_pruned


def _hidden(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.model(input_ids=b["input_ids"]).last_hidden_state for b in batches])


@pytest.mark.parametrize("gqa_mode", ["query_heads", "kv_groups"])
def test_reconstruction_brings_a_pruned_llama_closer_to_dense(gqa_mode: str) -> None:
    dense = tiny_llama(seed=3)
    tokenizer = byte_tokenizer()
    calibration = hf_prune.prepare_calibration(dense, texts(200), tokenizer, samples=16, seq_len=32)
    held_out = hf_prune.prepare_calibration(dense, texts(400)[200:], tokenizer, samples=8, seq_len=32)
    distances = {}
    for refit in ("off", "none", "scales", "weights"):
        model = copy.deepcopy(dense)
        settings = {"reconstruct": False} if refit == "off" else {"reconstruct_refit": refit}
        hf_prune.prune(
            model,
            heads=0.5,
            neurons=0.5,
            importance="fluctuation",
            calibration=calibration,
            gqa_mode=gqa_mode,
            **settings,
        )
        distances[refit] = float((_hidden(model, held_out.batches) - _hidden(dense, held_out.batches)).square().mean())
    assert distances["off"] > distances["none"] > distances["weights"], distances
    if gqa_mode == "kv_groups":
        # Removing whole KV groups leaves per-channel error that the scales refit corrects; with every KV head kept
        # (query_heads) the scales land within 0.1% of bias-only on held-out text, so only the order above holds.
        assert distances["none"] > distances["scales"], distances


def _reconstructed_llama(ranking: str) -> tuple[nn.Module, hf_prune.PruningReport]:
    model = tiny_llama(seed=1)
    report = hf_prune.prune(
        model, heads=0.5, neurons=0.5, ranking=ranking, calibration_samples=4, calibration_seq_len=16
    )
    assert report.extra["reconstruction"]["with_bias"] > 0
    return model, report


def _logits(model: nn.Module) -> torch.Tensor:
    ids = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_reconstructed_uniform_llama_loads_with_plain_transformers(tmp_path: Path) -> None:
    """Bias compensation turns on `attention_bias`/`mlp_bias`: the config says so and vanilla loading keeps the
    biases."""
    model, report = _reconstructed_llama("uniform")
    assert report.vanilla_loadable and model.config.attention_bias and model.config.mlp_bias
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    torch.testing.assert_close(_logits(loaded), _logits(model))


def test_reconstructed_global_llama_loads_with_hf_prune(tmp_path: Path) -> None:
    model, report = _reconstructed_llama("global")
    assert not report.vanilla_loadable  # layers differ: the recorded structure path
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    loaded = hf_prune.from_pretrained(tmp_path / "pruned")
    torch.testing.assert_close(_logits(loaded), _logits(model))


def test_recording_passes_stop_at_the_projection_and_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from hf_prune import reconstruct

    dense = tiny_llama(seed=2)
    calibration = hf_prune.prepare_calibration(dense, texts(200), byte_tokenizer(), samples=4, seq_len=16)
    models, calls = {}, {}
    for stop in (True, False):
        model = copy.deepcopy(dense)
        ups: list[int] = []
        for layer in model.model.layers:
            layer.mlp.up_proj.register_forward_pre_hook(lambda module, args, seen=ups: seen.append(1))
        original = reconstruct.InputRecorder.__init__

        def init(self, module, width, stop=False, _allowed=stop, _init=original):
            _init(self, module, width, stop=_allowed and stop)

        monkeypatch.setattr(reconstruct.InputRecorder, "__init__", init)
        hf_prune.prune(model, heads=0.5, neurons=0.5, importance="taylor", calibration=calibration)
        monkeypatch.undo()
        models[stop], calls[stop] = model, len(ups)
    # The attention's recording pass ends at o_proj: one up_proj call fewer per block and calibration batch (the
    # rest of the calls, in calibration and verification, are the same).
    blocks, batches = len(dense.model.layers), len(calibration.batches)
    assert calls[False] - calls[True] == blocks * batches, calls
    torch.testing.assert_close(_logits(models[True]), _logits(models[False]))
