"""MoE experts (hf_prune/kinds/experts.py) on tiny Mixtral, Qwen3-MoE (top-k renormalised or not) and OLMoE models:
masked == pruned (forward and cached generation), backward, closed-form counts, the top-k floor, the routing
criteria, reconstruction, and the errors. Checkpoints, the CLI and the callback: tests/test_experts_checkpoints.py."""

from __future__ import annotations

import pytest
import torch

import hf_prune
from hf_prune import surgery
from hf_prune.flops import unit_costs
from hf_prune.kinds import get_kind
from hf_prune.recipe import Recipe, RecipeError, shipped_recipes
from hf_prune.structure import ModelStructure

from .architectures import CASES_BY_NAME, MOE_CASES, MOE_CASES_BY_NAME, MoECase
from .moe import ATOL, QUICK, TOP_K, moe_ids, moe_targets, prune_with_masked_twin
from .test_architectures import _assert_same_generation


@pytest.mark.parametrize("case", MOE_CASES, ids=lambda c: c.name)
def test_masked_equals_pruned_in_forward_and_cached_generation(case: MoECase) -> None:
    dense = case.build()
    model, masked, report = prune_with_masked_twin(case, **moe_targets(case))
    assert [a["experts"] for a in report.layers_after] == [4, 4]
    assert [a["heads"] for a in report.layers_after] == ([2, 2] if case.prunes_heads else [4, 4])
    ids = moe_ids()
    with torch.no_grad():
        pruned_logits, masked_logits = model(ids).logits, masked(ids).logits
        assert (dense(ids).logits - masked_logits).abs().max() > 1e-3  # the masks change what the model computes
    torch.testing.assert_close(pruned_logits, masked_logits, atol=ATOL, rtol=0)

    generated = _assert_same_generation(
        model, masked, ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, pad_token_id=0
    )
    assert len(generated.logits) == 4


@pytest.mark.parametrize("case", MOE_CASES, ids=lambda c: c.name)
def test_backward_runs_on_the_pruned_model(case: MoECase) -> None:
    model, _, _ = prune_with_masked_twin(case, experts=0.34)
    model.train()
    ids = moe_ids()
    model(ids, labels=ids).loss.backward()
    structure = ModelStructure(model)
    for role in ("router", "experts.gate_up_proj", "experts.down_proj"):
        grad = structure.module(1, role).weight.grad
        assert grad is not None and grad.shape[0] == 4, role
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, role


@pytest.mark.parametrize("case", MOE_CASES, ids=lambda c: c.name)
def test_parameter_and_flop_counts_in_closed_form(case: MoECase) -> None:
    """Removing r experts of each block removes r x (3 x hidden x expert width + a router row of hidden) parameters
    (gpt-oss: plus its biases, 2 x width + hidden, and the router's), and per token only the router rows' FLOPs:
    every token still runs its top-k experts. Where neurons inside experts are a kind, the expert's weights are its
    neurons' (3 x hidden each)."""
    model = case.build()
    config = model.config
    hidden, width, blocks = config.hidden_size, getattr(config, case.moe_intermediate), config.num_hidden_layers
    structure = ModelStructure(model)
    biased = case.name == "gpt_oss"
    router_row = hidden + (1 if biased else 0)
    per_expert = 3 * hidden * width + (2 * width + hidden if biased else 0) + router_row
    params, flops = unit_costs(structure, "params"), unit_costs(structure, "flops")
    neurons_counted = "expert_neurons" in params.per_unit
    assert neurons_counted == (not biased)
    assert params["experts"] == (router_row if neurons_counted else per_expert)
    if neurons_counted:
        assert params["expert_neurons"] == 3 * hidden
    assert flops["experts"] == 2 * hidden
    before = structure.shape(0).counts
    one_expert_less = {**before, "experts": 5, **({"expert_neurons": 5 * width} if neurons_counted else {})}
    assert params.removed(before, one_expert_less) == per_expert
    assert flops.removed(before, one_expert_less) == 2 * hidden
    # An MoE block's FLOPs per token: its top-k experts and the router logits, whatever the expert count.
    assert get_kind("experts").context_flops(structure, {"experts": 6}, 128) == 2 * (
        TOP_K * (3 * hidden * width + (2 * width + hidden if biased else 0)) + 6 * hidden
    )
    dense_parameters = sum(p.numel() for p in model.parameters())

    report = hf_prune.prune(model, experts=0.5, **QUICK)  # 6 -> 3 per block
    assert [a["experts"] for a in report.layers_after] == [3] * blocks
    assert sum(p.numel() for p in model.parameters()) == report.after.parameters
    assert report.before.parameters == dense_parameters
    assert dense_parameters - report.after.parameters == blocks * 3 * per_expert
    assert report.before.block_parameters - report.after.block_parameters == blocks * 3 * per_expert
    assert report.before.flops_per_token - report.after.flops_per_token == blocks * 3 * 2 * hidden
    assert getattr(model.config, case.count_attribute) == 3


@pytest.mark.parametrize("case", MOE_CASES, ids=lambda c: c.name)
def test_fewer_experts_than_top_k_are_refused_and_the_model_is_untouched(case: MoECase) -> None:
    model = case.build()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    structure = ModelStructure(model)
    plans = [hf_prune.LayerPlan(keep={k: list(range(n)) for k, n in s.counts.items()}) for s in structure.shapes()]
    plans[1].keep["experts"] = [3]
    with pytest.raises(ValueError, match=r"block 1 would keep 1 of its 6 experts, fewer than the 2 that every token"):
        hf_prune.apply_plan(structure, plans)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert getattr(model.config, case.count_attribute) == 6 and "hf_prune" not in model.config.to_dict()
    # The surgery that runs without hf_prune refuses as well, before any change.
    with pytest.raises(ValueError, match="keep at least 2"):
        surgery.prune_experts(structure.layers[0], structure.recipe_dict, structure.head_dim, [0], top_k=TOP_K)
    assert structure.shape(0)["experts"] == 6

    # A fraction is rounded so that no block goes below top-k: 90% of 6 experts leaves the top 2.
    report = hf_prune.prune(model, experts=0.9, **QUICK)
    assert [a["experts"] for a in report.layers_after] == [TOP_K, TOP_K]


def test_global_ranking_spreads_the_budget_and_keeps_top_k() -> None:
    model = MOE_CASES_BY_NAME["mixtral"].build()
    report = hf_prune.prune(model, experts=0.75, ranking="global", **QUICK)
    kept = [a["experts"] for a in report.layers_after]
    assert sum(kept) == 12 - 8 and min(kept) >= TOP_K  # round(0.75 x 12) = 9 asked, 8 possible above top-k
    assert not report.vanilla_loadable or len(set(kept)) == 1


# ---------------------------------------------------------------------------------------------------------
# Importance of experts.
# ---------------------------------------------------------------------------------------------------------


def _routing(model: torch.nn.Module, ids: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Per block, what its experts module receives: (hidden states, chosen experts, their router weights)."""
    structure = ModelStructure(model)
    seen: list[tuple[torch.Tensor, ...]] = []
    handles = [
        layer.get_submodule(structure.recipe.experts.experts).register_forward_hook(
            lambda module, args, output: seen.append(tuple(a.detach() for a in args[:3]))
        )
        for layer in structure.layers
    ]
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe-unnormalised"])
def test_frequency_is_the_share_of_tokens_routed_to_each_expert(name: str) -> None:
    model, ids = MOE_CASES_BY_NAME[name].build(), moe_ids()
    scores = hf_prune.calibrate(model, [{"input_ids": ids}], "frequency").scores(ModelStructure(model))
    assert list(scores) == ["experts"]
    for block, (_, chosen, _) in enumerate(_routing(model, ids)):
        expected = torch.bincount(chosen.reshape(-1), minlength=6).float() / chosen.shape[0]
        torch.testing.assert_close(scores["experts"][block], expected)
        assert float(scores["experts"][block].sum()) == pytest.approx(TOP_K)  # every token picks two

    # Evaluation passes (no_grad) do not count, as for the activation criterion.
    structure, criterion = ModelStructure(model), hf_prune.get_importance("frequency")
    criterion.attach(structure)
    with torch.no_grad():
        model(ids)
    criterion.accumulate(structure)
    with pytest.raises(RuntimeError, match="has no statistics yet"):
        criterion.scores(structure)
    model(ids)
    criterion.accumulate(structure)
    criterion.detach()
    torch.testing.assert_close(criterion.scores(structure)["experts"], scores["experts"])


def test_reap_is_the_router_weighted_output_norm_over_routed_tokens() -> None:
    model, ids = MOE_CASES_BY_NAME["mixtral"].build(), moe_ids()
    scores = hf_prune.calibrate(model, [{"input_ids": ids}], "reap").scores(ModelStructure(model))["experts"]
    for block, (hidden, chosen, weights) in enumerate(_routing(model, ids)):
        experts = model.model.layers[block].mlp.experts
        expected = torch.zeros(6)
        for e in range(6):
            token, slot = torch.where(chosen == e)
            gate, up = (hidden[token] @ experts.gate_up_proj[e].T).chunk(2, dim=-1)
            output = (torch.nn.functional.silu(gate) * up) @ experts.down_proj[e].T
            contributions = weights[token, slot] * output.norm(dim=-1)
            expected[e] = contributions.mean() if len(token) else 0.0
        torch.testing.assert_close(scores[block], expected.detach(), atol=1e-5, rtol=1e-4)
        assert (scores[block] > 0).sum() >= TOP_K


def test_criteria_that_do_not_score_experts_say_which_do() -> None:
    ids = moe_ids()
    batches = [{"input_ids": ids, "labels": ids}]
    model = MOE_CASES_BY_NAME["mixtral"].build()
    with pytest.raises(ValueError, match=r"does not score experts.*Criteria that score experts: frequency, magnitude"):
        hf_prune.prune(model, experts=0.34, importance="fisher", calibration=batches, reconstruct=False)
    with pytest.raises(ValueError, match=r"does not score heads.*Criteria that score heads: activation, fisher"):
        hf_prune.prune(model, heads=0.5, experts=0.34, importance="frequency", calibration=batches, reconstruct=False)
    assert ModelStructure(model).shape(0).counts == {"heads": 4, "kv_heads": 2, "experts": 6, "expert_neurons": 240}
    # Gate criteria still prune the heads of an MoE model, its experts left alone.
    report = hf_prune.prune(model, heads=0.5, experts=0.0, importance="fisher", calibration=batches, reconstruct=False)
    assert report.layers_after == [{"heads": 2, "kv_heads": 1, "experts": 6, "expert_neurons": 240}] * 2

    # A cost target does not spend its budget on heads that the criterion does not rank.
    report = hf_prune.prune(
        MOE_CASES_BY_NAME["mixtral"].build(), params=0.3, importance="frequency", calibration=batches, reconstruct=False
    )
    assert (
        report.layers_after == [{"heads": 4, "kv_heads": 2, "experts": 5, "expert_neurons": 200}] * 2
    )  # the recipe's 25% of experts

    with pytest.raises(ValueError, match="scores MoE experts, and recipe 'llama' has none"):
        hf_prune.prune(CASES_BY_NAME["llama"].build(), heads=0.25, importance="reap", calibration=batches)


def test_taylor_scores_experts_from_their_3d_parameters_gradients() -> None:
    model, ids = MOE_CASES_BY_NAME["qwen3_moe"].build(), moe_ids()
    scores = hf_prune.calibrate(model, [{"input_ids": ids, "labels": ids}], "taylor").scores(ModelStructure(model))
    assert [t.shape for t in scores["experts"]] == [torch.Size([6])] * 2
    assert all(bool((t > 0).any()) for t in scores["experts"])


# ---------------------------------------------------------------------------------------------------------
# What the recipes refuse.
# ---------------------------------------------------------------------------------------------------------


def test_olmoe_refuses_head_pruning_with_the_reason() -> None:
    model = MOE_CASES_BY_NAME["olmoe"].build()
    with pytest.raises(ValueError, match="cannot remove attention heads: OLMoE's q_norm and k_norm"):
        hf_prune.prune(model, heads=0.25, experts=0.34, **QUICK)
    assert ModelStructure(model).shape(0).counts == {"heads": 4, "kv_heads": 4, "experts": 6, "expert_neurons": 240}
    # A cost target never reaches for the heads.
    report = hf_prune.prune(model, params=0.2, experts=0.34, **QUICK)
    assert all(a["heads"] == 4 for a in report.layers_after)


@pytest.mark.parametrize("layout", [{"mlp_only_layers": [1]}, {"decoder_sparse_step": 2}])
def test_qwen3_moe_with_dense_blocks_is_refused_by_name(layout: dict[str, object]) -> None:
    model = MOE_CASES_BY_NAME["qwen3_moe"].build(**layout)
    with pytest.raises(
        RecipeError, match=r"layer [01] has no parameter 'mlp.gate.weight'.*Qwen3MoeMLP.*mlp_only_layers"
    ):
        hf_prune.prune(model, experts=0.34, **QUICK)


def test_a_recipe_needs_an_mlp_or_experts() -> None:
    assert all(shipped_recipes()[name].mlp is None for name in ("mixtral", "qwen3_moe", "olmoe"))
    data = shipped_recipes()["mixtral"].to_dict()
    del data["experts"]
    with pytest.raises(RecipeError, match=r"needs `mlp` .* or `experts` for a mixture-of-experts model"):
        Recipe.from_dict(data)
    data = shipped_recipes()["mixtral"].to_dict()
    data["experts"]["parameters"] = {"gate_up_proj": 3}
    with pytest.raises(RecipeError, match="parameter 'gate_up_proj' needs its expert axis"):
        Recipe.from_dict(data)
    # A dense recipe's dict form is what it was: no experts key.
    assert "experts" not in shipped_recipes()["llama"].to_dict()


def test_reconstruction_refits_attention_with_the_experts_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """One-shot with data: the heads' output projections are reconstructed while the removed experts are masked at
    the routers (each block is fed what the pruned blocks before it compute); experts have nothing to refit."""
    from hf_prune.reconstruct import Reconstruction

    model, ids = MOE_CASES_BY_NAME["qwen3_moe"].build(), moe_ids()
    routers = [layer.mlp.gate for layer in model.model.layers]
    hooked: list[list[int]] = []
    run = Reconstruction.run

    def recording_run(self: Reconstruction, structure: ModelStructure, plans: object) -> None:
        hooked.append([len(router._forward_hooks) for router in routers])
        run(self, structure, plans)

    monkeypatch.setattr(Reconstruction, "run", recording_run)
    report = hf_prune.prune(
        model, heads=0.5, experts=0.34, importance="taylor", calibration=[{"input_ids": ids, "labels": ids}] * 2
    )
    assert hooked == [[1, 1]] and all(len(router._forward_hooks) == 0 for router in routers)
    assert report.layers_after == [{"heads": 2, "kv_heads": 2, "experts": 4, "expert_neurons": 96}] * 2
    reconstruction = report.extra["reconstruction"]
    assert reconstruction["projections"] == 2  # o_proj of each block; the experts are not refitted
    assert all(set(block) == {"attention"} for block in reconstruction["per_block"])

    experts_only = hf_prune.prune(
        MOE_CASES_BY_NAME["qwen3_moe"].build(), experts=0.34, importance="frequency", calibration=[{"input_ids": ids}]
    )
    assert experts_only.extra["reconstruction"]["projections"] == 0  # nothing captured or refitted


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_whole_blocks_of_an_moe_model_go_with_experts_from_the_rest(name: str, tmp_path) -> None:
    """Depth and experts in one run: blocks go first (their KV-cache indices renumbered), then experts from the
    blocks that remain; the result loads vanilla and generates with the cache."""
    import transformers as T

    model = MOE_CASES_BY_NAME[name].build(num_hidden_layers=4)
    ids = moe_ids()
    report = hf_prune.prune(model, layers=0.5, experts=0.34, calibration=[{"input_ids": ids, "labels": ids}])
    assert len(report.removed_layers) == 2 and model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert [a["experts"] for i, a in enumerate(report.layers_after) if i not in report.removed_layers] == [4, 4]
    assert report.vanilla_loadable
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    settings = dict(attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(ids, **settings), model.generate(ids, **settings))
