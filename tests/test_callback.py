"""PruningCallback inside a real Trainer run on a tiny model: structure, logs, saved model, resume, errors."""

from __future__ import annotations

import copy
import itertools
import json
import math
import types
from pathlib import Path
from unittest import mock

import pytest
import torch
import transformers as T
from datasets import Dataset, DatasetInfo

import hf_prune
from hf_prune.callback import _gradient_scales
from hf_prune.prune import plan_for
from hf_prune.structure import ModelStructure

from .architectures import CASES_BY_NAME
from .hub_server import LocalHub

MAX_STEPS = 24


def _dataset(decoder: bool = True) -> Dataset:
    ids = torch.randint(3, 96, (96, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.tolist() if decoder else (ids[:, 0] % 3).tolist()
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels})


def _args(output: Path, **overrides: object) -> T.TrainingArguments:
    settings = dict(
        output_dir=str(output),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=4,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    settings.update(overrides)
    return T.TrainingArguments(**settings)


def _config(**overrides: object) -> hf_prune.PruningConfig:
    settings = dict(heads=0.5, neurons=0.5, importance="taylor", end=0.75, update_every=3, neuron_multiple=8)
    settings.update(overrides)
    return hf_prune.PruningConfig(**settings)


def test_trainer_run_ends_pruned_logged_and_loadable(tmp_path: Path) -> None:
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config())
    trainer = T.Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback])
    trainer.train()

    shapes = ModelStructure(model).shapes()
    assert [(s.heads, s.kv_heads, s.neurons) for s in shapes] == [(4, 1, 48)] * 3
    logged = [h for h in trainer.state.log_history if "pruning/heads_kept" in h]
    assert logged, "the callback's fields must be in the Trainer's logs"
    assert logged[-1]["pruning/heads_kept"] == 0.5 and logged[-1]["pruning/neurons_kept"] == 0.5
    progress = [h["pruning/progress"] for h in logged]
    assert progress == sorted(progress) and progress[-1] == 1.0 and progress[0] < 1.0

    report = json.loads((tmp_path / "pruning_report.json").read_text())
    assert report["layers_after"] == [{"heads": 4, "kv_heads": 1, "neurons": 48}] * 3
    assert report["extra"]["schedule"]["kind"] == "cubic"

    trainer.save_model(str(tmp_path / "final"))
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "final")  # uniform llama: plain transformers
    inputs = torch.randint(3, 96, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs).logits, model.eval()(inputs).logits, atol=1e-5, rtol=0)


def test_masked_groups_stay_masked_and_do_not_affect_outputs(tmp_path: Path) -> None:
    """Once a group is masked it never comes back, whatever its gradients do."""
    model = CASES_BY_NAME["bert"].build()
    callback = hf_prune.PruningCallback(_config(importance="fisher", schedule="linear"))
    seen: list[list[torch.Tensor]] = []
    original = callback._update

    def record(step: int) -> None:
        original(step)
        seen.append([m.clone() for m in callback.masks.neurons])

    with mock.patch.object(callback, "_update", side_effect=record):
        trainer = T.Trainer(
            model=model, args=_args(tmp_path), train_dataset=_dataset(decoder=False), callbacks=[callback]
        )
        trainer.train()
    assert len(seen) >= 3
    for earlier, later in itertools.pairwise(seen):
        for a, b in zip(earlier, later, strict=True):
            assert not (b & ~a).any(), "a masked neuron was revived"


def test_flops_target_is_met_within_one_group(tmp_path: Path) -> None:
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(
        _config(heads=None, neurons=None, flops=0.4, ranking="global", neuron_multiple=1)
    )
    T.Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback]).train()
    report = callback.report
    removed = 1 - report.after.block_flops_per_token / report.before.block_flops_per_token
    costs = hf_prune.flops.unit_costs(ModelStructure(model), "flops")
    one_neuron = costs["neurons"] / report.before.block_flops_per_token
    assert 0.4 - one_neuron <= removed <= 0.4


def test_schedule_steps_the_callback_updates_at(tmp_path: Path) -> None:
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(importance="magnitude", schedule="iterative", begin=4, end=16))
    with mock.patch.object(callback, "_update", wraps=callback._update) as update:
        T.Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback]).train()
    assert [c.args[0] for c in update.call_args_list] == [4, 7, 10, 13, 16]


@pytest.mark.parametrize("importance", ["taylor", "fisher", "activation"])
def test_one_shot_with_a_data_driven_criterion_prunes_to_the_target(tmp_path: Path, importance: str) -> None:
    """The one update of one_shot is due at step 0, before any statistics: it happens after the first step."""
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(importance=importance, schedule="one_shot"))
    with mock.patch.object(callback, "_update", wraps=callback._update) as update:
        T.Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback]).train()
    assert [c.args[0] for c in update.call_args_list] == [0, 1]  # due at 0 (no statistics), applied at 1
    assert [(s.heads, s.kv_heads, s.neurons) for s in ModelStructure(model).shapes()] == [(4, 1, 48)] * 3
    assert callback.report.extra["schedule"]["progress_reached"] == 1.0


# -- mixed precision ---------------------------------------------------------------------------------------


def test_gradient_scales_follow_the_scaler_behind_the_optimizer() -> None:
    parameter = torch.nn.Parameter(torch.ones(3))
    inner = torch.optim.SGD([parameter], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    wrapped = types.SimpleNamespace(optimizer=inner, scaler=scaler)  # what accelerate's AcceleratedOptimizer has
    assert _gradient_scales(inner) == (1.0, 1.0)  # no scaler
    assert _gradient_scales(types.SimpleNamespace(optimizer=inner, scaler=None)) == (1.0, 1.0)
    scaler.scale(parameter.sum()).backward()
    assert _gradient_scales(wrapped) == (1024.0, 1024.0)  # the parameters' gradients are still scaled
    scaler.unscale_(inner)  # as gradient clipping does
    assert _gradient_scales(wrapped) == (1024.0, 1.0)
    scaler.step(inner)
    scaler.update()
    assert _gradient_scales(wrapped) == (1024.0, 1024.0)  # the next step's gradients are scaled again


def _accumulated(tmp_path: Path, importance: str, scaler: torch.amp.GradScaler | None) -> list[torch.Tensor]:
    """The statistics a callback run accumulates over 6 steps (the one-shot update is at the last step)."""
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(importance=importance, schedule="one_shot", begin=6))
    args = _args(tmp_path, max_steps=6, max_grad_norm=0.0)  # clipping scaled gradients would change the run
    trainer = T.Trainer(model=model, args=args, train_dataset=_dataset(), callbacks=[callback])
    if scaler is not None:
        # What fp16 training does on a GPU: accelerate scales the loss, and its optimizer unscales and steps.
        trainer.accelerator.scaler = scaler
    trainer.train()
    assert callback.importance.updates == 6
    return [*callback.importance.values["heads"], *callback.importance.values["neurons"]]


@pytest.mark.parametrize("importance", ["taylor", "fisher"])
def test_scores_accumulated_under_a_grad_scaler_equal_unscaled_ones(tmp_path: Path, importance: str) -> None:
    """A power-of-two loss scale in fp32 changes no update: the scores must be the same as without it."""
    expected = _accumulated(tmp_path / "plain", importance, None)
    got = _accumulated(tmp_path / "scaled", importance, torch.amp.GradScaler("cpu", init_scale=2.0**16))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=0)


@pytest.mark.parametrize("importance", ["taylor", "fisher"])
def test_bf16_autocast_run_keeps_scores_finite_and_prunes(tmp_path: Path, importance: str) -> None:
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(importance=importance))
    args = _args(tmp_path, bf16=True)
    T.Trainer(model=model, args=args, train_dataset=_dataset(), callbacks=[callback]).train()
    statistics = [*callback.importance.values["heads"], *callback.importance.values["neurons"]]
    assert callback.importance.updates > 0 and all(torch.isfinite(t).all() for t in statistics)
    assert [(s.heads, s.kv_heads, s.neurons) for s in ModelStructure(model).shapes()] == [(4, 1, 48)] * 3


def test_distillation_trainer_prunes_and_distils(tmp_path: Path) -> None:
    model = CASES_BY_NAME["bert"].build()
    trainer = hf_prune.PruningTrainer(
        model=model,
        args=_args(tmp_path),
        train_dataset=_dataset(decoder=False),
        pruning=_config(importance="fisher"),
        distillation=hf_prune.DistillationConfig(alpha=0.7, hidden_weight=0.5),
    )
    assert trainer.callback_handler.callbacks[0] is trainer.pruning_callback
    teacher_params = sum(p.numel() for p in trainer.teacher.parameters())
    trainer.train()
    assert sum(p.numel() for p in model.parameters()) < teacher_params
    assert sum(p.numel() for p in trainer.teacher.parameters()) == teacher_params  # the teacher stays dense
    assert all(not p.requires_grad for p in trainer.teacher.parameters())


def test_distillation_loss_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    logits = torch.randn(2, 5, 11)
    assert float(hf_prune.trainer.distillation_loss(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(hf_prune.trainer.distillation_loss(logits, logits.flip(-1), 2.0)) > 0.0


# -- resume ------------------------------------------------------------------------------------------------


class _StopAt(T.TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
            control.should_save = True


def _kept(output: Path, resume: str | None = None, stop_at: int | None = None) -> list[dict[str, list[int]]]:
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(importance="taylor"))
    callbacks: list[T.TrainerCallback] = [callback] + ([_StopAt(stop_at)] if stop_at else [])
    args = _args(output, save_strategy="steps", save_steps=4)
    trainer = T.Trainer(model=model, args=args, train_dataset=_dataset(), callbacks=callbacks)
    with pytest.warns(UserWarning, match="pruned less than the target") if stop_at and stop_at < 18 else _nothing():
        trainer.train(resume_from_checkpoint=resume)
    return callback.report.kept


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("interrupt_at", [4, 12, 20])
def test_resume_at_any_point_of_the_schedule_ends_with_the_same_structure(tmp_path: Path, interrupt_at: int) -> None:
    """Interrupted before, during and after the schedule (it ends at step 18), resumed from the checkpoint."""
    uninterrupted = _kept(tmp_path / "full")
    _kept(tmp_path / "interrupted", stop_at=interrupt_at)
    checkpoint = tmp_path / "interrupted" / f"checkpoint-{interrupt_at}"
    assert checkpoint.is_dir()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert "_resume" in state["stateful_callbacks"]["PruningCallback"]["attributes"]
    resumed = _kept(tmp_path / "interrupted", resume=str(checkpoint))
    assert resumed == uninterrupted


def test_pruning_trainer_follows_the_callback_that_trainer_restores(tmp_path: Path) -> None:
    """restore_callback_states_from_checkpoint=True makes Trainer build a new PruningCallback from the
    checkpoint: the report, the card and the first place in the callback list belong to that live one."""
    args = dict(save_strategy="steps", save_steps=4, restore_callback_states_from_checkpoint=True)

    def trainer(callbacks: list[T.TrainerCallback]) -> hf_prune.PruningTrainer:
        model = CASES_BY_NAME["llama"].build()
        return hf_prune.PruningTrainer(
            model=model,
            args=_args(tmp_path, **args),
            train_dataset=_dataset(),
            pruning=_config(importance="magnitude"),
            callbacks=callbacks,
        )

    with pytest.warns(UserWarning, match="pruned less than the target"):
        trainer([_StopAt(8)]).train()
    resumed = trainer([])
    original = resumed.pruning_callback
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    live = resumed.pruning_callback
    assert live is not original and original not in resumed.callback_handler.callbacks, "Trainer rebuilt it"
    assert resumed.callback_handler.callbacks[0] is live
    assert live.report is not None and live.report.layers_after == [{"heads": 4, "kv_heads": 1, "neurons": 48}] * 3
    resumed.save_model()
    resumed.create_model_card()
    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "(structured pruning with hf_prune). It keeps 12 of 24 attention heads" in card


# -- bad input ---------------------------------------------------------------------------------------------


def test_schedule_ending_after_training_is_refused(tmp_path: Path) -> None:
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(end=100))
    trainer = T.Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback])
    with pytest.raises(ValueError, match="training stops at step 24"):
        trainer.train()


@pytest.mark.parametrize("field", ["heads", "neurons", "flops", "params"])
@pytest.mark.parametrize("value", [1.0, 1.5, -0.2])
def test_targets_outside_zero_one_are_refused(field: str, value: float) -> None:
    extra = {"neurons": None} if field in ("flops", "params") else {}
    with pytest.raises(ValueError, match=f"`{field}` must be a fraction in \\[0, 1\\)"):
        hf_prune.PruningCallback(_config(**extra), **{field: value})


def test_zero_target_is_refused(tmp_path: Path) -> None:
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(heads=0.0, neurons=0.0))
    trainer = T.Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback])
    with pytest.raises(ValueError, match="target of 0"):
        trainer.train()


@pytest.mark.parametrize("index", [7, -1])
def test_protected_layer_out_of_range_is_refused_before_training(tmp_path: Path, index: int) -> None:
    """The same check as prune(): an index the model does not have would otherwise be ignored silently."""
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(protected_layers=[0, index]))
    trainer = T.Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback])
    with pytest.raises(ValueError, match=rf"protected layer {index} does not exist \(the model has 3\)"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_reconstruction_is_refused_in_training_and_points_to_the_one_shot_path() -> None:
    with pytest.raises(ValueError, match=r"reconstruct=True is for one-shot pruning \(hf_prune\.prune\)"):
        hf_prune.PruningCallback(_config(reconstruct=True))
    hf_prune.PruningCallback(_config(reconstruct=False))  # off is what training does anyway


def test_unknown_importance_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"unknown importance 'snip'\. Available: activation, fisher"):
        hf_prune.PruningCallback(importance="snip")


def test_model_without_recipe_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = T.OPTConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4)
    model = T.OPTForCausalLM(config)
    trainer = T.Trainer(
        model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[hf_prune.PruningCallback(_config())]
    )
    with pytest.raises(ValueError, match=r"no recipe for model_type 'opt'\. Shipped recipes: bert"):
        trainer.train()


def test_fractional_schedule_without_known_length_is_refused() -> None:
    with pytest.raises(ValueError, match="number of training steps is unknown"):
        _config().to_schedule().steps(None)


def test_neurons_only_gradual_pruning_of_an_mqa_model_with_kv_groups(tmp_path: Path) -> None:
    """No head is pruned, so no head units are needed: gqa_mode='kv_groups' on one KV head is fine."""
    model = CASES_BY_NAME["gemma3_mqa"].build()  # 8 query heads, 1 KV head, 96 neurons
    callback = hf_prune.PruningCallback(_config(heads=0.0, neurons=0.5, gqa_mode="kv_groups", importance="magnitude"))
    T.Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback]).train()
    assert [(s.heads, s.kv_heads, s.neurons) for s in ModelStructure(model).shapes()] == [(8, 1, 48)] * 3


@pytest.mark.parametrize("seed", range(4))
def test_gradual_cost_target_never_revives_and_ends_on_the_target(seed: int) -> None:
    """The callback's planning loop, without a Trainer: fresh random scores at every update of a cubic schedule
    towards 40% fewer block FLOPs. Masks only grow, and the last plan meets the target within one neuron (the
    fine neurons must not fill every partial target until no coarse KV group fits any more)."""
    model = CASES_BY_NAME["llama"].build()
    structure = ModelStructure(model)
    config = hf_prune.PruningConfig(flops=0.4, ranking="global", neuron_multiple=1)
    shapes = structure.shapes()
    masks = hf_prune.MaskSet(structure)
    generator = torch.Generator().manual_seed(seed)
    for progress in (0.16, 0.42, 0.7, 0.88, 0.96, 1.0):
        scores = hf_prune.importance.Scores(
            [torch.rand(s.heads, generator=generator) for s in shapes],
            [torch.rand(s.neurons, generator=generator) for s in shapes],
        )
        before = ([m.clone() for m in masks.heads], [m.clone() for m in masks.neurons])
        masked = {"heads": [~m for m in masks.heads], "neurons": [~m for m in masks.neurons]}
        plans = plan_for(structure, scores, config, progress, masked)
        masks.set_from_plan(plans)
        for old, new in zip((*before[0], *before[1]), (*masks.heads, *masks.neurons), strict=True):
            assert not (new & ~old).any(), f"a masked group came back at progress {progress}"
    costs = hf_prune.flops.unit_costs(structure, "flops")
    total = hf_prune.flops.measure_cost(structure).block_flops_per_token
    kept_kv = [len(p.keep_kv_heads) for p in masks.to_plan()]
    removed = sum(
        costs.removed(s.counts, {"heads": h, "kv_heads": kv, "neurons": n})
        for s, h, kv, n in zip(shapes, masks.kept_heads, kept_kv, masks.kept_neurons, strict=True)
    )
    assert 0.4 - costs["neurons"] / total <= removed / total <= 0.4


# -- quality before and after --------------------------------------------------------------------------------


def _eval_dataset() -> Dataset:
    """Held-out windows with a name and split of their own, so the card's model-index can name them."""
    ids = torch.randint(3, 96, (16, 12), generator=torch.Generator().manual_seed(1))
    info = DatasetInfo(dataset_name="tiny-held-out")
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()}, info=info, split="validation")


def _eval_logs(trainer: T.Trainer) -> dict[int, dict[str, float]]:
    return {h["step"]: h for h in trainer.state.log_history if "eval_loss" in h}


def _mean_loss(model: torch.nn.Module, dataset: Dataset, batch_size: int = 8) -> float:
    """The eval loss computed without the Trainer: the mean over equal batches of the model's own loss."""
    ids = torch.tensor(dataset["input_ids"])
    with torch.no_grad():
        losses = [float(model.eval()(input_ids=b, labels=b).loss) for b in ids.split(batch_size)]
    return sum(losses) / len(losses)


def test_trainer_evaluations_of_the_dense_and_pruned_model_reach_the_report_and_card(tmp_path: Path) -> None:
    """eval_on_start measures the dense model; step 10 is mid-schedule (ignored); the schedule's last update is at
    step 18, so the pruned figure is the last evaluation after it: the one the callback asks for at step 24."""
    model = CASES_BY_NAME["llama"].build()
    dense = copy.deepcopy(model)
    callback = hf_prune.PruningCallback(_config(importance="magnitude"))
    args = _args(tmp_path, eval_on_start=True, eval_strategy="steps", eval_steps=10, per_device_eval_batch_size=8)
    held_out = _eval_dataset()
    trainer = T.Trainer(model=model, args=args, train_dataset=_dataset(), eval_dataset=held_out, callbacks=[callback])
    trainer.train()

    logs = _eval_logs(trainer)
    assert sorted(logs) == [0, 10, 20, 24], "the final model is evaluated at the last step"
    entry = json.loads((tmp_path / "pruning_report.json").read_text())["extra"]["eval"]
    assert entry["steps"] == {"before": 0, "after": 24}
    assert entry["before"]["loss"] == logs[0]["eval_loss"] == pytest.approx(_mean_loss(dense, held_out), rel=1e-5)
    assert entry["after"]["loss"] == logs[24]["eval_loss"] == pytest.approx(_mean_loss(model, held_out), rel=1e-5)
    assert entry["after"]["perplexity"] == pytest.approx(math.exp(logs[24]["eval_loss"]))
    assert "runtime" not in entry["after"] and "samples_per_second" not in entry["after"]
    assert entry["dataset"] == {"type": "tiny-held-out", "name": "tiny-held-out", "split": "validation"}

    card = hf_prune.build_model_card(callback.report, model_class_name="LlamaForCausalLM")
    indexed = {r.metric_type: r for r in card.data.eval_results}
    assert indexed["loss"].metric_value == entry["after"]["loss"]
    assert indexed["perplexity"].metric_value == entry["after"]["perplexity"]
    assert indexed["loss"].dataset_name == "tiny-held-out" and indexed["loss"].dataset_split == "validation"
    assert indexed["loss"].task_type == "text-generation"
    assert "the dense model at step 0 and the pruned model at step 24" in card.text
    assert "not evaluated" not in card.text


def test_without_a_dense_evaluation_the_card_says_so(tmp_path: Path) -> None:
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(importance="magnitude"))
    args = _args(tmp_path, eval_strategy="steps", eval_steps=20)
    T.Trainer(
        model=model, args=args, train_dataset=_dataset(), eval_dataset=_eval_dataset(), callbacks=[callback]
    ).train()
    entry = callback.report.extra["eval"]
    assert entry["before"] is None and entry["steps"] == {"after": 24}
    text = hf_prune.build_model_card(callback.report).text
    assert "The dense model was not evaluated before pruning started" in text
    assert hf_prune.evaluation.check_collapse(entry) is None  # nothing to compare with: no verdict


def test_pruning_trainer_evaluates_the_dense_and_the_final_model_itself(tmp_path: Path) -> None:
    """With an eval_dataset and no evaluation strategy, PruningTrainer measures both ends of the run."""
    model = CASES_BY_NAME["llama"].build()
    dense = copy.deepcopy(model)
    held_out = _eval_dataset()
    args = _args(tmp_path)
    trainer = hf_prune.PruningTrainer(
        model=model, args=args, train_dataset=_dataset(), eval_dataset=held_out, pruning=_config()
    )
    trainer.train()
    assert sorted(_eval_logs(trainer)) == [0, 24]
    assert args.eval_on_start is False, "the user's TrainingArguments are left as they were"
    entry = trainer.pruning_callback.report.extra["eval"]
    assert entry["before"]["loss"] == pytest.approx(_mean_loss(dense, held_out), rel=1e-5)
    assert entry["after"]["loss"] == pytest.approx(_mean_loss(model, held_out), rel=1e-5)
    trainer.create_model_card()
    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "## Evaluation" in card and "the dense model at step 0 and the pruned model at step 24" in card


def test_eval_on_start_measures_the_dense_model_before_an_update_due_at_step_0(tmp_path: Path) -> None:
    """one_shot magnitude prunes at step 0, when training begins: eval_on_start's evaluation comes first, and the
    run ends with the same structure as without it."""
    config = _config(importance="magnitude", schedule="one_shot")
    plain = hf_prune.PruningCallback(config)
    T.Trainer(
        model=CASES_BY_NAME["llama"].build(),
        args=_args(tmp_path / "plain"),
        train_dataset=_dataset(),
        callbacks=[plain],
    ).train()
    model = CASES_BY_NAME["llama"].build()
    dense, held_out = copy.deepcopy(model), _eval_dataset()
    trainer = hf_prune.PruningTrainer(
        model=model, args=_args(tmp_path / "evaluated"), train_dataset=_dataset(), eval_dataset=held_out, pruning=config
    )
    trainer.train()
    entry = trainer.pruning_callback.report.extra["eval"]
    assert entry["before"]["loss"] == pytest.approx(_mean_loss(dense, held_out), rel=1e-5)
    assert entry["steps"] == {"before": 0, "after": 24}
    assert trainer.pruning_callback.report.kept == plain.report.kept


def test_an_evaluation_after_train_updates_the_report(tmp_path: Path) -> None:
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(importance="magnitude"))
    held_out = _eval_dataset()
    trainer = T.Trainer(
        model=model, args=_args(tmp_path), train_dataset=_dataset(), eval_dataset=held_out, callbacks=[callback]
    )
    trainer.train()
    assert "eval" not in callback.report.extra  # nothing was evaluated during training
    metrics = trainer.evaluate()
    saved = json.loads((tmp_path / "pruning_report.json").read_text())["extra"]["eval"]
    assert saved["after"]["loss"] == metrics["eval_loss"] and saved["before"] is None
    assert callback.report.extra["eval"] == saved


def test_the_dense_figure_survives_resume(tmp_path: Path) -> None:
    def run(resume: str | None, callbacks: list[T.TrainerCallback]) -> tuple[T.Trainer, hf_prune.PruningCallback]:
        callback = hf_prune.PruningCallback(_config(importance="magnitude"))
        args = _args(tmp_path, save_strategy="steps", save_steps=4, eval_on_start=resume is None)
        trainer = T.Trainer(
            model=CASES_BY_NAME["llama"].build(),
            args=args,
            train_dataset=_dataset(),
            eval_dataset=_eval_dataset(),
            callbacks=[callback, *callbacks],
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer, callback

    with pytest.warns(UserWarning, match="pruned less than the target"):
        first, _ = run(None, [_StopAt(8)])
    dense_loss = _eval_logs(first)[0]["eval_loss"]
    resumed, callback = run(str(tmp_path / "checkpoint-8"), [])
    evaluations = [h["step"] for h in resumed.state.log_history if "eval_loss" in h]
    assert evaluations == [0], "the first run's evaluation, restored with the state; none in the resumed run"
    assert callback.report.extra["eval"]["before"]["loss"] == dense_loss
    assert callback.report.extra["eval"]["steps"]["before"] == 0


class _BreakAtTheEnd(T.TrainerCallback):
    """Break the model on purpose after pruning (logits x50), before the final evaluation."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == state.max_steps:
            with torch.no_grad():
                model.lm_head.weight.mul_(50.0)


def test_push_guard_refuses_a_training_run_whose_quality_collapsed(tmp_path: Path, local_hub: LocalHub) -> None:
    repo = "user/collapsed"
    output = tmp_path / "run"
    args = _args(output, push_to_hub=True, hub_model_id=repo, hub_strategy="end")
    trainer = hf_prune.PruningTrainer(
        model=CASES_BY_NAME["llama"].build(),
        args=args,
        train_dataset=_dataset(),
        eval_dataset=_eval_dataset(),
        pruning=_config(importance="magnitude"),
        callbacks=[_BreakAtTheEnd()],
    )
    with pytest.raises(hf_prune.evaluation.QualityCollapseError, match=r"refusing to push.*perplexity went from"):
        trainer.train()
    assert "model.safetensors" not in local_hub.files(repo), "nothing was uploaded"
    assert (output / "model.safetensors").is_file() and (output / "README.md").is_file(), "but it is saved"
    with pytest.raises(hf_prune.evaluation.QualityCollapseError):
        trainer.push_to_hub()
    assert "model.safetensors" not in local_hub.files(repo)
    trainer.push_to_hub(force=True)
    assert "model.safetensors" in local_hub.files(repo)


# -- whole blocks (layers=) ----------------------------------------------------------------------------------


def test_blocks_are_skipped_gradually_never_revived_and_removed_at_the_end(tmp_path: Path) -> None:
    model = CASES_BY_NAME["gemma3"].build()  # sliding-window layer types: sliced with the blocks
    callback = hf_prune.PruningCallback(_config(layers=0.67, heads=0.5, neurons=0.0, schedule="linear"))
    seen: list[list[int]] = []
    original = callback._update

    def record(step: int) -> None:
        original(step)
        seen.append(list(callback.blocks.skipped))

    with mock.patch.object(callback, "_update", side_effect=record):
        trainer = T.Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback])
        trainer.train()
    assert [len(s) for s in seen][-1] == 2 and any(len(s) == 1 for s in seen), "one block, then the second"
    for earlier, later in itertools.pairwise(seen):
        assert set(earlier) <= set(later), "a skipped block came back"
    report = callback.report
    assert report.removed_layers == seen[-1] and report.extra["depth"]["criterion"] == "block_influence"
    assert ModelStructure(model).num_layers == 1 and model.config.num_hidden_layers == 1
    assert len(model.config.layer_types) == 1
    kept = [a for i, a in enumerate(report.layers_after) if i not in report.removed_layers]
    assert kept == [{"heads": 4, "kv_heads": 1, "neurons": 96}]  # one of 2 KV groups, in the block that stays
    trainer.save_model(str(tmp_path / "final"))
    reloaded = hf_prune.from_pretrained(tmp_path / "final").eval()
    inputs = {"input_ids": torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model.eval()(**inputs).logits, atol=1e-5, rtol=0)
    logged = [entry["pruning/blocks_kept"] for entry in trainer.state.log_history if "pruning/blocks_kept" in entry]
    assert logged[0] == 1.0 and logged[-1] == pytest.approx(1 / 3)


def test_block_influence_is_gathered_from_training_passes_only(tmp_path: Path) -> None:
    model = CASES_BY_NAME["llama"].build()
    callback = hf_prune.PruningCallback(_config(layers=0.34, heads=0.0, neurons=0.5, end=0.5))
    args = _args(tmp_path, eval_strategy="steps", eval_steps=6, max_steps=6)
    trainer = T.Trainer(model=model, args=args, train_dataset=_dataset(), eval_dataset=_dataset(), callbacks=[callback])
    trainer.train()
    tokens = callback.blocks.tokens
    assert torch.equal(tokens, torch.full((3,), 6 * 8 * 12, dtype=torch.float64)), "6 steps of 8 x 12 tokens"


@pytest.mark.parametrize("interrupt_at", [4, 12, 20])
def test_resume_with_blocks_ends_with_the_same_blocks_and_structure(tmp_path: Path, interrupt_at: int) -> None:
    def run(output: Path, resume: str | None = None, stop_at: int | None = None) -> hf_prune.PruningReport:
        callback = hf_prune.PruningCallback(_config(layers=0.34, heads=0.5, neurons=0.5, importance="taylor"))
        callbacks: list[T.TrainerCallback] = [callback] + ([_StopAt(stop_at)] if stop_at else [])
        args = _args(output, save_strategy="steps", save_steps=4)
        trainer = T.Trainer(
            model=CASES_BY_NAME["llama"].build(), args=args, train_dataset=_dataset(), callbacks=callbacks
        )
        with pytest.warns(UserWarning, match="pruned less") if stop_at and stop_at < 18 else _nothing():
            trainer.train(resume_from_checkpoint=resume)
        return callback.report

    full = run(tmp_path / "full")
    run(tmp_path / "cut", stop_at=interrupt_at)
    resumed = run(tmp_path / "cut", resume=str(tmp_path / "cut" / f"checkpoint-{interrupt_at}"))
    assert resumed.removed_layers == full.removed_layers and len(full.removed_layers) == 1
    assert resumed.kept == full.kept
    assert resumed.extra["depth"]["scores"] == pytest.approx(full.extra["depth"]["scores"], rel=1e-6)


def test_layers_with_a_cost_target_or_another_criterion_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="one-shot only"):
        hf_prune.PruningCallback(layers=0.25, params=0.3)
    with pytest.raises(ValueError, match="Block Influence"):
        hf_prune.PruningCallback(layers=0.25, heads=0.2, layer_importance="loss")


def test_zero3_partitioned_weights_are_refused_by_name() -> None:
    """DeepSpeed ZeRO-3 leaves empty placeholders (``ds_numel`` holds the real size): refused before training."""
    model = CASES_BY_NAME["llama"].build()
    weight = model.model.layers[0].mlp.down_proj.weight
    weight.ds_numel = weight.numel()
    weight.data = torch.empty(0)
    callback = hf_prune.PruningCallback(heads=0.5)
    with pytest.raises(ValueError, match=r"ZeRO-3.*ZeRO stage 1 or 2"):
        callback._check_sharding(model, model)


def test_fsdp1_flat_parameters_are_refused_by_name() -> None:
    """FSDP1 flattens a block's weights into one FlatParameter: refused before training, pointing at FSDP2."""
    from torch.distributed.fsdp._flat_param import FlatParameter

    model = CASES_BY_NAME["llama"].build()
    model.model.layers[0].flat_param = FlatParameter(torch.zeros(8), requires_grad=True)
    with pytest.raises(ValueError, match=r"FSDP1.*FlatParameter.*fsdp_version: 2"):
        hf_prune.PruningCallback(heads=0.5)._check_sharding(model, model)
