"""The registry of unit kinds (hf_prune/kinds): what it holds, what it refuses, and that every kind's pieces agree
with the rest of the pipeline (counts, the standalone restore path, costs, the containers keyed by kind)."""

from __future__ import annotations

import pytest
import torch

import hf_prune
from hf_prune import surgery
from hf_prune.flops import measure_cost, unit_costs
from hf_prune.importance import Scores
from hf_prune.kinds import UnitKind, get_kind, kinds_for, register_kind, registered_kinds
from hf_prune.structure import ModelStructure

from .architectures import CASES, CASES_BY_NAME, MOE_CASES


def test_shipped_kinds_in_table_order() -> None:
    assert [k.name for k in registered_kinds()][:5] == ["heads", "kv_heads", "cross_heads", "neurons", "experts"]
    assert get_kind("kv_heads").follows == "heads" and get_kind("kv_heads").part == "attention"
    assert get_kind("experts").part == "experts" and not get_kind("experts").gated
    assert [k.name for k in ModelStructure(CASES_BY_NAME["llama"].build()).leaders] == ["heads", "neurons"]
    with pytest.raises(KeyError, match="unknown unit kind 'routers'"):
        get_kind("routers")


class _Nameless(UnitKind):
    part = "mlp"


class _Orphan(UnitKind):
    name = "orphan"
    part = "mlp"
    follows = "heads"  # registered, but in another part


class _NoRestore(UnitKind):
    name = "no_restore"
    part = "somewhere"


class _Duplicate(UnitKind):
    name = "neurons"
    part = "mlp"

    def restorer(self):
        return surgery.restore_mlp


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (_Nameless(), "needs a `name` and a `part`"),
        (_Orphan(), "follows 'heads', which must be registered first, in part 'mlp'"),
        (_NoRestore(), "leads its part and needs a `restore` step"),
        (_Duplicate(), "'neurons' is already registered"),
    ],
)
def test_register_kind_refuses_bad_kinds(kind: UnitKind, message: str) -> None:
    before = registered_kinds()
    with pytest.raises(ValueError, match=message):
        register_kind(kind)
    assert registered_kinds() == before
    with pytest.raises(TypeError, match="UnitKind instance"):
        register_kind(_Duplicate)  # type: ignore[arg-type]


def test_the_standalone_restore_path_runs_every_leading_kind_s_restore() -> None:
    """A checkpoint loads without hf_prune through surgery.RESTORERS; hf_prune's kinds name the same steps."""
    assert [k.restorer() for k in registered_kinds() if k.follows is None] == list(surgery.RESTORERS)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_kinds_count_what_surgery_counts(case) -> None:
    structure = ModelStructure(case.build())
    assert [k.name for k in kinds_for(structure.recipe)] == ["heads", "kv_heads", "neurons"]
    for i, layer in enumerate(structure.layers):
        expected = surgery.layer_counts(layer, structure.recipe_dict, structure.head_dim)
        assert structure.shape(i).counts == expected


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_unit_costs_what_removing_it_saves(case) -> None:
    """Per kind, the closed-form cost of one unit is the parameter and FLOP drop of removing it (one KV group =
    one KV head and its query heads)."""
    model = case.build()
    structure = ModelStructure(model)
    params, flops = unit_costs(structure, "params"), unit_costs(structure, "flops")
    before = measure_cost(structure)
    counts = structure.shape(0).counts
    # One KV group (a KV head and its query heads); under MQA one query head (the single KV head stays).
    group = counts["heads"] // counts["kv_heads"] if counts["kv_heads"] > 1 else 1
    keep_heads = list(range(group, counts["heads"]))
    keep = {
        "heads": keep_heads,
        "kv_heads": get_kind("kv_heads").keep_following(keep_heads, counts),
        "neurons": list(range(1, counts["neurons"])),
    }
    for leader in structure.leaders:
        leader.remove(structure.layers[0], structure.recipe_dict, structure.head_dim, keep)
    after = measure_cost(structure)
    removed = {"heads": group, "kv_heads": 1 if counts["kv_heads"] > 1 else 0, "neurons": 1}
    assert structure.shape(0).counts == {k: counts[k] - removed[k] for k in counts}
    assert before.block_parameters - after.block_parameters == params.removed(counts, structure.shape(0).counts)
    assert before.block_flops_per_token - after.block_flops_per_token == flops.removed(
        counts, structure.shape(0).counts
    )


@pytest.mark.parametrize("case", MOE_CASES, ids=lambda c: c.name)
def test_moe_kinds_count_and_cost_what_surgery_removes(case) -> None:
    """The MoE rows: experts and the neurons inside them, and the neurons of a shared expert where there is one; one
    KV group, one expert, half of every other expert's neurons and of the shared expert's cost what removing them
    saves."""
    structure = ModelStructure(case.build())
    shared = ["neurons"] if structure.recipe.mlp else []
    inside = ["expert_neurons"] if structure.recipe.experts.neuron_axes else []  # gpt-oss: experts only
    assert [k.name for k in structure.kinds] == ["heads", "kv_heads", *shared, "experts", *inside]
    for i, layer in enumerate(structure.layers):
        assert structure.shape(i).counts == surgery.layer_counts(layer, structure.recipe_dict, structure.head_dim)
    params, flops = unit_costs(structure, "params"), unit_costs(structure, "flops")
    before, counts = measure_cost(structure), structure.shape(0).counts
    group = counts["heads"] // counts["kv_heads"]
    keep = {
        "heads": list(range(group, counts["heads"])),
        "kv_heads": list(range(1, counts["kv_heads"])),
        "experts": list(range(1, counts["experts"])),
    }
    width = counts.get("expert_neurons", 0) // counts["experts"]
    # Expert 0 goes with its neurons; every other expert keeps its odd neurons (its own ones, numbered e*width+j).
    if inside:
        keep["expert_neurons"] = [e * width + j for e in range(1, counts["experts"]) for j in range(1, width, 2)]
    if shared:
        keep["neurons"] = list(range(0, counts["neurons"], 2))
    for leader in structure.leaders:  # experts first: the neurons are numbered as before the experts went
        leader.check_plan(structure, 0, keep)
        leader.remove(structure.layers[0], structure.recipe_dict, structure.head_dim, keep)
    after = structure.shape(0).counts
    assert after == {
        "heads": counts["heads"] - group,
        "kv_heads": counts["kv_heads"] - 1,
        "experts": 5,
        **({"expert_neurons": 5 * (width // 2)} if inside else {}),
        **({"neurons": counts["neurons"] // 2} if shared else {}),
    }
    assert before.block_parameters - measure_cost(structure).block_parameters == params.removed(counts, after)
    assert before.block_flops_per_token - measure_cost(structure).block_flops_per_token == flops.removed(counts, after)


def test_containers_are_keyed_by_kind() -> None:
    structure = ModelStructure(CASES_BY_NAME["llama"].build())
    plan = hf_prune.LayerPlan(keep={"heads": [0, 1], "kv_heads": [0], "neurons": [3]})
    assert plan == hf_prune.LayerPlan([0, 1], [0], [3]) == hf_prune.LayerPlan(**plan.to_dict())
    assert plan.to_dict() == {"keep_heads": [0, 1], "keep_kv_heads": [0], "keep_neurons": [3]}
    assert (plan.keep_heads, plan.keep_kv_heads, plan.keep_neurons) == ([0, 1], [0], [3])
    with pytest.raises(TypeError, match="unexpected argument 'heads'"):
        hf_prune.LayerPlan(heads=[0])
    heads, neurons = [torch.ones(8)], [torch.ones(96)]
    assert Scores(heads, neurons) == Scores({"heads": heads, "neurons": neurons})
    masks = hf_prune.MaskSet(structure)
    assert list(masks.masks) == ["heads", "neurons"] and list(masks.state_dict()) == ["heads", "neurons"]
    assert [p.counts() for p in masks.to_plan()] == [s.counts for s in structure.shapes()]
