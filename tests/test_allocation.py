"""Allocation is pure: scores and targets in, kept heads and neurons out (no model needed)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from hf_prune.allocation import (
    KindRequest,
    LayerPlan,
    Planner,
    auto_gqa_mode,
    count_to_remove,
    head_request,
    head_units,
    neuron_request,
    plan_pruning,
    plan_units,
    resolve_gqa_mode,
    single_units,
)
from hf_prune.surgery import check_gqa_mapping


def _rand(*sizes: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=generator) for n in sizes]


# ---------------------------------------------------------------------------------------------------------
# count_to_remove
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "units", "multiple", "expected"),
    [
        (0.0, 8, 1, 0),
        (0.5, 8, 1, 4),
        (0.25, 8, 1, 2),
        (0.99, 8, 1, 7),  # at least one unit stays
        (0.5, 3, 1, 1),  # ties keep more: half of 3 KV groups removes 1, not 2
        (0.1, 3, 1, 0),  # 0.3 of a unit rounds to nothing
        (0.5, 2, 1, 1),
        (0.5, 1, 1, 0),  # a single unit is never removed
        (0.9, 1, 1, 0),
        (0.5, 96, 8, 48),
        (0.3, 96, 8, 32),  # keeps 64 = 8 x 8 (67.2 rounded to the multiple)
        (0.99, 96, 8, 88),  # keeps one multiple
        (0.5, 100, 8, 52),  # keeps 48, a multiple of 8
        (0.5, 6, 8, 3),  # fewer units than the multiple: plain rounding, at least one kept
        (0.99, 6, 8, 5),
    ],
)
def test_count_to_remove_values(fraction: float, units: int, multiple: int, expected: int) -> None:
    assert count_to_remove(fraction, units, multiple) == expected


@pytest.mark.parametrize("multiple", [1, 4, 8])
def test_count_to_remove_properties(multiple: int) -> None:
    fractions = [i / 40 for i in range(40)]
    for units in range(1, 70):
        previous = 0
        for fraction in fractions:
            removed = count_to_remove(fraction, units, multiple)
            assert 0 <= removed <= units - 1, "never empties a block"
            assert removed >= previous, "monotone in the fraction"
            previous = removed
            if units > multiple:
                assert removed == 0 or (units - removed) % multiple == 0, "kept count is a multiple"
                assert abs(removed - fraction * units) <= multiple / 2 + 1e-9 or removed == units - multiple
            else:
                assert abs(removed - fraction * units) <= 0.5 + 1e-9 or removed == units - 1


# ---------------------------------------------------------------------------------------------------------
# head_units
# ---------------------------------------------------------------------------------------------------------


def test_head_units_without_gqa_are_single_heads_least_important_first() -> None:
    units = head_units(torch.tensor([0.3, 0.1, 0.2, 0.4]), kv_heads=4, mode="auto")
    assert units.heads == [[1], [2], [0], [3]]
    assert units.kv_heads == [[1], [2], [0], [3]]  # without GQA a head takes its K/V with it
    assert units.scores == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_head_units_kv_groups_remove_a_kv_head_with_all_its_query_heads() -> None:
    # Group 0 = heads 0-3 (total 2.2), group 1 = heads 4-7 (total 1.0): group 1 goes first.
    scores = torch.tensor([0.9, 0.1, 0.9, 0.3, 0.25, 0.25, 0.25, 0.25])
    for mode in ("auto", "kv_groups"):
        units = head_units(scores, kv_heads=2, mode=mode)
        assert units.heads == [[4, 5, 6, 7], [0, 1, 2, 3]]
        assert units.kv_heads == [[1], [0]]
        assert units.scores == pytest.approx([1.0, 2.2])


def test_head_units_query_heads_take_the_rth_weakest_head_of_every_group() -> None:
    scores = torch.tensor([0.4, 0.1, 0.3, 0.2, 0.5, 0.8, 0.6, 0.7])
    units = head_units(scores, kv_heads=2, mode="query_heads")
    assert units.heads == [[1, 4], [3, 6], [2, 7], [0, 5]]
    assert units.kv_heads == [[], [], [], []]  # every KV head keeps serving its group
    assert units.scores == pytest.approx([0.6, 0.8, 1.0, 1.2])


def test_head_units_auto_uses_query_heads_under_mqa() -> None:
    units = head_units(torch.tensor([0.4, 0.1, 0.3, 0.2]), kv_heads=1, mode="auto")
    assert units.heads == [[1], [3], [2], [0]]
    assert units.kv_heads == [[], [], [], []]


def test_auto_gqa_mode_picks_query_heads_only_when_reconstruction_follows() -> None:
    assert auto_gqa_mode("auto", reconstructs=True) == "query_heads"
    assert auto_gqa_mode("auto", reconstructs=False) == "auto"  # whole KV groups, query heads under MQA
    for mode in ("kv_groups", "query_heads"):  # an explicit choice always stands
        assert auto_gqa_mode(mode, reconstructs=True) == auto_gqa_mode(mode, reconstructs=False) == mode


def test_resolve_gqa_mode() -> None:
    assert resolve_gqa_mode("kv_groups", 8, 8) == "heads"
    assert resolve_gqa_mode("auto", 8, 2) == "kv_groups"
    assert resolve_gqa_mode("auto", 8, 1) == "query_heads"
    assert resolve_gqa_mode("query_heads", 8, 2) == "query_heads"
    with pytest.raises(ValueError, match="single KV head"):
        resolve_gqa_mode("kv_groups", 8, 1)
    with pytest.raises(ValueError, match="gqa_mode must be one of"):
        resolve_gqa_mode("groups", 8, 2)


# ---------------------------------------------------------------------------------------------------------
# plan_pruning
# ---------------------------------------------------------------------------------------------------------


def test_uniform_removes_the_same_count_from_every_block_lowest_scores_first() -> None:
    heads = _rand(8, 8, 8, seed=1)
    neurons = _rand(40, 40, 40, seed=2)
    plans = plan_pruning(heads, [8, 8, 8], neurons, 0.5, 0.25, ranking="uniform")
    for plan, h, n in zip(plans, heads, neurons, strict=True):
        assert plan.keep_heads == sorted(torch.argsort(h, descending=True)[:4].tolist())
        assert plan.keep_kv_heads == plan.keep_heads
        assert plan.keep_neurons == sorted(torch.argsort(n, descending=True)[:30].tolist())


def test_global_removes_more_from_a_block_whose_scores_are_low() -> None:
    # Block 0: every neuron about equally important. Block 1: one neuron carries the block, the rest are
    # near zero *relative to it*. Global ranking compares scores normalised per block, so block 1 loses more.
    flat = torch.ones(32)
    peaked = torch.cat([torch.tensor([10.0]), torch.full((31,), 0.05)])
    heads = [torch.ones(4), torch.tensor([5.0, 0.1, 0.1, 0.1])]
    uniform = plan_pruning(heads, [4, 4], [flat, peaked], 0.5, 0.5, ranking="uniform")
    glob = plan_pruning(heads, [4, 4], [flat, peaked], 0.5, 0.5, ranking="global")
    assert [len(p.keep_neurons) for p in uniform] == [16, 16]
    assert [len(p.keep_heads) for p in uniform] == [2, 2]
    assert len(glob[1].keep_neurons) < len(glob[0].keep_neurons)
    assert len(glob[1].keep_heads) < len(glob[0].keep_heads)
    assert 0 in glob[1].keep_neurons and 0 in glob[1].keep_heads  # the dominant unit survives
    # Same overall budget as uniform.
    assert sum(len(p.keep_neurons) for p in glob) == sum(len(p.keep_neurons) for p in uniform)
    assert sum(len(p.keep_heads) for p in glob) == sum(len(p.keep_heads) for p in uniform)


def test_global_is_invariant_to_a_blocks_score_scale() -> None:
    """Scores are normalised per block: a block whose scores are uniformly 1000x smaller is not pruned more."""
    heads = _rand(8, 8, 8, seed=3)
    neurons = _rand(48, 48, 48, seed=4)
    base = plan_pruning(heads, [8] * 3, neurons, 0.5, 0.5, ranking="global")
    scaled = plan_pruning(
        [heads[0] * 1e-3, *heads[1:]], [8] * 3, [neurons[0] * 1e-3, *neurons[1:]], 0.5, 0.5, ranking="global"
    )
    assert scaled == base


@pytest.mark.parametrize("ranking", ["uniform", "global"])
def test_protected_layers_stay_whole(ranking: str) -> None:
    heads = _rand(8, 8, 8, 8, seed=5)
    neurons = _rand(64, 64, 64, 64, seed=6)
    heads[1] = heads[1] * 0  # the least important block of all: still protected
    neurons[1] = neurons[1] * 0
    plans = plan_pruning(heads, [2] * 4, neurons, 0.5, 0.5, ranking=ranking, protected_layers=[1, 3])
    for i in (1, 3):
        assert plans[i].keep_heads == list(range(8))
        assert plans[i].keep_kv_heads == [0, 1]
        assert plans[i].keep_neurons == list(range(64))
    for i in (0, 2):
        assert len(plans[i].keep_heads) < 8 and len(plans[i].keep_neurons) < 64


@pytest.mark.parametrize("ranking", ["uniform", "global"])
@pytest.mark.parametrize("multiple", [4, 8, 16])
def test_neuron_multiple_is_respected(ranking: str, multiple: int) -> None:
    sizes = (96, 100, 64, 40)
    for fraction in (0.1, 0.3, 0.5, 0.77, 0.95):
        plans = plan_pruning(
            _rand(4, 4, 4, 4), [4] * 4, _rand(*sizes, seed=7), 0.0, fraction, ranking, "auto", multiple
        )
        for plan, size in zip(plans, sizes, strict=True):
            kept = len(plan.keep_neurons)
            assert 1 <= kept <= size
            if size > multiple and kept < size:
                assert kept % multiple == 0, f"{kept} neurons kept of {size} (multiple {multiple}, {ranking})"


def test_nothing_is_removed_at_zero() -> None:
    for ranking in ("uniform", "global"):
        plans = plan_pruning(_rand(8, 8), [2, 2], _rand(16, 16), 0.0, 0.0, ranking=ranking)
        assert all(p.keep_heads == list(range(8)) and p.keep_neurons == list(range(16)) for p in plans)


# kv_groups under MQA (one KV head) is refused with a clear error instead: see tests/test_errors.py.
LAYOUTS = [
    (heads, kv_heads, mode)
    for heads, kv_heads in [(8, 2), (12, 4), (9, 3), (16, 8), (8, 1), (8, 8)]
    for mode in ("auto", "kv_groups", "query_heads")
    if not (mode == "kv_groups" and kv_heads == 1)
]


@pytest.mark.parametrize("ranking", ["uniform", "global"])
@pytest.mark.parametrize(("heads", "kv_heads", "gqa_mode"), LAYOUTS)
def test_gqa_plans_are_always_valid(ranking: str, gqa_mode: str, heads: int, kv_heads: int) -> None:
    group = heads // kv_heads
    for seed in range(3):
        for fraction in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
            head_scores = _rand(heads, heads, heads, seed=seed)
            plans = plan_pruning(
                head_scores, [kv_heads] * 3, _rand(8, 8, 8), fraction, 0.0, ranking=ranking, gqa_mode=gqa_mode
            )
            for plan in plans:
                check_gqa_mapping(heads, kv_heads, plan.keep_heads, plan.keep_kv_heads)
                if kv_heads == heads:
                    assert plan.keep_kv_heads == plan.keep_heads
                elif resolve_gqa_mode(gqa_mode, heads, kv_heads) == "kv_groups":
                    assert len(plan.keep_heads) == group * len(plan.keep_kv_heads), "whole groups go"
                else:
                    assert plan.keep_kv_heads == list(range(kv_heads)), "every KV head stays under query_heads"


def test_already_masked_groups_are_removed_first() -> None:
    heads, neurons = _rand(8, 8, seed=8), _rand(32, 32, seed=9)
    masked_neurons = [torch.zeros(32, dtype=torch.bool), torch.zeros(32, dtype=torch.bool)]
    masked_neurons[0][[0, 5, 31]] = True
    neurons[0][[0, 5, 31]] = 10.0  # high scores must not bring removed neurons back
    for ranking in ("uniform", "global"):
        plans = plan_pruning(heads, [8, 8], neurons, 0.0, 0.25, ranking=ranking, masked_neurons=masked_neurons)
        assert not {0, 5, 31} & set(plans[0].keep_neurons)


# ---------------------------------------------------------------------------------------------------------
# Properties of gradual pruning: random scores and growing targets, fed back the way PruningCallback does.
# ---------------------------------------------------------------------------------------------------------

# (heads, kv_heads): plain multi-head, GQA and MQA layouts.
HEAD_LAYOUTS = [(8, 8), (6, 6), (8, 2), (12, 4), (16, 8), (9, 3), (8, 1), (6, 1)]
NEURON_SIZES = [5, 40, 64, 96, 100, 200, 256]


def _pick(generator: torch.Generator, options: list) -> object:
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def _growing(generator: torch.Generator, steps: int, high: float) -> list[float]:
    """A non-decreasing sequence of targets in [0, high), sometimes repeating a value."""
    return sorted(float(x) for x in torch.rand(steps, generator=generator) * high)


def _scores(generator: torch.Generator, size: int) -> torch.Tensor:
    """Random non-negative scores; a third of the time coarsely quantised (ties) with some exact zeros."""
    scores = torch.rand(size, generator=generator)
    if float(torch.rand(1, generator=generator)) < 1 / 3:
        scores = (scores * 4).floor() / 4
    return scores


def _min_keep(size: int, multiple: int) -> int:
    return multiple if size > multiple else 1


def _rounding(size: int, multiple: int) -> float:
    """How far rounding a layer's kept neurons to the multiple may move it: half a block (0 when not rounded)."""
    return multiple / 2 if size > multiple else 0.0


def _check_case(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    n_layers = int(torch.randint(2, 6, (1,), generator=generator))
    heads, kv_heads = _pick(generator, HEAD_LAYOUTS)
    gqa_mode = _pick(generator, ["auto", "kv_groups", "query_heads"])
    ranking = _pick(generator, ["uniform", "global"])
    multiple = _pick(generator, [1, 8, 64])
    sizes = [_pick(generator, NEURON_SIZES) for _ in range(n_layers)]
    protected = [i for i in range(n_layers) if float(torch.rand(1, generator=generator)) < 0.2]
    steps = int(torch.randint(2, 7, (1,), generator=generator))
    # kv_groups cannot prune the heads of an MQA layer: such a run prunes neurons only, which must work.
    heads_targets = [0.0] * steps if gqa_mode == "kv_groups" and kv_heads == 1 else _growing(generator, steps, 0.99)
    neuron_targets = _growing(generator, steps, 0.99)
    kind = resolve_gqa_mode(gqa_mode, heads, kv_heads) if heads_targets[-1] > 0 else "heads"
    group = heads // kv_heads
    unit_size = {"heads": 1, "kv_groups": group, "query_heads": kv_heads}[kind]
    n_units = heads // unit_size
    eligible = [i for i in range(n_layers) if i not in protected]
    context = f"seed {seed}: {heads}/{kv_heads} heads, {gqa_mode}, {ranking}, multiple {multiple}, sizes {sizes}"

    masked_heads = [torch.zeros(heads, dtype=torch.bool) for _ in range(n_layers)]
    masked_neurons = [torch.zeros(n, dtype=torch.bool) for n in sizes]
    for fraction_heads, fraction_neurons in zip(heads_targets, neuron_targets, strict=True):
        plans = plan_pruning(
            [_scores(generator, heads) for _ in range(n_layers)],
            [kv_heads] * n_layers,
            [_scores(generator, n) for n in sizes],
            fraction_heads,
            fraction_neurons,
            ranking=ranking,
            gqa_mode=gqa_mode,
            neuron_multiple=multiple,
            protected_layers=protected,
            masked_heads=masked_heads,
            masked_neurons=masked_neurons,
        )
        removed_units, removed_neurons = [], []
        for i, (plan, size) in enumerate(zip(plans, sizes, strict=True)):
            kept_heads = torch.zeros(heads, dtype=torch.bool)
            kept_heads[plan.keep_heads] = True
            kept_neurons = torch.zeros(size, dtype=torch.bool)
            kept_neurons[plan.keep_neurons] = True
            assert not (kept_heads & masked_heads[i]).any(), f"{context}: a masked head came back in layer {i}"
            assert not (kept_neurons & masked_neurons[i]).any(), f"{context}: a masked neuron came back in layer {i}"
            assert plan.keep_heads and plan.keep_kv_heads and plan.keep_neurons, f"{context}: layer {i} emptied"
            check_gqa_mapping(heads, kv_heads, plan.keep_heads, plan.keep_kv_heads)
            if kind == "kv_groups":
                assert len(plan.keep_heads) == group * len(plan.keep_kv_heads), f"{context}: a KV group was split"
            elif kv_heads != heads:
                assert plan.keep_kv_heads == list(range(kv_heads)), f"{context}: query_heads removed a KV head"
            kept = len(plan.keep_neurons)
            assert kept >= _min_keep(size, multiple), f"{context}: layer {i} keeps {kept} of {size} neurons"
            if size > multiple and kept < size:
                assert kept % multiple == 0, f"{context}: layer {i} keeps {kept} neurons"
            if i in protected:
                assert len(plan.keep_heads) == heads and kept == size, f"{context}: protected layer {i} pruned"
            removed_units.append((heads - len(plan.keep_heads)) / unit_size)
            removed_neurons.append(size - kept)
            masked_heads[i], masked_neurons[i] = ~kept_heads, ~kept_neurons  # what the callback passes next

        # The target, as the allocator defines it: per layer under uniform ranking, in total under global.
        if ranking == "uniform":
            for i in eligible:
                goal = min(fraction_heads * n_units, n_units - 1)
                assert abs(removed_units[i] - goal) <= 0.5, f"{context}: layer {i} removes {removed_units[i]} units"
                size = sizes[i]
                goal = min(fraction_neurons * size, size - _min_keep(size, multiple))
                assert abs(removed_neurons[i] - goal) <= max(0.5, _rounding(size, multiple)), (
                    f"{context}: layer {i} removes {removed_neurons[i]} of {size} neurons for {fraction_neurons:.3f}"
                )
        elif eligible:
            total_units = sum(removed_units[i] for i in eligible)
            goal = min(fraction_heads * n_units * len(eligible), (n_units - 1) * len(eligible))
            assert abs(total_units - goal) <= 0.5, f"{context}: {total_units} units removed for {goal:.2f}"
            total = sum(removed_neurons[i] for i in eligible)
            capacity = sum(sizes[i] - _min_keep(sizes[i], multiple) for i in eligible)
            goal = min(fraction_neurons * sum(sizes[i] for i in eligible), capacity)
            tolerance = 0.5 + sum(_rounding(sizes[i], multiple) for i in eligible)
            assert abs(total - goal) <= tolerance, f"{context}: {total} neurons removed for {goal:.1f}"


@pytest.mark.parametrize("chunk", range(4))
def test_gradual_plans_never_revive_never_empty_stay_valid_and_meet_the_target(chunk: int) -> None:
    """200 random cases (50 per chunk): random layouts, rankings, GQA modes, neuron multiples, protected layers
    and fresh random scores at every step of a growing target, each plan's removed groups passed to the next
    as ``masked_heads``/``masked_neurons`` (as PruningCallback does). Every plan:

    - removes everything already removed (masks are monotone), never empties a layer, keeps GQA valid;
    - meets the target within half a unit. A head unit is what the GQA mode removes at once: a head without
      GQA, a KV group with its query heads (``kv_groups``), one query head of every group (``query_heads``).
      A neuron unit is a ``neuron_multiple`` block in a layer larger than the multiple, else one neuron.
      Uniform ranking: per layer, within half a unit of ``fraction x units`` (capped at all but one unit: a
      block larger than the multiple keeps at least one multiple). Global ranking: in total over the
      unprotected layers, heads within half a unit of ``fraction x units``; neurons within half a neuron
      (the budget is a whole number) plus half a ``neuron_multiple`` block per layer that is rounded to it.
    """
    for seed in range(chunk * 50, (chunk + 1) * 50):
        _check_case(seed)


def test_global_rounding_to_the_multiple_stays_within_half_a_block_per_layer() -> None:
    """A block whose scores are the lowest gives at most all but one multiple: rounding never has to put back
    more than half a block (raw choices below one multiple used to round back up to a whole multiple)."""
    peaked = torch.cat([torch.tensor([10.0]), torch.full((95,), 0.01)])  # normalised: 95 near-zero scores
    plans = plan_pruning(
        [torch.ones(4)] * 2, [4, 4], [peaked, torch.ones(256)], 0.0, 0.5, ranking="global", neuron_multiple=64
    )
    removed = [96 - len(plans[0].keep_neurons), 256 - len(plans[1].keep_neurons)]
    assert [n % 64 for n in (96 - removed[0], 256 - removed[1])] == [0, 0]
    assert abs(sum(removed) - 0.5 * (96 + 256)) <= 0.5 + 32 + 32, removed


def test_removed_groups_stay_removed_when_a_fraction_shrinks() -> None:
    """A cost target may trade heads for neurons between updates: a smaller head (or neuron) fraction than the
    one that removed the masked groups must not bring them back."""
    heads, neurons = _rand(8, 8, seed=10), _rand(32, 32, seed=11)
    masked_heads = [torch.zeros(8, dtype=torch.bool), torch.zeros(8, dtype=torch.bool)]
    masked_heads[0][[1, 2, 5, 6]] = True
    masked_neurons = [torch.zeros(32, dtype=torch.bool), torch.zeros(32, dtype=torch.bool)]
    masked_neurons[1][:16] = True
    for ranking in ("uniform", "global"):
        plans = plan_pruning(
            heads, [8, 8], neurons, 0.25, 0.1, ranking, masked_heads=masked_heads, masked_neurons=masked_neurons
        )
        assert not {1, 2, 5, 6} & set(plans[0].keep_heads), ranking
        assert not set(range(16)) & set(plans[1].keep_neurons), ranking


@pytest.mark.parametrize("ranking", ["uniform", "global"])
@pytest.mark.parametrize(("heads", "kv_heads"), [(6, 6), (8, 2), (8, 1)], ids=["mha", "gqa", "mqa"])
def test_tied_heads_keep_the_same_heads_in_every_block(ranking: str, heads: int, kv_heads: int) -> None:
    """A per-head tensor shared by every block (MPNet's position bias) allows one set of heads: the blocks' head
    scores are summed and the same heads go everywhere, whatever the ranking; neurons still follow the ranking."""
    g = torch.Generator().manual_seed(3)
    head_scores = [torch.rand(heads, generator=g) for _ in range(3)]
    neuron_scores = [torch.rand(32, generator=g) * (i + 1) ** 3 for i in range(3)]
    plans = plan_pruning(head_scores, [kv_heads] * 3, neuron_scores, 0.5, 0.5, ranking=ranking, tied_heads=True)
    assert len({tuple(p.keep_heads) for p in plans}) == 1 and len({tuple(p.keep_kv_heads) for p in plans}) == 1
    assert 0 < len(plans[0].keep_heads) < heads
    normalised = torch.stack([s / s.norm() for s in head_scores]).sum(0)
    kept, removed = set(plans[0].keep_heads), set(range(heads)) - set(plans[0].keep_heads)
    if kv_heads == heads:  # one head per unit: the kept heads are the best by the summed scores
        assert min(normalised[h] for h in kept) >= max(normalised[h] for h in removed)
    if ranking == "global":
        assert len({len(p.keep_neurons) for p in plans}) > 1  # neurons are ranked across blocks as asked
    untied = plan_pruning(head_scores, [kv_heads] * 3, neuron_scores, 0.5, 0.5, ranking=ranking)
    assert [p.keep_neurons for p in untied] == [p.keep_neurons for p in plans]


def test_tied_heads_refuse_protected_layers() -> None:
    scores = [torch.rand(4) for _ in range(2)]
    with pytest.raises(ValueError, match="tied_heads needs the same heads in every block"):
        plan_pruning(scores, [4, 4], [torch.rand(8)] * 2, 0.5, 0.0, protected_layers=[0], tied_heads=True)
    plan_pruning(scores, [4, 4], [torch.rand(8)] * 2, 0.0, 0.5, protected_layers=[0], tied_heads=True)  # no heads


# ---------------------------------------------------------------------------------------------------------
# plan_units: one request per leading kind
# ---------------------------------------------------------------------------------------------------------


def test_plan_units_plans_each_kind_on_its_own_and_merges_the_blocks() -> None:
    """A third kind (say, experts: one index per unit) is planned next to heads and neurons without touching
    them, and every block's plan holds the kept indices of every kind."""
    heads, neurons, experts = _rand(8, 8, seed=1), _rand(16, 16, seed=2), _rand(4, 4, seed=3)
    requests = [head_request(heads, [2, 2], 0.5), neuron_request(neurons, 0.25, multiple=4)]
    extra = KindRequest("experts", experts, {"experts": [4, 4]}, 0.5, lambda i, s: single_units(s))
    plans = plan_units([*requests, extra], ranking="global")
    alone = plan_pruning(heads, [2, 2], neurons, 0.5, 0.25, ranking="global", neuron_multiple=4)
    experts_alone = plan_units([extra], ranking="global")
    assert plans == [LayerPlan(keep={**p.keep, **q.keep}) for p, q in zip(alone, experts_alone, strict=True)]
    assert [list(p.keep) for p in plans] == [["heads", "kv_heads", "neurons", "experts"]] * 2
    assert sum(len(p.keep["experts"]) for p in plans) == 4
    for plan, scores in zip(plans, experts, strict=True):  # within a block, the least important go first
        kept = plan.keep["experts"]
        removed = [j for j in range(4) if j not in kept]
        assert not removed or float(scores[removed].max()) <= float(scores[kept].min())


@pytest.mark.parametrize("ranking", ["uniform", "global"])
@pytest.mark.parametrize("gqa_mode", ["kv_groups", "query_heads"])
def test_a_planner_reused_over_many_fractions_plans_as_a_fresh_one_and_counts_what_it_plans(
    ranking: str, gqa_mode: str
) -> None:
    """A cost target asks one Planner for hundreds of fractions, on counts only: every answer must be the plan a
    fresh plan_units gives, and its counts those of the plan (masked units staying masked)."""
    heads, neurons = _rand(6, 6, 6, seed=4), _rand(24, 24, 24, seed=5)
    masked_heads = [torch.zeros(6, dtype=torch.bool) for _ in range(3)]
    masked_neurons = [torch.arange(24) % 7 == 0 for _ in range(3)]
    # Gone already: KV group 0 (heads 0-2 of 2 groups x 3), or one query head of each group.
    masked_heads[1][[0, 1, 2] if gqa_mode == "kv_groups" else [0, 3]] = True
    requests = [
        head_request(heads, [2, 2, 2], 0.0, gqa_mode, masked_heads),
        neuron_request(neurons, 0.0, multiple=2, masked=masked_neurons),
    ]
    planner = Planner(requests, ranking, protected_layers=[2])
    for h, n in [(0.0, 0.0), (0.3, 0.5), (0.0, 0.7), (0.5, 0.1), (0.3, 0.5), (0.6, 0.9)]:
        fractions = {"heads": h, "neurons": n}
        fresh = plan_units(
            [replace(requests[0], fraction=h), replace(requests[1], fraction=n)], ranking, protected_layers=[2]
        )
        assert planner.plan(fractions) == fresh
        assert planner.counts(fractions) == [p.counts() for p in fresh]
        for plan, gone_heads, gone_neurons in zip(fresh, masked_heads, masked_neurons, strict=True):
            assert not set(gone_heads.nonzero().flatten().tolist()) & set(plan.keep["heads"])
            assert not set(gone_neurons.nonzero().flatten().tolist()) & set(plan.keep["neurons"])
