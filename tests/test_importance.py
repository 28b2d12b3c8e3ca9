"""Every importance criterion ranks a planted dead head and a planted dead neuron last."""

from __future__ import annotations

import pytest
import torch

import hf_prune
from hf_prune.importance import get_importance
from hf_prune.structure import ModelStructure

from .architectures import CASES_BY_NAME

LAYER, HEAD, NEURON = 1, 5, 7


def _planted_bert() -> torch.nn.Module:
    """A tiny BERT in which head 5 and neuron 7 of layer 1 are dead (all their weights and biases zero)."""
    model = CASES_BY_NAME["bert"].build()
    structure = ModelStructure(model)
    hd = structure.head_dim
    rows = slice(HEAD * hd, (HEAD + 1) * hd)
    with torch.no_grad():
        for role in ("q", "k", "v"):
            module = structure.module(LAYER, role)
            module.weight[rows] = 0
            module.bias[rows] = 0
        structure.module(LAYER, "o").weight[:, rows] = 0
        up = structure.module(LAYER, "up")
        up.weight[NEURON] = 0
        up.bias[NEURON] = 0
        structure.module(LAYER, "down").weight[:, NEURON] = 0
    return model


def _batches(n: int = 4) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(3, 96, (4, 12), generator=generator),
            "labels": torch.randint(0, 3, (4,), generator=generator),
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize("name", ["magnitude", "taylor", "fisher", "activation"])
def test_planted_dead_groups_rank_last(name: str) -> None:
    model = _planted_bert()
    criterion = hf_prune.calibrate(model, _batches(), name)
    scores = criterion.scores(ModelStructure(model))
    assert int(torch.argmin(scores.heads[LAYER])) == HEAD
    assert int(torch.argmin(scores.neurons[LAYER])) == NEURON
    assert float(scores.heads[LAYER][HEAD]) <= 1e-6 * float(scores.heads[LAYER].max())
    assert float(scores.neurons[LAYER][NEURON]) <= 1e-6 * float(scores.neurons[LAYER].max())
    # One-shot pruning with the fitted criterion removes the dead groups first.
    report = hf_prune.prune(model, heads=0.125, neurons=0.1, importance=criterion, neuron_multiple=1)
    assert HEAD not in report.kept[LAYER]["keep_heads"]
    assert NEURON not in report.kept[LAYER]["keep_neurons"]


def test_calibrated_taylor_uses_the_gradient_of_the_whole_calibration_loss() -> None:
    """|w * (g1 + g2)| summed per group, not the mean of per-batch |w * g|: per-batch noise must cancel."""
    from hf_prune.importance import combine_head_scores

    model = CASES_BY_NAME["bert"].build().eval()
    batches = _batches(2)
    criterion = hf_prune.calibrate(model, batches, "taylor")
    structure = ModelStructure(model)
    for batch in batches:
        model(**batch).loss.backward()  # gradients add up

    def values(module: torch.nn.Module) -> torch.Tensor:
        return (module.weight.detach() * module.weight.grad).abs()

    scores = criterion.scores(structure)
    for i in range(structure.num_layers):
        sums = structure.group_sums(i, values)
        torch.testing.assert_close(scores.neurons[i], sums["neurons"])
        torch.testing.assert_close(scores.heads[i], combine_head_scores(structure, i, sums["heads"], sums["kv_heads"]))
    # The per-batch average (the training-time statistic) is a different estimator.
    per_batch = get_importance("taylor", beta=None)
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        per_batch.accumulate(structure)
    assert not torch.allclose(per_batch.scores(structure).neurons[0], scores.neurons[0])
    model.zero_grad(set_to_none=True)


def test_random_baseline_is_seeded_and_not_the_planted_order() -> None:
    structure = ModelStructure(_planted_bert())
    first = get_importance("random").scores(structure)
    again = get_importance("random").scores(structure)
    other = get_importance("random", seed=1).scores(structure)
    assert all(torch.equal(a, b) for a, b in zip(first.heads, again.heads, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first.heads, other.heads, strict=True))


def test_accumulating_state_round_trips() -> None:
    model = _planted_bert()
    criterion = hf_prune.calibrate(model, _batches(2), "taylor")
    restored = get_importance("taylor")
    restored.load_state_dict(criterion.state_dict())
    structure = ModelStructure(model)
    for a, b in zip(criterion.scores(structure).neurons, restored.scores(structure).neurons, strict=True):
        assert torch.equal(a, b)


def test_unknown_importance_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown importance 'hessian'.*fisher.*magnitude.*taylor"):
        get_importance("hessian")


def test_accumulating_criterion_needs_statistics() -> None:
    model = CASES_BY_NAME["bert"].build()
    with pytest.raises(ValueError, match="importance 'fisher' needs calibration data"):
        hf_prune.prune(model, heads=0.5, importance="fisher", reconstruct=False)
    with pytest.raises(RuntimeError, match="no statistics yet"):
        get_importance("taylor").scores(ModelStructure(model))


def test_global_ranking_normalises_each_layer() -> None:
    """A layer whose weights are 100x larger must not keep everything under global ranking."""
    model = CASES_BY_NAME["llama"].build()
    structure = ModelStructure(model)
    with torch.no_grad():
        for role in ("q", "k", "v", "o", "up", "gate", "down"):
            structure.module(0, role).weight.mul_(100)
    report = hf_prune.prune(model, heads=0.5, neurons=0.5, ranking="global", neuron_multiple=1)
    assert report.layers_after[0]["neurons"] < report.layers_before[0]["neurons"]


# ---------------------------------------------------------------------------------------------------------
# Mixed precision: overflowing steps and the loss scale.
# ---------------------------------------------------------------------------------------------------------


def _accumulate(model: torch.nn.Module, criterion: hf_prune.Importance, batch: dict, factor: float = 1.0) -> None:
    """One training step's statistics, from the loss multiplied by ``factor`` (a loss scale, or inf/NaN)."""
    model.zero_grad(set_to_none=True)
    (model(**batch).loss * factor).backward()
    criterion.accumulate(ModelStructure(model))


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
@pytest.mark.parametrize("name", ["taylor", "fisher"])
def test_a_step_with_non_finite_gradients_is_left_out(name: str, bad: float) -> None:
    """An overflowing step (fp16: GradScaler skips it too) must not put an inf/NaN in the moving average."""
    model = _planted_bert().train()
    torch.manual_seed(0)
    criterion = get_importance(name, beta=0.9)
    criterion.attach(ModelStructure(model))
    batches = _batches(3)
    _accumulate(model, criterion, batches[0])
    before = criterion.state_dict()
    _accumulate(model, criterion, batches[1], factor=bad)  # every gradient inf or NaN
    assert criterion.state_dict() == before, "the non-finite step changed the statistics"
    assert criterion.skipped == 1
    _accumulate(model, criterion, batches[2])  # and accumulation goes on
    criterion.detach()
    scores = criterion.scores(ModelStructure(model))
    assert criterion.updates == 2
    assert all(torch.isfinite(t).all() for t in (*scores.heads, *scores.neurons))


@pytest.mark.parametrize("name", ["taylor", "fisher"])
def test_scores_do_not_depend_on_the_loss_scale(name: str) -> None:
    """fp16 training multiplies the loss by a scale before backward: criteria divide it out (fisher's mask gates
    are not parameters, so no scaler ever unscales their gradients)."""
    batch = _batches(1)[0]
    scale = 2.0**16

    def scores(factor: float, parameters: float | None) -> hf_prune.importance.Scores:
        model = _planted_bert().train()
        torch.manual_seed(0)
        criterion = get_importance(name, beta=0.9)
        criterion.set_loss_scale(factor, parameters)
        criterion.attach(ModelStructure(model))
        model.zero_grad(set_to_none=True)
        (model(**batch).loss * factor).backward()
        if parameters == 1.0:
            for parameter in model.parameters():  # what GradScaler.unscale_ does before gradient clipping
                if parameter.grad is not None:
                    parameter.grad /= factor
        criterion.accumulate(ModelStructure(model))
        criterion.detach()
        return criterion.scores(ModelStructure(model))

    expected = scores(1.0, None)
    for parameters in (None, 1.0):  # parameters' gradients still scaled, or already unscaled
        got = scores(scale, parameters)
        for a, b in zip((*got.heads, *got.neurons), (*expected.heads, *expected.neurons), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=0)


def test_a_bad_loss_scale_is_refused() -> None:
    with pytest.raises(ValueError, match=r"a loss scale must be a positive finite number, got 0\.0"):
        get_importance("fisher").set_loss_scale(0.0)


@pytest.mark.parametrize("name", ["fisher", "activation"])
def test_a_gating_criterion_applies_the_masks_in_its_own_multiply(name: str) -> None:
    """Folding the masks into the gate's multiply (one pass over the activation instead of two) changes nothing:
    the same outputs, in training and evaluation, the same gate gradients and the same statistics."""
    from hf_prune.masks import MaskSet

    batch = _batches(1)[0]
    results = []
    for fold in (False, True):
        torch.manual_seed(0)
        model = _planted_bert().eval()
        structure = ModelStructure(model)
        masks = MaskSet(structure)
        masks.masks["heads"][0][[1, 2]] = False
        masks.masks["neurons"][1][:5] = False
        criterion = get_importance(name)
        folded = criterion.applies_masks(structure) if fold else []
        masks.attach(kinds=[k.name for k in structure.leaders if k.name not in folded])
        criterion.attach(structure, masks=masks if fold else None)
        hooks_on_o = len(structure.module(0, "o")._forward_pre_hooks)
        out = model(**batch)
        out.loss.backward()
        criterion.set_loss_scale()
        criterion.accumulate(structure)
        with torch.no_grad():
            evaluation = model(**batch).logits
        scores = criterion.scores(structure)
        results.append((hooks_on_o, out.logits.detach(), evaluation, scores.heads, scores.neurons))
    (plain_hooks, *plain), (folded_hooks, *folded) = results
    assert (plain_hooks, folded_hooks) == (2, 1)  # one multiply per mask module, not two
    torch.testing.assert_close(folded[0], plain[0])
    torch.testing.assert_close(folded[1], plain[1])
    for a, b in zip(folded[2:], plain[2:], strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y)
    # The masked units are masked in evaluation too, and score nothing.
    assert float(folded[3][1][:5].abs().max()) == 0.0
