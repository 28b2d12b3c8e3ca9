"""Latency as a pruning target: a table of measured forward latency by units kept, which the allocator reads.

FLOPs are a proxy. On a real device a head costs more or less than its FLOPs say (small matmuls run below peak,
attention scores grow with the sequence), so ``PruningConfig(latency=0.5)`` asks for half the *measured* latency
of a forward pass at ``latency_batch_size`` x ``latency_seq_len`` on the device the model is on. The table is
measured once: the whole model with every block shrunk to ``k`` units of one kind (the others full), for a few
``k``, each timed against the dense model in alternating rounds; a block's share is the whole model's latency over
the number of blocks, linear between the measured points.
The allocator then treats it like a cost per unit (:meth:`LatencyTable.removed`). One-shot, :func:`meet_latency`
then closes the loop: it times a pruned copy and re-plans by what the measurement missed. The pruned model is
measured again, so the report holds the target, the prediction and the result side by side.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from . import surgery
from .allocation import LayerPlan
from .latency import compare_latency, device_name, measure_latency
from .structure import ModelStructure

#: Fractions of each kind's units kept at which the table is measured (1.0, the dense model, is always measured).
TABLE_POINTS = (0.25, 0.5, 0.75)


@dataclass
class LatencyTable:
    """Forward latency (ms) of the model with every block at ``k`` units of one kind: ``curves[kind]`` is a list
    of ``(k, ms)`` from the fewest units to the full count; the other kinds stay whole."""

    dense_ms: float
    curves: dict[str, list[tuple[int, float]]]
    num_layers: int
    batch_size: int
    seq_len: int
    device: str
    threads: int
    details: dict[str, Any] = field(default_factory=dict)

    def block_ms(self, kind: str, units: int) -> float:
        """A block's share of the latency with ``units`` of ``kind`` (linear between measured points)."""
        points = self.curves.get(kind)
        if not points:
            return 0.0
        if units <= points[0][0]:
            (k0, t0), (k1, t1) = points[0], points[min(1, len(points) - 1)]
        else:
            index = next((i for i in range(1, len(points)) if units <= points[i][0]), len(points) - 1)
            (k0, t0), (k1, t1) = points[index - 1], points[index]
        slope = 0.0 if k1 == k0 else (t1 - t0) / (k1 - k0)
        return (t0 + slope * (units - k0)) / self.num_layers

    def removed(self, before: Mapping[str, int], after: Mapping[str, int]) -> float:
        """Milliseconds removed going from the counts ``before`` of one block to ``after``."""
        return sum(self.block_ms(kind, before[kind]) - self.block_ms(kind, after[kind]) for kind in self.curves)

    def predicted_ms(self, counts: list[Mapping[str, int]], before: list[Mapping[str, int]]) -> float:
        """The latency the table predicts for blocks with ``counts`` (from blocks with ``before``)."""
        return self.dense_ms - sum(self.removed(b, c) for b, c in zip(before, counts, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shrunk_copy(structure: ModelStructure, kind: str, units: int) -> torch.nn.Module:
    """A copy of the model with every block's ``kind`` cut to its first ``units`` (query heads: the same number
    from every KV group)."""
    model = copy.deepcopy(structure.model)
    layers = surgery.find_layers(model, structure.recipe_dict)
    for layer, shape in zip(layers, structure.shapes(), strict=True):
        target = {**shape.counts, kind: units}
        if kind == "heads" and shape.kv_heads == shape.heads:  # without GQA every head has its own keys and values
            target["kv_heads"] = units
        for restore in surgery.RESTORERS:
            restore(layer, structure.recipe_dict, structure.head_dim, target)
    return model


def _table_units(structure: ModelStructure, kind: str) -> list[int]:
    """The unit counts the table is measured at for ``kind``: valid in every block (heads: whole per KV group)."""
    shapes = structure.shapes()
    full = min(s[kind] for s in shapes)
    gqa = kind == "heads" and any(s.kv_heads != s.heads for s in shapes)
    step = max(s.kv_heads for s in shapes) if gqa else 1
    units = {max(step, step * round(full * p / step)) for p in TABLE_POINTS}
    return sorted(u for u in units if u < full)


def _monotone(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """``points`` (fewest units first) with no point slower than one with more units: a block with fewer units
    does less work, so a point above its larger neighbour is noise, and kept as it is it would tell the allocator
    that removing units adds latency (measured on a tiny model: a prediction above the dense latency)."""
    ceiling, kept = float("inf"), []
    for units, ms in reversed(points):
        ceiling = min(ceiling, ms)
        kept.append((units, ceiling))
    return kept[::-1]


def measure_latency_table(
    structure: ModelStructure, batch_size: int = 8, seq_len: int = 128, repeats: int = 10
) -> LatencyTable:
    """Measure :class:`LatencyTable` for the kinds that change a forward pass's work (heads, neurons)."""
    if len(structure.stacks) > 1:
        raise ValueError(
            f"a latency target on a model with several block lists ({', '.join(s for s, _, _ in structure.stacks)}) "
            "is not supported: the table times one list of blocks on token ids. Give a flops= or params= target."
        )
    model = structure.model
    was_training = model.training
    shapes = structure.shapes()
    try:
        # Each point is timed against the dense model in alternating rounds and kept as a ratio to it: the machine's
        # drift between points (measured: 8% on a 2-core CPU) would otherwise bend the curves.
        ratios: dict[str, list[tuple[int, float]]] = {}
        dense_runs: list[float] = []
        for kind in ("heads", "neurons"):
            if not any(k.name == kind for k in structure.leaders) or len({s[kind] for s in shapes}) != 1:
                continue  # a kind the model lacks, or blocks of different sizes (the table assumes uniform ones)
            points = []
            for units in _table_units(structure, kind):
                shrunk = _shrunk_copy(structure, kind, units)
                dense_at, shrunk_at = compare_latency(model, shrunk, batch_size, seq_len, repeats=repeats)
                points.append((units, shrunk_at.median_ms / dense_at.median_ms))
                dense_runs.append(dense_at.median_ms)
                del shrunk
            ratios[kind] = _monotone([*points, (shapes[0][kind], 1.0)])
        if not dense_runs:
            dense_runs.append(measure_latency(model, batch_size, seq_len, repeats=repeats).median_ms)
    finally:
        model.train(was_training)
    dense = statistics.median(dense_runs)
    curves = {kind: [(units, ratio * dense) for units, ratio in points] for kind, points in ratios.items()}
    device = next(model.parameters()).device
    return LatencyTable(
        dense_ms=dense,
        curves=curves,
        num_layers=structure.num_layers,
        batch_size=batch_size,
        seq_len=seq_len,
        device=device_name(device),
        threads=torch.get_num_threads(),
        details={"dense_ms_runs": dense_runs},  # the dense model's median next to each point: the machine's drift
    )


#: Re-plans after measuring, at most; and how close to the target a measured removal must come to stop early.
LATENCY_ROUNDS = 3
LATENCY_TOLERANCE = 0.02
#: Largest correction of the asked fraction per round, and farthest from the target it may go.
LATENCY_STEP, LATENCY_REACH = 0.1, 0.2


def meet_latency(
    model: torch.nn.Module,
    table: LatencyTable,
    target: float,
    plan: Callable[[float], list[LayerPlan]],
    pruned_copy: Callable[[list[LayerPlan]], torch.nn.Module],
    repeats: int = 10,
) -> tuple[list[LayerPlan], list[dict[str, float]]]:
    """Plans that remove ``target`` of ``model``'s latency as measured, not only as the table predicts.

    ``plan(fraction)`` plans for a latency target on the table; ``pruned_copy(plans)`` builds the pruned model.
    Each round prunes a copy, times it against ``model`` in alternating rounds, and shifts the fraction asked of the
    table by what the measurement missed (the table adds the savings of heads and neurons it measured apart).
    Returns the plans whose measured removal came closest, and every round's figures.
    """
    asked, rounds = target, []
    best: tuple[float, list[LayerPlan]] | None = None
    for _ in range(LATENCY_ROUNDS):
        plans = plan(asked)
        trial = pruned_copy(plans)
        dense, pruned = compare_latency(model, trial, table.batch_size, table.seq_len, repeats=repeats)
        del trial
        measured = 1 - pruned.median_ms / dense.median_ms
        rounds.append({"asked": round(asked, 4), "measured_removed": round(measured, 4)})
        if best is None or abs(measured - target) < abs(best[0] - target):
            best = (measured, plans)
        if abs(measured - target) <= LATENCY_TOLERANCE:
            break
        # Small steps, near the target: on a noisy machine one measurement must not send the plan far off.
        step = max(-LATENCY_STEP, min(LATENCY_STEP, target - measured))
        asked = min(target + LATENCY_REACH, max(target - LATENCY_REACH, asked + step), 0.95)
        asked = max(asked, 0.01)
    assert best is not None
    return best[1], rounds
