"""Re-choosing which units of a block go, by what the least-squares refit of the rest can make up for
(hf_prune.reconstruct.select_units: greedy structured OBS), then checked on held-out windows."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import hf_prune
from hf_prune.card import build_model_card
from hf_prune.reconstruct import select_units

from .test_calibration import tiny_llama
from .text_data import byte_tokenizer, texts


def _refit_error(weight: torch.Tensor, second: torch.Tensor, keep: list[int], width: int = 1) -> float:
    """Output error of the best least-squares refit of the kept columns (exact, no damping)."""
    cols = torch.tensor([u * width + i for u in keep for i in range(width)])
    kk = second[cols][:, cols]
    new = torch.linalg.lstsq(kk, (weight @ second[:, cols]).T).solution.T
    return float(
        ((weight @ second) * weight).sum() - 2 * ((new @ second[cols]) * weight).sum() + ((new @ kk) * new).sum()
    )


def _duplicated_inputs(rows: int = 2000) -> torch.Tensor:
    """Eight neurons, of which 6 and 7 copy 0 and 1 (scaled): removing one of each pair costs nothing after a
    refit, although the copies carry the largest activations."""
    z = torch.randn(rows, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = z * torch.tensor([1.0, 1.0, 0.3, 0.3, 0.2, 0.2], dtype=torch.float64)
    return torch.cat([z, 3 * z[:, :2]], dim=1)


def test_selection_finds_the_units_a_refit_replaces_exactly() -> None:
    z = _duplicated_inputs()
    second = z.T @ z / z.shape[0]
    weight = torch.randn(5, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    keep = select_units(weight, second, 1, [list(range(8))], keep_units=list(range(6)))
    assert len(keep) == 6
    assert len({0, 6} & set(keep)) == 1 and len({1, 7} & set(keep)) == 1  # one of each copy goes
    error = _refit_error(weight, second, keep)
    assert error < 1e-6 * float(((weight @ second) * weight).sum())
    # What weight magnitude times activation size (Wanda-style) removes instead: two independent neurons.
    energy = (weight * weight).sum(0) * second.diagonal()
    by_size = sorted(torch.argsort(energy, descending=True)[:6].tolist())
    assert _refit_error(weight, second, by_size) > 1000 * max(error, 1e-12)


def test_selection_is_the_best_subset_on_a_small_case_and_keeps_each_groups_count() -> None:
    """Heads of 4 columns in two KV groups of 3: each group keeps as many as planned; the choice is the best of
    all subsets with those counts (exhaustive search) on independent inputs."""
    width, heads = 4, 6
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(3000, heads * width, generator=generator, dtype=torch.float64)
    z = z * torch.rand(heads * width, generator=generator, dtype=torch.float64)
    second = z.T @ z / z.shape[0]
    weight = torch.randn(7, heads * width, generator=generator, dtype=torch.float64)
    groups = [[0, 1, 2], [3, 4, 5]]
    keep = select_units(weight, second, width, groups, keep_units=[0, 1, 3])
    assert len(set(keep) & {0, 1, 2}) == 2 and len(set(keep) & {3, 4, 5}) == 1
    candidates = [sorted([*a, b]) for a in itertools.combinations(range(3), 2) for b in range(3, 6)]
    best = min(candidates, key=lambda k: _refit_error(weight, second, k, width))
    assert _refit_error(weight, second, keep, width) <= _refit_error(weight, second, best, width) * (1 + 1e-3)


def test_nothing_to_remove_keeps_everything() -> None:
    second = torch.eye(4, dtype=torch.float64)
    assert select_units(torch.ones(2, 4), second, 1, [list(range(4))], [3, 1, 0, 2]) == [0, 1, 2, 3]


def _pruned(reselect: bool) -> tuple[torch.nn.Module, hf_prune.PruningReport]:
    model = tiny_llama(seed=1)
    calibration = hf_prune.prepare_calibration(model, texts(400), byte_tokenizer(), samples=8, seq_len=32)
    report = hf_prune.prune(
        model,
        heads=0.5,
        neurons=0.5,
        importance="magnitude",  # a criterion blind to the data: reselection has most to win
        calibration=calibration,
        reconstruct=True,
        reconstruct_reselect=reselect,
    )
    return model, report


def test_reselection_lowers_the_held_out_error_and_the_pruned_model_is_what_was_reconstructed() -> None:
    planned_model, planned = _pruned(reselect=False)
    model, report = _pruned(reselect=True)
    summary = report.extra["reconstruction"]
    assert summary["reselect"] is True and summary["reselected"] > 0
    fixes = [fix for block in summary["per_block"] for fix in block.values()]
    for fix in fixes:
        if fix["reselected"]:
            assert fix["held_out_error_after"] < fix["held_out_error_as_planned"]
    # Other units than planned, the same counts: the report's layout is unchanged.
    assert report.layers_after == planned.layers_after and report.kept != planned.kept
    # The surgery removed what reconstruction chose (apply_plan checks the pruned model against the masked one,
    # masks rebuilt from the reselected plan): the kept neuron indices are the ones in the report.
    for layer, kept in zip(model.model.layers, report.kept, strict=True):
        assert layer.mlp.down_proj.weight.shape[1] == len(kept["keep_neurons"])
    assert planned.extra["reconstruction"]["reselected"] == 0
    card = str(build_model_card(report, config=model.config, model_class_name=type(model).__name__))
    assert f"In {summary['reselected']} of them the units removed were chosen again" in card
    assert "chosen again" not in str(build_model_card(planned, config=planned_model.config))


def test_reselection_is_reproducible() -> None:
    first, second = _pruned(reselect=True), _pruned(reselect=True)
    assert first[1].kept == second[1].kept
    ids = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(first[0](input_ids=ids).logits, second[0](input_ids=ids).logits)


@pytest.mark.parametrize("flag", ["--reconstruct-reselect", "--no-reconstruct-reselect"])
def test_the_cli_maps_the_flag(flag: str) -> None:
    from hf_prune.cli import build_parser

    args = build_parser().parse_args(["prune", "MODEL", "--output", "OUT", flag])
    assert args.reconstruct_reselect is (flag == "--reconstruct-reselect")
    assert copy.deepcopy(hf_prune.PruningConfig(reconstruct_reselect=False)).reconstruct_reselect is False


def _tiny_mpnet() -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.MPNetConfig(
        vocab_size=100, hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2
    )
    return transformers.MPNetForSequenceClassification(config).eval()


def test_per_head_tensors_shared_by_every_block_keep_every_block_on_the_same_heads() -> None:
    """MPNet's one relative attention bias serves every block: reselection leaves the heads alone there (and
    still chooses neurons), so the pruned model is consistent."""
    model = _tiny_mpnet()
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, vocab, (2, 16), generator=generator)} for _ in range(4)]
    report = hf_prune.prune(
        model, heads=0.5, neurons=0.5, calibration=batches, reconstruct=True, reconstruct_reselect=True
    )
    assert len({tuple(k["keep_heads"]) for k in report.kept}) == 1
    # The guard itself: the heads' sublayer plan is fixed for MPNet, free for a model without shared tensors.
    from hf_prune.allocation import LayerPlan
    from hf_prune.prune import sublayer_plans
    from hf_prune.structure import ModelStructure

    for dense, fixed in ((_tiny_mpnet(), True), (tiny_llama(seed=1), False)):
        structure = ModelStructure(dense)
        counts = structure.shape(0).counts
        plan = LayerPlan(keep={kind: list(range(max(1, counts[kind] // 2))) for kind in counts})
        heads_plan, neurons_plan = sublayer_plans(structure, 0, plan)
        assert heads_plan.fixed is fixed and neurons_plan.fixed is False
    assert report.extra["reconstruction"]["reselected"] > 0  # neurons
    with torch.no_grad():
        model(input_ids=batches[0]["input_ids"])
