"""Compaction during training (PruningConfig(compact=True)): masked units leave the live model with their optimizer
state, and nothing the model computes changes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers as T
from datasets import Dataset

import hf_prune
from hf_prune.allocation import LayerPlan
from hf_prune.compaction import LiveUnits, recorded_slices, slice_optimizer
from hf_prune.masks import MaskSet
from hf_prune.prune import apply_plan
from hf_prune.structure import ModelStructure

from .architectures import CASES_BY_NAME, MOE_CASES_BY_NAME
from .test_callback import _args, _config, _dataset, _StopAt

STEPS_BEFORE = 3


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 96, (4, 10), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def _plans(structure: ModelStructure) -> list[LayerPlan]:
    """Query heads from every KV group (the tiny Llama has 8 heads in 2 groups) and neurons, differently per block."""
    plans = []
    for i, shape in enumerate(structure.shapes()):
        group = shape.heads // shape.kv_heads
        heads = [g * group + h for g in range(shape.kv_heads) for h in range(group) if (h + i) % 2 == 0]
        neurons = [n for n in range(shape.neurons) if (n + i) % 3 != 0]
        plans.append(LayerPlan(keep={"heads": heads, "kv_heads": list(range(shape.kv_heads)), "neurons": neurons}))
    return plans


def _trained_with_masks() -> tuple[torch.nn.Module, torch.optim.Optimizer, MaskSet]:
    """A tiny Llama a few AdamW steps into training with masks on (weight decay on some parameters only)."""
    torch.manual_seed(0)
    model = CASES_BY_NAME["llama"].build()
    model.train()
    decay = [p for n, p in model.named_parameters() if "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if "norm" in n]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    structure = ModelStructure(model)
    masks = MaskSet(structure)
    masks.set_from_plan(_plans(structure))
    masks.attach()
    for _ in range(STEPS_BEFORE):
        model(**_batch()).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, optimizer, masks


def _compacted(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, masks: MaskSet
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A copy of the masked run, compacted the way the callback does it."""
    masks.detach()  # the copy gets no hooks: nothing is masked in a compact model
    model, optimizer = copy.deepcopy((model, optimizer))
    masks.attach()
    structure = ModelStructure(model)
    plans = masks.to_plan()
    with recorded_slices() as slices:
        apply_plan(structure, plans)
    slice_optimizer(optimizer, slices)
    return model, optimizer


def test_a_compacted_step_equals_a_masked_step() -> None:
    """The same loss, and the same next values of every kept weight (1e-5), with AdamW's state carried over."""
    model, optimizer, masks = _trained_with_masks()
    compact, compact_optimizer = _compacted(model, optimizer, masks)
    masked_names = dict(model.named_parameters())
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in model.parameters())

    losses = []
    for run, opt in ((model, optimizer), (compact, compact_optimizer)):
        loss = run(**_batch()).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)

    plans = masks.to_plan()
    hd = ModelStructure(compact).head_dim
    for i, plan in enumerate(plans):
        q_rows = torch.tensor([h * hd + d for h in plan.keep["heads"] for d in range(hd)])
        neurons = torch.tensor(plan.keep["neurons"])
        prefix = f"model.layers.{i}."
        expected = {
            "self_attn.q_proj.weight": masked_names[prefix + "self_attn.q_proj.weight"][q_rows],
            "self_attn.o_proj.weight": masked_names[prefix + "self_attn.o_proj.weight"][:, q_rows],
            "mlp.up_proj.weight": masked_names[prefix + "mlp.up_proj.weight"][neurons],
            "mlp.down_proj.weight": masked_names[prefix + "mlp.down_proj.weight"][:, neurons],
            "self_attn.k_proj.weight": masked_names[prefix + "self_attn.k_proj.weight"],
        }
        for name, value in expected.items():
            torch.testing.assert_close(compact.get_parameter(prefix + name), value, atol=1e-5, rtol=0)


def test_the_optimizer_state_is_sliced_with_its_parameters_in_their_groups() -> None:
    model, optimizer, masks = _trained_with_masks()
    compact, compact_optimizer = _compacted(model, optimizer, masks)
    before = dict(model.named_parameters())
    plans = masks.to_plan()
    neurons = torch.tensor(plans[1].keep["neurons"])
    for name, rows in (("up_proj", True), ("down_proj", False)):
        old = before[f"model.layers.1.mlp.{name}.weight"]
        new = compact.get_parameter(f"model.layers.1.mlp.{name}.weight")
        state, sliced = optimizer.state[old], compact_optimizer.state[new]
        for key in ("exp_avg", "exp_avg_sq"):
            expected = state[key][neurons] if rows else state[key][:, neurons]
            torch.testing.assert_close(sliced[key], expected, atol=0, rtol=0)
        assert int(sliced["step"]) == STEPS_BEFORE
    # Every live parameter is in the optimizer, in the group its original was in (weight decay or not).
    groups = [{id(p) for p in group["params"]} for group in compact_optimizer.param_groups]
    for name, parameter in compact.named_parameters():
        group = 1 if "norm" in name else 0
        assert id(parameter) in groups[group], name
    assert [len(g) for g in groups] == [len(g["params"]) for g in optimizer.param_groups]
    assert len(compact_optimizer.state) == len(optimizer.state)


def test_the_state_of_an_optimizer_built_on_the_compact_model_loads_into_the_carried_one() -> None:
    """What a checkpoint after compaction holds (the compact model's optimizer state) fits the carried optimizer:
    one built from scratch on the same compact parameters takes it, and the next step is the same."""
    model, optimizer, masks = _trained_with_masks()
    compact, carried = _compacted(model, optimizer, masks)
    fresh_model = copy.deepcopy(compact)
    decay = [p for n, p in fresh_model.named_parameters() if "norm" not in n]
    no_decay = [p for n, p in fresh_model.named_parameters() if "norm" in n]
    fresh = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}])
    fresh.load_state_dict(copy.deepcopy(carried.state_dict()))  # as from a file: no shared tensors
    for run, opt in ((compact, carried), (fresh_model, fresh)):
        run(**_batch()).loss.backward()
        opt.step()
    for (name, a), b in zip(compact.named_parameters(), fresh_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_live_units_map_plans_between_the_numberings_and_refuse_reviving_a_removed_unit() -> None:
    structure = ModelStructure(CASES_BY_NAME["llama"].build())
    live = LiveUnits(structure.shapes())
    plans = _plans(structure)
    live.keep(live.live_plans(plans))
    assert live.compacted
    assert live.ids["heads"][0].tolist() == plans[0].keep["heads"]
    smaller = [LayerPlan(keep={k: v[: len(v) // 2] if k == "neurons" else v for k, v in p.keep.items()}) for p in plans]
    again = live.live_plans(smaller)
    assert again[0].keep["neurons"] == list(range(len(plans[0].keep["neurons"]) // 2))
    restored = LiveUnits(structure.shapes())
    restored.load_state_dict(json.loads(json.dumps(live.state_dict())))
    assert all(torch.equal(a, b) for k in live.ids for a, b in zip(live.ids[k], restored.ids[k], strict=True))
    with pytest.raises(RuntimeError, match="already removed"):
        live.live_plans([LayerPlan(keep={k: list(range(s[k])) for k in s.counts}) for s in structure.shapes()])


# -- inside Trainer -------------------------------------------------------------------------------------------


def _run(output: Path, compact: bool, resume: str | None = None, stop_at: int | None = None, **config: object):
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(compact=compact, **config))
    callbacks: list[T.TrainerCallback] = [callback] + ([_StopAt(stop_at)] if stop_at else [])
    args = _args(output, save_strategy="steps", save_steps=4)
    trainer = T.Trainer(model=model, args=args, train_dataset=_dataset(), callbacks=callbacks)
    sizes: list[int] = []

    class _Sizes(T.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sizes.append(sum(p.numel() for p in model.parameters()))

    trainer.add_callback(_Sizes())
    if stop_at and stop_at < 18:
        with pytest.warns(UserWarning, match="pruned less than the target"):
            trainer.train(resume_from_checkpoint=resume)
    else:
        trainer.train(resume_from_checkpoint=resume)
    return model, callback, sizes


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(2))).logits


def test_a_compacting_run_shrinks_as_it_goes_and_ends_where_the_masked_run_ends(tmp_path: Path) -> None:
    masked, masked_callback, masked_sizes = _run(tmp_path / "masked", compact=False)
    compact, compact_callback, compact_sizes = _run(tmp_path / "compact", compact=True)
    assert len(set(masked_sizes)) == 1, "masking keeps every step at full size"
    assert compact_sizes == sorted(compact_sizes, reverse=True) and len(set(compact_sizes)) > 2
    assert compact_sizes[-1] == sum(p.numel() for p in compact.parameters())
    assert compact_callback.report.kept == masked_callback.report.kept
    assert compact_callback.report.layers_after == masked_callback.report.layers_after
    torch.testing.assert_close(_logits(compact), _logits(masked), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("interrupt_at", [4, 12, 20])
def test_a_compacting_run_resumes_at_any_point_to_the_same_model(tmp_path: Path, interrupt_at: int) -> None:
    """Interrupted before the first compaction that removes anything, between compactions and after the last
    (the schedule ends at step 18), resumed from the checkpoint into a freshly built, full-size model."""
    uninterrupted, callback, _ = _run(tmp_path / "full", compact=True)
    _run(tmp_path / "interrupted", compact=True, stop_at=interrupt_at)
    checkpoint = tmp_path / "interrupted" / f"checkpoint-{interrupt_at}"
    resumed, resumed_callback, _ = _run(tmp_path / "interrupted", compact=True, resume=str(checkpoint))
    assert resumed_callback.report.kept == callback.report.kept
    torch.testing.assert_close(_logits(resumed), _logits(uninterrupted), atol=1e-4, rtol=1e-4)


def test_an_optimizer_whose_state_cannot_be_sliced_is_refused_before_training(tmp_path: Path) -> None:
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(compact=True))
    args = _args(tmp_path, optim="adafactor")
    trainer = T.Trainer(model=model, args=args, train_dataset=_dataset(), callbacks=[callback])
    with pytest.raises(ValueError, match=r"Adafactor.*adamw_torch.*compact=False"):
        trainer.train()


def test_compaction_with_load_best_model_at_end_is_refused(tmp_path: Path) -> None:
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(compact=True))
    args = _args(
        tmp_path, load_best_model_at_end=True, eval_strategy="steps", save_strategy="steps", eval_steps=4, save_steps=4
    )
    trainer = T.Trainer(model=model, args=args, train_dataset=_dataset(), eval_dataset=_dataset(), callbacks=[callback])
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        trainer.train()


def test_compaction_with_depth_is_refused() -> None:
    with pytest.raises(ValueError, match=r"layers=.*compact=False"):
        hf_prune.PruningCallback(_config(compact=True, layers=0.3))


def test_moe_experts_compact_during_training_to_the_masking_runs_model(tmp_path: Path) -> None:
    """Experts leave the live model with their 3-D slices, the router's rows and their optimizer state; the run
    ends where the masking run ends."""
    ids = torch.randint(3, 96, (32, 12), generator=torch.Generator().manual_seed(0))
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    runs = []
    for compact in (False, True):
        model = MOE_CASES_BY_NAME["mixtral"].build()
        callback = hf_prune.PruningCallback(
            experts=0.34, heads=0.0, importance="taylor", end=0.75, update_every=2, compact=compact
        )
        args = _args(tmp_path / str(compact), max_steps=8, logging_steps=2)
        T.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback]).train()
        runs.append((model, callback))
    (masked, masked_callback), (compact, compact_callback) = runs
    assert compact_callback.report.kept == masked_callback.report.kept
    assert [s.counts["experts"] for s in ModelStructure(compact).shapes()] == [4, 4]
    torch.testing.assert_close(_logits(compact), _logits(masked), atol=1e-4, rtol=1e-4)
