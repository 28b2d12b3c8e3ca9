"""Neurons inside MoE experts (hf_prune/kinds/expert_neurons.py) on tiny Mixtral, Qwen3-MoE and OLMoE models: masked
== pruned (forward and cached generation, alone and with experts removed in the same plan), backward, closed-form
counts, the allocator's slots, the mask's gradient and its cleanup, checkpoints three ways, a Trainer run with
compaction, and the errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers as T

import hf_prune
from hf_prune.allocation import expert_neuron_request, plan_units
from hf_prune.flops import measure_cost
from hf_prune.masks import MaskSet
from hf_prune.recipe import Recipe, RecipeError, shipped_recipes
from hf_prune.structure import ModelStructure

from .architectures import MOE_CASES, MOE_CASES_BY_NAME, MoECase
from .moe import ATOL, QUICK, TOP_K, moe_ids, prune_with_masked_twin
from .test_architectures import _assert_loads_without_hf_prune, _assert_same_generation
from .test_callback import _args

# The families whose recipes give the neurons inside experts (gpt-oss's interleaved gate/up columns do not).
NEURON_CASES = [case for case in MOE_CASES if ModelStructure(case.build()).recipe.experts.neuron_axes]

# The recipe's default quarter of the experts stays off: these tests remove neurons, and experts where they say so.
HALF = {"expert_neurons": 0.5, "experts": 0.0, "heads": 0.0, "neuron_multiple": 1}


def _width(case: MoECase) -> int:
    return getattr(case.build().config, case.moe_intermediate)


def _kept(case: MoECase) -> int:
    """Each expert's width after HALF: half, rounded to the experts' multiple of 8 (ties keep more)."""
    return 8 * int(_width(case) / 2 / 8 + 0.5)


@pytest.mark.parametrize("case", NEURON_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("with_experts", [False, True], ids=["neurons", "neurons+experts"])
def test_masked_equals_pruned_in_forward_and_cached_generation(case: MoECase, with_experts: bool) -> None:
    dense = case.build()
    width = _width(case)
    targets = {**HALF, "experts": 0.34} if with_experts else HALF
    model, masked, report = prune_with_masked_twin(case, **{**QUICK, "importance": "magnitude", **targets})
    experts = 4 if with_experts else 6
    assert [(a["experts"], a["expert_neurons"]) for a in report.layers_after] == [(experts, experts * _kept(case))] * 2
    assert getattr(model.config, case.moe_intermediate) == _kept(case) < width
    ids = moe_ids()
    with torch.no_grad():
        pruned_logits, masked_logits = model(ids).logits, masked(ids).logits
        assert (dense(ids).logits - masked_logits).abs().max() > 1e-3  # the masks change what the model computes
    torch.testing.assert_close(pruned_logits, masked_logits, atol=ATOL, rtol=0)

    _assert_same_generation(model, masked, ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, pad_token_id=0)


def test_each_expert_keeps_its_own_most_important_neurons() -> None:
    """Magnitude keeps, in every expert, the half of its neurons with the largest weights: each expert its own."""
    case = MOE_CASES_BY_NAME["mixtral"]
    model = case.build()
    experts = model.model.layers[0].mlp.experts
    width = _width(case)
    norms = experts.gate_up_proj.detach().pow(2).sum(2).view(6, 2, width).sum(1) + experts.down_proj.detach().pow(
        2
    ).sum(1)
    expected = [sorted(norms[e].argsort(descending=True)[: _kept(case)].tolist()) for e in range(6)]
    report = hf_prune.prune(model, **{**QUICK, "importance": "magnitude"}, **HALF)
    kept = report.kept[0]["keep_expert_neurons"]
    assert [[n - e * width for n in kept if n // width == e] for e in range(6)] == expected
    assert len({tuple(k) for k in expected}) > 1  # the experts do keep different neurons


@pytest.mark.parametrize("case", NEURON_CASES, ids=lambda c: c.name)
def test_backward_runs_on_the_pruned_model(case: MoECase) -> None:
    model, _, _ = prune_with_masked_twin(case, **HALF)
    model.train()
    ids = moe_ids()
    model(ids, labels=ids).loss.backward()
    down = model.model.layers[1].mlp.experts.down_proj
    assert down.shape[2] == _kept(case)
    assert down.grad is not None and torch.isfinite(down.grad).all() and down.grad.abs().sum() > 0


@pytest.mark.parametrize("case", NEURON_CASES, ids=lambda c: c.name)
def test_parameter_and_flop_counts_in_closed_form(case: MoECase) -> None:
    """Removing n neurons from each of E experts removes E x n x 3 x hidden parameters per block, and per token
    top-k x n x 3 x hidden multiply-accumulates: a token runs top-k experts, each of them n neurons narrower."""
    model = case.build()
    config = model.config
    hidden, width, blocks = config.hidden_size, _width(case), config.num_hidden_layers
    report = hf_prune.prune(model, **QUICK, **HALF)
    removed = width - _kept(case)
    assert report.before.parameters - report.after.parameters == blocks * 6 * removed * 3 * hidden
    assert report.before.block_parameters - report.after.block_parameters == blocks * 6 * removed * 3 * hidden
    assert report.before.flops_per_token - report.after.flops_per_token == blocks * TOP_K * removed * 3 * hidden * 2
    assert (
        sum(p.numel() for p in model.parameters())
        == report.after.parameters
        == measure_cost(ModelStructure(model)).parameters
    )


def test_a_cost_target_counts_the_neurons_inside_experts() -> None:
    """A parameter target with expert neurons fixed: the heads it removes complete what the expert neurons took.
    Per block: 3,072 attention parameters (one KV group: 1,536), 192 router ones and 6 x 40 x 96 = 23,040 in the
    experts; keeping 24 of each expert's 40 neurons removes 35.0%, one KV group 5.8% more."""
    case = MOE_CASES_BY_NAME["mixtral"]
    model = case.build()
    report = hf_prune.prune(model, **QUICK, params=0.41, expert_neurons=0.5, experts=0.0, neuron_multiple=1)
    removed = 1 - report.after.block_parameters / report.before.block_parameters
    assert [(a["heads"], a["expert_neurons"]) for a in report.layers_after] == [(2, 6 * _kept(case))] * 2
    assert removed == pytest.approx((6 * 16 * 96 + 1536) / (3072 + 192 + 23040))
    # Without the heads' group the target is missed from below, never overshot.
    report = hf_prune.prune(case.build(), **QUICK, params=0.4, expert_neurons=0.5, experts=0.0, neuron_multiple=1)
    assert [a["heads"] for a in report.layers_after] == [4, 4]


def test_slots_remove_the_same_number_from_every_expert_and_skip_removed_experts() -> None:
    """The allocator's units: slot r is the r-th least important neuron of every expert. A removed expert's neurons
    go with it, and its masked neurons lower no slot."""
    scores = torch.tensor([[5.0, 1.0, 3.0], [0.5, 4.0, 2.0]]).flatten()  # 2 experts x 3 neurons
    request = expert_neuron_request([scores], [2], 1 / 3)
    (plan,) = plan_units([request])
    assert plan.keep["expert_neurons"] == [0, 2, 4, 5]  # expert 0 drops neuron 1, expert 1 drops neuron 0 (index 3)

    # With expert 1 removed in the same plan, its neurons go too (the counts are the pruned block's).
    experts = hf_prune.allocation.single_unit_request("experts", [torch.tensor([1.0, 0.1])], 0.5)
    (plan,) = plan_units([experts, expert_neuron_request([scores], [2], 1 / 3)])
    assert plan.keep == {"experts": [0], "expert_neurons": [0, 2]}

    # Already removed (masked) neurons stay removed, first.
    masked = torch.tensor([False, False, True, True, False, False])
    (plan,) = plan_units([expert_neuron_request([scores], [2], 1 / 3, masked=[masked])])
    assert plan.keep["expert_neurons"] == [0, 1, 4, 5]


def test_the_mask_trains_the_parameter_and_goes_away_even_when_the_forward_fails() -> None:
    case = MOE_CASES_BY_NAME["qwen3_moe"]
    model = case.build()
    structure = ModelStructure(model)
    experts = model.model.layers[0].mlp.experts
    original = experts.down_proj
    before = original.detach().clone()
    masks = MaskSet(structure)
    masks.masks["expert_neurons"][0][::2] = False  # half of every expert's neurons
    masks.attach()
    ids = moe_ids()
    model(ids, labels=ids).loss.backward()
    assert experts.down_proj is original and torch.equal(original.detach(), before)  # untouched outside forward
    grad = original.grad.view(6, -1, 24)  # [experts, hidden, width]: masked columns get no gradient
    assert grad[:, :, 0::2].abs().sum() == 0 and grad[:, :, 1::2].abs().sum() > 0

    with pytest.raises(RuntimeError):
        experts(torch.zeros(3, 5), torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2))  # wrong hidden size
    assert "down_proj" not in experts.__dict__ and experts.down_proj is original
    masks.detach()
    assert not experts._forward_pre_hooks and not experts._forward_hooks


def test_uneven_or_stray_plans_are_refused_before_any_surgery() -> None:
    case = MOE_CASES_BY_NAME["mixtral"]
    model = case.build()
    structure = ModelStructure(model)
    width = _width(case)
    state = copy.deepcopy(model.state_dict())
    plans = MaskSet(structure).to_plan()
    for plan in plans:
        plan.keep["expert_neurons"] = plan.keep["expert_neurons"][1:]  # expert 0 keeps one neuron fewer
    with pytest.raises(ValueError, match="Every kept expert keeps the same number of neurons"):
        hf_prune.apply_plan(structure, plans)
    plans = MaskSet(structure).to_plan()
    plans[1].keep["experts"] = [1, 2, 3, 4, 5]  # expert 0 removed, its neurons still listed
    with pytest.raises(ValueError, match=r"keeps neurons of experts \[0, 1, 2, 3, 4, 5\].*keeps experts \[1, 2"):
        hf_prune.apply_plan(structure, plans)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert ModelStructure(model).shape(1)["expert_neurons"] == 6 * width


def test_recipe_errors_name_the_field() -> None:
    base = shipped_recipes()["mixtral"].to_dict()

    def with_experts(**fields: object) -> dict:
        return {**base, "experts": {**base["experts"], **fields}}

    with pytest.raises(RecipeError, match="`neuron_axes` names 'up_proj'"):
        Recipe.from_dict(with_experts(neuron_axes={"up_proj": 1}))
    with pytest.raises(RecipeError, match="not its expert axis 0"):
        Recipe.from_dict(with_experts(neuron_axes={"gate_up_proj": 0, "down_proj": 2}))
    with pytest.raises(RecipeError, match="every expert parameter"):
        Recipe.from_dict(with_experts(neuron_axes={"down_proj": 2}, fused_neurons=[]))
    with pytest.raises(RecipeError, match="`fused_neurons` names"):
        Recipe.from_dict(with_experts(fused_neurons=["router"]))
    # A recipe without neuron axes has no such kind, and a target for it is refused by name.
    model = MOE_CASES_BY_NAME["mixtral"].build()
    plain = with_experts(neuron_axes={}, fused_neurons=[], intermediate_attribute=None)
    with pytest.raises(ValueError, match="has no expert_neurons to remove"):
        hf_prune.prune(model, recipe=plain, expert_neurons=0.5, **QUICK)


def test_non_uniform_neurons_load_through_hf_prune_and_without_it(tmp_path: Path) -> None:
    """A protected block keeps every neuron: the config cannot say it, so the structure is recorded."""
    ids, directories = moe_ids(), []  # items for the loader without hf_prune
    for case in NEURON_CASES:
        model, _, report = prune_with_masked_twin(case, **HALF, protected_layers=[0])
        width = _width(case)
        assert not report.vanilla_loadable
        assert [a["expert_neurons"] for a in report.layers_after] == [6 * width, 6 * _kept(case)]
        directory = tmp_path / case.name
        hf_prune.save_pretrained(model, directory)
        with torch.no_grad():
            logits = model(ids).logits
        torch.save({"inputs": {"input_ids": ids}, "logits": logits}, f"{directory}.pt")
        directories.append({"dir": str(directory), "auto": "AutoModelForCausalLM", "vanilla": False})
        loaded = hf_prune.from_pretrained(directory).eval()
        assert [s.counts for s in ModelStructure(loaded).shapes()] == report.layers_after
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, logits, atol=ATOL, rtol=0)

    _assert_loads_without_hf_prune(directories)


def test_uniform_neurons_load_with_plain_from_pretrained(tmp_path: Path) -> None:
    case = MOE_CASES_BY_NAME["qwen3_moe"]
    model, _, report = prune_with_masked_twin(case, **HALF)
    assert report.vanilla_loadable
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["moe_intermediate_size"] == _kept(case) == 16 and "auto_map" not in config
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    ids = moe_ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=ATOL, rtol=0)


def test_a_trainer_run_removes_neurons_inside_experts_gradually_with_compaction(tmp_path: Path) -> None:
    from datasets import Dataset

    ids = torch.randint(3, 96, (32, 12), generator=torch.Generator().manual_seed(0))
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    model = MOE_CASES_BY_NAME["mixtral"].build()
    callback = hf_prune.PruningCallback(
        expert_neurons=0.5, experts=0.34, heads=0.0, importance="taylor", end=0.75, update_every=2, compact=True,
        neuron_multiple=1,
    )  # fmt: skip
    trainer = T.Trainer(
        model=model, args=_args(tmp_path / "run", max_steps=8), train_dataset=dataset, callbacks=[callback]
    )
    trainer.train()
    case = MOE_CASES_BY_NAME["mixtral"]
    assert [s.counts["expert_neurons"] for s in ModelStructure(model).shapes()] == [4 * _kept(case)] * 2
    logged = [h for h in trainer.state.log_history if "pruning/expert_neurons_kept" in h]
    assert logged and logged[-1]["pruning/expert_neurons_kept"] == pytest.approx(4 * _kept(case) / (6 * _width(case)))
    trainer.save_model(str(tmp_path / "saved"))
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids[:2]).logits, model.eval()(ids[:2]).logits, atol=ATOL, rtol=0)


def test_a_shared_expert_is_pruned_as_an_mlp_and_loads_vanilla(tmp_path: Path) -> None:
    """Qwen2-MoE's shared expert (a dense MLP behind a sigmoid gate) loses neurons like any MLP, next to the routed
    experts' neurons; the config states both widths, so plain transformers loads it."""
    case = MOE_CASES_BY_NAME["qwen2_moe"]
    model, masked, report = prune_with_masked_twin(case, **{**HALF, "neurons": 0.5})
    assert [(a["neurons"], a["expert_neurons"]) for a in report.layers_after] == [(16, 6 * _kept(case))] * 2
    ids = moe_ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, masked(ids).logits, atol=ATOL, rtol=0)
    assert report.vanilla_loadable
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert (config["shared_expert_intermediate_size"], config["moe_intermediate_size"]) == (16, _kept(case))
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=ATOL, rtol=0)


def _moe_run(output: Path, resume: str | None = None, stop_at: int | None = None) -> list[dict[str, list[int]]]:
    """A Mixtral fine-tune removing a third of the experts and half of every expert's neurons by Taylor scores."""
    import warnings

    from datasets import Dataset

    from .test_callback import _StopAt

    ids = torch.randint(3, 96, (32, 12), generator=torch.Generator().manual_seed(0))
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    callback = hf_prune.PruningCallback(
        expert_neurons=0.5, experts=0.34, heads=0.0, importance="taylor", end=0.75, update_every=2, neuron_multiple=1
    )
    callbacks: list[T.TrainerCallback] = [callback] + ([_StopAt(stop_at)] if stop_at else [])
    args = _args(output, max_steps=12, save_strategy="steps", save_steps=4)
    trainer = T.Trainer(
        model=MOE_CASES_BY_NAME["mixtral"].build(), args=args, train_dataset=dataset, callbacks=callbacks
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an interrupted run pruned less than the target
        trainer.train(resume_from_checkpoint=resume)
    return callback.report.kept


def test_a_resumed_moe_run_ends_with_the_same_experts_and_neurons(tmp_path: Path) -> None:
    """Interrupted mid-schedule (it ends at step 9): the masks and Taylor scores of both MoE kinds resume exactly."""
    uninterrupted = _moe_run(tmp_path / "full")
    _moe_run(tmp_path / "interrupted", stop_at=4)
    resumed = _moe_run(tmp_path / "interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-4"))
    assert resumed == uninterrupted
    assert [len(k["keep_experts"]) for k in resumed] == [4, 4]
    assert [len(k["keep_expert_neurons"]) for k in resumed] == [4 * _kept(MOE_CASES_BY_NAME["mixtral"])] * 2
