"""Latency as a pruning target (PruningConfig(latency=...)): the measured table, the allocator meeting it, the report.
No timing is asserted here (speed goals live in benchmarks/latency_target.py): allocation is checked on a fixed
table, and the measuring code on what it records."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as T

import hf_prune
from hf_prune.card import build_model_card
from hf_prune.latency import Latency
from hf_prune.latency_table import LatencyTable, measure_latency_table
from hf_prune.prune import plan_for
from hf_prune.structure import ModelStructure

from .architectures import CASES_BY_NAME
from .test_callback import _args, _config, _dataset


def _parameter_clock(model: torch.nn.Module, *args, **kwargs) -> Latency:
    """A deterministic stand-in for a timed forward: 1 ms per 1,000 parameters (a tiny model's real timings are
    noise, and a test that reads them fails at random)."""
    ms = sum(p.numel() for p in model.parameters()) / 1000
    return Latency(ms, [ms], 2, 16, "test", "float32", 1)


@pytest.fixture
def steady_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every latency the target code measures comes from :func:`_parameter_clock`."""
    import importlib

    from hf_prune import latency_table

    prune = importlib.import_module("hf_prune.prune")  # the module, which hf_prune.prune (the function) shadows
    monkeypatch.setattr(
        latency_table, "compare_latency", lambda a, b, *args, **kw: (_parameter_clock(a), _parameter_clock(b))
    )
    monkeypatch.setattr(latency_table, "measure_latency", _parameter_clock)
    monkeypatch.setattr(prune, "measure_latency", _parameter_clock)


def _table(structure: ModelStructure) -> LatencyTable:
    """A fixed table: heads cost 6 ms per block at full size and neurons 12 ms, linear in the units kept, plus
    10 ms that pruning cannot remove."""
    shape = structure.shape(0)
    blocks = structure.num_layers
    dense = 10.0 + blocks * 18.0
    curves = {
        "heads": [(shape.heads // 2, dense - blocks * 3.0), (shape.heads, dense)],
        "neurons": [(shape.neurons // 4, dense - blocks * 9.0), (shape.neurons, dense)],
    }
    return LatencyTable(dense, curves, blocks, batch_size=8, seq_len=128, device="test", threads=1)


@pytest.mark.parametrize("target", [0.2, 0.4])
def test_the_allocator_meets_a_latency_target_on_the_table(target: float) -> None:
    structure = ModelStructure(CASES_BY_NAME["llama"].build())
    table = _table(structure)
    scores = hf_prune.get_importance("random").scores(structure)
    config = hf_prune.PruningConfig(latency=target, ranking="global", neuron_multiple=1)
    plans = plan_for(structure, scores, config, latency=table)
    before = [dict(s.counts) for s in structure.shapes()]
    predicted = table.predicted_ms([p.counts() for p in plans], before)
    removed = 1 - predicted / table.dense_ms
    one_neuron = table.removed(before[0], {**before[0], "neurons": before[0]["neurons"] - 1}) / table.dense_ms
    assert target - 2 * one_neuron <= removed <= target + 1e-9


def test_the_table_interpolates_between_measured_points_and_extrapolates_below() -> None:
    table = LatencyTable(100.0, {"neurons": [(32, 60.0), (64, 80.0), (128, 100.0)]}, 2, 8, 128, "test", 1)
    assert table.block_ms("neurons", 96) == pytest.approx(45.0)  # halfway between 80 and 100, over 2 blocks
    assert table.block_ms("neurons", 16) == pytest.approx(25.0)  # the first segment's slope, below its start
    assert table.removed({"neurons": 128}, {"neurons": 64}) == pytest.approx(10.0)


def test_measuring_the_table_leaves_the_model_as_it_was() -> None:
    model = CASES_BY_NAME["bert"].build().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    structure = ModelStructure(model)
    table = measure_latency_table(structure, batch_size=2, seq_len=16, repeats=2)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    shape = structure.shape(0)
    assert set(table.curves) == {"heads", "neurons"}
    for kind in ("heads", "neurons"):
        units = [k for k, _ in table.curves[kind]]
        assert units == sorted(units) and units[-1] == shape[kind] and len(units) >= 2
        assert all(ms > 0 for _, ms in table.curves[kind])
    assert table.num_layers == structure.num_layers and table.batch_size == 2 and table.seq_len == 16


def test_one_shot_latency_target_reports_target_prediction_and_measurement(steady_clock: None) -> None:
    model = CASES_BY_NAME["bert"].build()
    report = hf_prune.prune(
        model, latency=0.3, latency_batch_size=2, latency_seq_len=16, importance="magnitude", reconstruct=False
    )
    entry = report.extra["latency"]
    assert entry["target_removed"] == 0.3
    assert entry["predicted_ms"] < entry["dense_ms"]
    assert entry["measured_ms"] == pytest.approx(_parameter_clock(model).median_ms, abs=1e-3)
    assert report.after.parameters < report.before.parameters
    # Each round planned near the target and was measured; the clock counts embeddings the table cannot remove,
    # so the first round falls short and the loop asks for more, within its reach.
    first, second = entry["rounds"]
    assert first["asked"] == 0.3 and first["measured_removed"] < 0.28
    assert 0.3 < second["asked"] <= 0.4 and abs(second["measured_removed"] - 0.3) <= 0.02
    assert entry["measured_removed"] == pytest.approx(second["measured_removed"], abs=1e-3)


def test_a_latency_target_in_training_is_measured_once_and_reported(tmp_path: Path, steady_clock: None) -> None:
    model = CASES_BY_NAME["llama"].build()
    config = _config(heads=None, neurons=None, latency=0.3, latency_batch_size=2, latency_seq_len=16)
    callback = hf_prune.PruningCallback(config)
    T.Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback]).train()
    entry = callback.report.extra["latency"]
    assert entry["target_removed"] == 0.3 and 1 - entry["predicted_ms"] / entry["dense_ms"] <= 0.3 + 1e-9
    assert callback.report.after.block_flops_per_token < callback.report.before.block_flops_per_token


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"latency": 0.3, "flops": 0.3}, "one cost target"),
        ({"latency": 0.3, "neurons": 0.2}, "`neurons` is solved for"),
        ({"latency": 1.5}, "latency"),
    ],
)
def test_bad_latency_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hf_prune.PruningConfig(**settings)


def test_a_latency_target_with_depth_is_refused_before_any_measurement() -> None:
    with pytest.raises(ValueError, match="latency target with layers="):
        hf_prune.prune(CASES_BY_NAME["llama"].build(), latency=0.3, layers=0.3, calibration=["some text"] * 4)


def test_the_card_states_the_latency_target_prediction_and_measurement(steady_clock: None) -> None:
    model = CASES_BY_NAME["bert"].build()
    report = hf_prune.prune(
        model, latency=0.3, latency_batch_size=2, latency_seq_len=16, importance="magnitude", reconstruct=False
    )
    card = str(build_model_card(report, config=model.config, model_class_name=type(model).__name__))
    entry = report.extra["latency"]
    assert "Latency target: remove 30% of the forward latency at batch 2 x 16 tokens" in card
    assert f"{entry['dense_ms']:.2f} -> {entry['measured_ms']:.2f} ms" in card


def test_meet_latency_corrects_the_table_on_measurements(monkeypatch: pytest.MonkeyPatch) -> None:
    """A table that overestimates what pruning saves (measured: 0.9x the asked fraction): the second round asks for
    more, lands within the tolerance, and its plans are the ones returned."""
    from types import SimpleNamespace

    from hf_prune import latency_table

    def fake_compare(dense, pruned, *args, **kwargs):
        return SimpleNamespace(median_ms=100.0), SimpleNamespace(median_ms=100.0 * (1 - 0.9 * pruned.asked))

    monkeypatch.setattr(latency_table, "compare_latency", fake_compare)
    table = LatencyTable(100.0, {}, 1, 8, 128, "test", 1)
    plans, rounds = latency_table.meet_latency(
        torch.nn.Linear(1, 1), table, 0.5, plan=lambda asked: [asked], pruned_copy=lambda p: SimpleNamespace(asked=p[0])
    )
    assert [r["asked"] for r in rounds] == [0.5, 0.55]
    assert rounds[-1]["measured_removed"] == pytest.approx(0.495)
    assert plans == [pytest.approx(0.55)]


def test_a_noisy_table_point_slower_than_a_larger_one_is_lowered_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer units never cost more: a point measured above its larger neighbour is noise, and would tell the
    allocator that pruning adds latency."""
    from hf_prune import latency_table

    noisy = iter([1.05, 0.7, 0.9, 0.6, 0.8, 1.1])  # heads at 25/50/75%, then neurons at 25/50/75% of dense

    def fake_compare(dense, pruned, *args, **kwargs):
        return Latency(100.0, [100.0], 2, 16, "test", "float32", 1), Latency(
            100.0 * next(noisy), [], 2, 16, "test", "float32", 1
        )

    monkeypatch.setattr(latency_table, "compare_latency", fake_compare)
    table = measure_latency_table(ModelStructure(CASES_BY_NAME["bert"].build()), batch_size=2, seq_len=16)
    for kind in ("heads", "neurons"):
        times = [ms for _, ms in table.curves[kind]]
        assert times == sorted(times) and times[-1] == 100.0
    assert [ms for _, ms in table.curves["heads"]][:3] == [pytest.approx(70.0)] * 2 + [pytest.approx(90.0)]
