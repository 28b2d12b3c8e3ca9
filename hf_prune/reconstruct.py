"""Retraining-free recovery: after removing heads or neurons, make each block's output projection reproduce the
dense block's output on calibration data.

For an output projection ``P`` (``o`` or ``down``) with input ``Z`` (the head outputs or neuron activations) and
dense weight ``W``, the dense output is ``Z W^T``. Removing units drops their columns. Two steps then win back
what they can, each solved in closed form from the second moments of ``Z`` (never from stored activations):

- **bias compensation** (An et al. 2024, FLAP): the removed units' mean contribution ``W_R mean(Z_R)`` goes into
  ``P``'s bias, so only their fluctuation around the mean is lost;
- **scale refit** (Kwon et al. 2022, "mask tuning"): one least-squares scale per kept head or neuron (a
  handful of numbers per layer, not a weight matrix: a full refit of ``W`` fits the calibration text's domain
  and hurts elsewhere), damped towards 1.

Both are validated on calibration windows that the solve did not see: a step is kept only where it lowers the
held-out reconstruction error, and the damping is chosen there too. Blocks are processed in order, each fed by
the already-pruned blocks before it (sequential, as in SparseGPT and FLAP), holding one block's inputs at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from .memory import release_freed_memory
from .structure import ModelStructure

# Damping of the scale refit, relative to each unit's own energy; picked per projection on held-out windows.
DAMPINGS = (1e-3, 1e-2, 1e-1, 1.0)


# ---------------------------------------------------------------------------------------------------------
# Second moments of a projection's input, split into fit and held-out parts.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Moments:
    """Running ``sum z z^T``, ``sum z`` and row count of a projection's input (float64)."""

    gram: torch.Tensor
    total: torch.Tensor
    rows: int = 0

    @classmethod
    def zeros(cls, width: int) -> Moments:
        dtype = torch.float64 if width <= 8192 else torch.float32  # a 7B down_proj: 11008^2 floats
        return cls(torch.zeros(width, width, dtype=dtype), torch.zeros(width, dtype=dtype))

    def add(self, z: torch.Tensor) -> None:
        # One batch's product in float32 (fast, and exact enough over a few thousand rows), summed in float64.
        z = z.float()
        self.gram += (z.T @ z).to(self.gram.dtype).cpu()
        self.total += z.sum(0).to(self.total.dtype).cpu()
        self.rows += z.shape[0]

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.gram + other.gram, self.total + other.total, self.rows + other.rows)

    def second_moment(self, centered: bool) -> torch.Tensor:
        mean = self.total / max(self.rows, 1)
        gram = self.gram / max(self.rows, 1)
        return gram - torch.outer(mean, mean) if centered else gram


class StopForward(Exception):
    """Raised by a hook once a forward pass has produced what it was run for."""


class InputRecorder:
    """Forward pre-hook on a projection: folds the rows of its input (padding excluded) into the fit or the
    held-out moments. ``route`` says where the current batch goes: ``"fit"``, ``"held_out"``, or ``"split"``
    (a single calibration batch: its first half of rows is fitted, the second half held out).

    With ``stop=True`` the hook then raises :class:`StopForward`: nothing after the projection's input is needed,
    so the caller skips the rest of the block (a third of the reconstruction's forward work on SmolLM2)."""

    def __init__(self, module: nn.Module, width: int, stop: bool = False) -> None:
        self.fit, self.held_out = Moments.zeros(width), Moments.zeros(width)
        self.rows: torch.Tensor | None = None
        self.route = "fit"
        self.stop = stop
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        z = args[0].detach()
        z = z.reshape(-1, z.shape[-1])
        if self.rows is not None:
            z = z[self.rows.to(z.device)]
        if self.route == "split":
            half = z.shape[0] // 2
            self.fit.add(z[:half])
            self.held_out.add(z[half:])
        else:
            (self.held_out if self.route == "held_out" else self.fit).add(z)
        if self.stop:
            raise StopForward

    def remove(self) -> None:
        self.handle.remove()


# ---------------------------------------------------------------------------------------------------------
# The closed-form solve for one projection.
# ---------------------------------------------------------------------------------------------------------


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    w = module.weight.detach()
    return (w.T if isinstance(module, Conv1D) else w).to(torch.float64).cpu()


def unit_gram(second: torch.Tensor, weight_gram: torch.Tensor, unit_width: int) -> torch.Tensor:
    """``G[u, v] = E[<z_u W_u^T, z_v W_v^T>]``: the expected inner products of the units' output contributions,
    from the input's second moment and the dense weight's Gram matrix ``W^T W`` (both ``M x M``)."""
    q = second.to(torch.float64) * weight_gram
    if unit_width == 1:  # neurons: nothing to sum (and no copy of an M x M matrix)
        return q
    units = q.shape[0] // unit_width
    return q.view(units, unit_width, units, unit_width).sum(dim=(1, 3))


def reconstruction_error(gram: torch.Tensor, keep: torch.Tensor, scales: torch.Tensor) -> float:
    """Mean squared distance (per row) between the dense output and ``sum_{u in keep} s_u z_u W_u^T``."""
    ones = torch.ones(gram.shape[0], dtype=gram.dtype)
    total = ones @ gram @ ones
    cross = scales @ gram[keep] @ ones
    own = scales @ gram[keep][:, keep] @ scales
    return float(total - 2 * cross + own)


def solve_scales(gram: torch.Tensor, keep: torch.Tensor, damping: float) -> torch.Tensor:
    """Least-squares scales of the kept units, damped towards 1 (relative to each unit's own energy)."""
    kk = gram[keep][:, keep]
    rhs = gram[keep].sum(1)
    diag = kk.diagonal().clamp_min(1e-12)
    lhs = kk + damping * torch.diag(diag)
    return torch.linalg.solve(lhs, rhs + damping * diag)


def weight_error(second: torch.Tensor, weight: torch.Tensor, columns: torch.Tensor, new: torch.Tensor) -> float:
    """Mean squared distance (per row) between the dense output ``z W^T`` and ``z_K new^T`` (``new``: the kept
    columns' refitted weight), from the input's second moment. Float32: a ``D x K x K`` product per call."""
    sigma = second.float()
    w, new = weight.float(), new.float()
    kk = sigma[columns][:, columns]
    own = ((new @ kk) * new).sum()
    cross = ((new @ sigma[columns]) * w).sum()
    total = ((w @ sigma) * w).sum()
    return float(total - 2 * cross + own)


def solve_weights(second: torch.Tensor, weight: torch.Tensor, columns: torch.Tensor, damping: float) -> torch.Tensor:
    """Ridge least squares of the kept columns' weight against the dense output, pulled towards the original
    weight (``damping`` relative to the mean input energy per column): ``(W S_K: + l W_K)(S_KK + l I)^-1``."""
    kk = second[columns][:, columns]
    ridge = damping * kk.diagonal().mean().clamp_min(1e-12)
    lhs = kk + ridge * torch.eye(len(columns), dtype=kk.dtype)
    rhs = weight @ second[:, columns] + ridge * weight[:, columns]
    return torch.linalg.solve(lhs, rhs.T).T  # lhs is symmetric


REFITS = ("none", "scales", "weights")

# Ridge of the selection's second moment, relative to its mean diagonal (SparseGPT's 1%).
SELECTION_DAMPING = 1e-2
# Rounds of the greedy selection: each removes a 1/SELECTION_ROUNDS share of the units to remove, at least one
# (one at a time costs an n x n update per unit: 5 s per SmolLM2 MLP; in 32 rounds the same work is a few GEMMs).
SELECTION_ROUNDS = 32


def select_units(
    weight: torch.Tensor,
    second: torch.Tensor,
    unit_width: int,
    groups: Sequence[Sequence[int]],
    keep_units: Sequence[int],
) -> list[int]:
    """Which units to keep so that a least-squares refit of the rest can best stand in for the removed ones:
    greedy structured Optimal Brain Surgeon on the projection's input (as in ZipLM and SlimGPT).

    Each group of ``groups`` keeps as many units as ``keep_units`` keeps of it (the query heads of one KV group;
    all neurons are one group), so the layout the allocator planned is unchanged: only which units stay is chosen
    again. With ``H`` the damped second moment of the input and ``W`` the (out, in) weight, refitted after every
    round, removing unit ``u`` (columns ``c``) costs ``tr(W_c (H^-1)_cc^-1 W_c^T)`` of output error. Each round
    removes the cheapest units, then updates ``W`` and ``H^-1`` as if the rest had been refitted.
    """
    keep_set = set(keep_units)
    to_remove = [sum(u not in keep_set for u in members) for members in groups]
    total = sum(to_remove)
    if not total:
        return sorted(keep_units)
    w = weight.to(torch.float64).clone()
    h = second.to(torch.float64).clone()
    h.diagonal().add_(SELECTION_DAMPING * h.diagonal().mean().clamp_min(1e-12))
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    units = sum(len(m) for m in groups)
    columns = torch.arange(units * unit_width).view(units, unit_width)
    group_index = torch.empty(units, dtype=torch.long)
    for g, members in enumerate(groups):
        group_index[list(members)] = g
    alive = torch.ones(units, dtype=torch.bool)
    per_round = max(1, -(-total // SELECTION_ROUNDS))
    while sum(to_remove):
        if unit_width == 1:  # neurons: one ratio per column, no gathering
            costs = (w * w).sum(0) / hinv.diagonal().clamp_min(1e-30)
        else:
            blocks = hinv[columns[:, :, None], columns[:, None, :]]  # (units, width, width)
            w_units = w[:, columns].permute(1, 0, 2)  # (units, out, width)
            costs = ((w_units @ torch.linalg.pinv(blocks, hermitian=True)) * w_units).sum(dim=(1, 2))
        costs = torch.where(alive, costs, torch.full_like(costs, float("inf")))
        chosen = []
        for unit in torch.argsort(costs).tolist():
            if len(chosen) == per_round or not alive[unit]:
                break
            if to_remove[int(group_index[unit])] > 0:
                chosen.append(unit)
                to_remove[int(group_index[unit])] -= 1
        c = columns[chosen].reshape(-1)
        inv_block = torch.linalg.pinv(hinv[c][:, c], hermitian=True)
        w -= w[:, c] @ inv_block @ hinv[c, :]
        hinv -= hinv[:, c] @ inv_block @ hinv[c, :]
        alive[chosen] = False
    return alive.nonzero().flatten().tolist()


@dataclass
class ProjectionFix:
    """What reconstruction does to one output projection, and why (errors are relative to the dense output's
    energy, measured on held-out calibration windows)."""

    bias: bool
    refit: str  # 'none', 'scales' or 'weights': what the held-out windows confirmed
    damping: float | None
    error_pruned: float
    error_after: float
    scale_values: torch.Tensor | None = field(default=None, repr=False)
    weight_values: torch.Tensor | None = field(default=None, repr=False)
    bias_values: torch.Tensor | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "bias": self.bias,
            "refit": self.refit,
            "damping": self.damping,
            "held_out_error_pruned": round(self.error_pruned, 6),
            "held_out_error_after": round(self.error_after, 6),
        }


def plan_fix(
    weight: torch.Tensor,
    fit: Moments,
    held_out: Moments,
    unit_width: int,
    keep_units: Sequence[int],
    can_bias: bool,
    refit: str = "weights",
) -> ProjectionFix:
    """Choose bias compensation and a refit for one projection from its input moments (module docstring).

    ``refit``: the most the solve may change. ``'scales'`` tries one scale per kept unit; ``'weights'`` also
    tries a ridge refit of the kept columns. Each candidate, and each damping, must lower the held-out error.
    """
    if refit not in REFITS:
        raise ValueError(f"refit must be one of {REFITS}, got {refit!r}.")
    keep = torch.as_tensor(sorted(keep_units), dtype=torch.long)
    weight_gram = (weight.float().T @ weight.float()).double()  # once: the largest product of the solve
    columns = (keep[:, None] * unit_width + torch.arange(unit_width)[None, :]).reshape(-1)
    ones = torch.ones(len(keep), dtype=torch.float64)
    # Errors are relative to the energy of the dense output on held-out rows.
    held = {False: held_out.second_moment(centered=False)}
    held_grams = {False: unit_gram(held[False], weight_gram, unit_width)}
    energy = max(float(held_grams[False].sum()), 1e-30)
    pruned_error = reconstruction_error(held_grams[False], keep, ones) / energy
    bias, best_error = False, pruned_error
    if can_bias:
        held[True] = held_out.second_moment(centered=True)
        held_grams[True] = unit_gram(held[True], weight_gram, unit_width)
        centered_error = reconstruction_error(held_grams[True], keep, ones)
        bias, best_error = centered_error / energy < pruned_error, min(pruned_error, centered_error / energy)
    held, held_gram, fitted = held[bias], held_grams[bias], fit.second_moment(centered=bias)
    chosen: tuple[str, float] | None = None
    if refit in ("scales", "weights"):
        fit_gram = unit_gram(fitted, weight_gram, unit_width)
        for damping in DAMPINGS:
            error = reconstruction_error(held_gram, keep, solve_scales(fit_gram, keep, damping)) / energy
            if error < best_error:
                best_error, chosen = error, ("scales", damping)
    if refit == "weights":
        for damping in DAMPINGS[1:]:
            new = solve_weights(fitted, weight, columns, damping)
            error = weight_error(held, weight, columns, new) / energy
            if error < best_error:
                best_error, chosen = error, ("weights", damping)
    fix = ProjectionFix(bias, "none" if chosen is None else chosen[0], None, pruned_error, best_error)
    # The chosen solution, refitted on every calibration row.
    everything = fit + held_out
    second = everything.second_moment(centered=bias)
    kept_weight = weight[:, columns]
    if chosen is not None:
        fix.damping = chosen[1]
        if chosen[0] == "scales":
            fix.scale_values = solve_scales(unit_gram(second, weight_gram, unit_width), keep, chosen[1])
            kept_weight = kept_weight * fix.scale_values.repeat_interleave(unit_width)[None, :]
        else:
            fix.weight_values = kept_weight = solve_weights(second, weight, columns, chosen[1])
    if bias:
        # The dense output's mean minus the pruned one's: the removed units' mean, and what the refit moved.
        mean = everything.total / max(everything.rows, 1)
        fix.bias_values = weight @ mean - kept_weight @ mean[columns]
    return fix


def apply_fix(module: nn.Module, fix: ProjectionFix, unit_width: int, keep_units: Sequence[int] | None = None) -> None:
    """Refit the kept input columns of a projection and add the bias, in place.

    ``keep_units=None``: the projection is already pruned (its columns are the kept ones). Otherwise it is still
    dense: the removed units' columns are zeroed (which computes what removing them does) and the kept ones
    refitted, so that surgery afterwards cuts out exactly the reconstructed model.
    """
    with torch.no_grad():
        weight = module.weight.T if isinstance(module, Conv1D) else module.weight  # an (out, in) view
        columns: slice | torch.Tensor = slice(None)
        if keep_units is not None:
            keep = torch.as_tensor(sorted(keep_units), dtype=torch.long)
            columns = (keep[:, None] * unit_width + torch.arange(unit_width)[None, :]).reshape(-1)
            removed = torch.ones(weight.shape[1], dtype=torch.bool)
            removed[columns] = False
            weight[:, removed.to(weight.device)] = 0
            columns = columns.to(weight.device)
        if fix.weight_values is not None:
            weight[:, columns] = fix.weight_values.to(weight.dtype).to(weight.device)
        elif fix.scale_values is not None:
            factors = fix.scale_values.repeat_interleave(unit_width).to(weight.dtype).to(weight.device)
            weight[:, columns] = weight[:, columns] * factors[None, :]
        if fix.bias_values is not None:
            if module.bias is None:
                raise RuntimeError("enable the projection's bias before applying a bias compensation.")
            module.bias.add_(fix.bias_values.to(module.bias.dtype).to(module.bias.device))


# ---------------------------------------------------------------------------------------------------------
# Enabling a bias the architecture can express in its config.
# ---------------------------------------------------------------------------------------------------------


def enable_bias(structure: ModelStructure, part: str) -> bool:
    """Give every projection of ``part`` ('attention' or 'mlp') a bias, in every block, if the recipe names the
    config flag that makes the modeling code build them (``attention_bias``, ``mlp_bias``...). New biases are
    zero, so outputs do not change. Returns whether the output projection has a bias now."""
    spec = structure.recipe.attention if part == "attention" else structure.recipe.mlp
    if spec is None:
        return False  # no dense MLP (an MoE recipe): nothing to give a bias
    output_role = "o" if part == "attention" else "down"
    if all(structure.module(i, output_role).bias is not None for i in range(structure.num_layers)):
        return True
    flag = spec.bias_attribute
    if flag is None:
        return False
    roles = ["qkv", "o"] if part == "attention" and spec.qkv else ["q", "k", "v", "o"]
    if part == "mlp":
        roles = ["gate_up", "down"] if spec.gate_up else [r for r in ("up", "gate", "down") if getattr(spec, r)]
    for index in range(structure.num_layers):
        for role in roles:
            module = structure.module(index, role)
            if module.bias is None:
                width = module.weight.shape[1] if isinstance(module, Conv1D) else module.weight.shape[0]
                zeros = torch.zeros(width, dtype=module.weight.dtype, device=module.weight.device)
                module.bias = nn.Parameter(zeros, requires_grad=module.weight.requires_grad)
    setattr(structure.config, flag, True)
    return True


# ---------------------------------------------------------------------------------------------------------
# Sequential, block by block.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class BlockInputs:
    """What one calibration batch feeds into a block: positional and keyword arguments (the hidden states
    replaced as the blocks before it are pruned) and which token rows are real (not padding)."""

    args: tuple
    kwargs: dict[str, Any]
    rows: torch.Tensor | None


def capture_block_inputs(
    structure: ModelStructure, batches: Sequence[dict[str, torch.Tensor]]
) -> list[list[BlockInputs]]:
    """Every block's call arguments for every batch, from one forward pass each (the masks, position embeddings
    and so on that the model computes per block; the hidden states themselves are kept for block 0 only)."""
    model = structure.model
    device = next(model.parameters()).device
    captured: list[list[BlockInputs]] = [[] for _ in range(structure.num_layers)]
    current_rows: list[torch.Tensor | None] = [None]

    def hook(index: int) -> Callable:
        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            kept = hidden.detach().cpu() if index == 0 else None  # later blocks get theirs from the pruned ones
            stored_args, stored_kwargs = tuple(args), dict(kwargs)
            if args:
                stored_args = (kept, *args[1:])
            else:
                stored_kwargs["hidden_states"] = kept
            captured[index].append(BlockInputs(stored_args, stored_kwargs, current_rows[0]))
            if index == structure.num_layers - 1:
                raise StopForward

        return record

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(structure.layers)]
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                inputs.pop("labels", None)
                mask = inputs.get("attention_mask")
                current_rows[0] = None if mask is None else mask.reshape(-1).bool().cpu()
                if getattr(model.config, "use_cache", None) is not None:
                    inputs["use_cache"] = False  # nothing to cache; some blocks would otherwise fill one
                # Raised after the last block: the rest of the model is not needed.
                with contextlib.suppress(StopForward):
                    model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _call_block(layer: nn.Module, inputs: BlockInputs, hidden: torch.Tensor, device: torch.device) -> torch.Tensor:
    hidden = hidden.to(device)
    if inputs.args:
        out = layer(hidden, *inputs.args[1:], **inputs.kwargs)
    else:
        out = layer(**{**inputs.kwargs, "hidden_states": hidden})
    return out[0] if isinstance(out, tuple) else out


@dataclass
class SublayerPlan:
    """Which units of one sublayer stay, and how to remove the others (surgery, as a callback)."""

    keep_units: list[int]
    units: int
    remove: Callable[[], None]
    #: Units whose kept count is fixed per group (the query heads of each KV group); None: one group of all.
    groups: list[list[int]] | None = None
    #: Which units stay may not change (per-head tensors shared by every block tie all blocks to the same heads).
    fixed: bool = False

    def selection_groups(self) -> list[list[int]]:
        return self.groups if self.groups is not None else [list(range(self.units))]


@dataclass
class Reconstruction:
    """Reconstruction settings for :func:`hf_prune.apply_plan`, and afterwards what it did per block."""

    batches: Sequence[dict[str, torch.Tensor]]
    bias: bool = True
    refit: str = "weights"
    reselect: bool = False
    log: list[dict[str, Any]] = field(default_factory=list)

    def run(self, structure: ModelStructure, plans: Sequence[tuple[SublayerPlan, ...]]) -> None:
        self.log = reconstruct_sequentially(
            structure, self.batches, plans, bias=self.bias, refit=self.refit, reselect=self.reselect
        )

    def summary(self) -> dict[str, Any]:
        """Totals for the report: how many projections got a bias or scales, and the held-out errors."""
        fixes = [fix for block in self.log for fix in block.values()]
        return {
            "bias": self.bias,
            "refit": self.refit,
            "projections": len(fixes),
            "with_bias": sum(f["bias"] for f in fixes),
            **{f"refit_{kind}": sum(f["refit"] == kind for f in fixes) for kind in REFITS},
            "reselect": self.reselect,
            "reselected": sum(bool(f.get("reselected")) for f in fixes),
            "mean_held_out_error_pruned": sum(f["held_out_error_pruned"] for f in fixes) / max(len(fixes), 1),
            "mean_held_out_error_after": sum(f["held_out_error_after"] for f in fixes) / max(len(fixes), 1),
            "per_block": self.log,
        }


def reconstruct_sequentially(
    structure: ModelStructure,
    batches: Sequence[dict[str, torch.Tensor]],
    plans: Sequence[tuple[SublayerPlan | None, ...]],
    bias: bool = True,
    refit: str = "weights",
    reselect: bool = False,
) -> list[dict[str, Any]]:
    """Reconstruct block by block each output projection that loses units (module docstring).

    With ``reselect``, which units of each block go is chosen again on the block's input (:func:`select_units`,
    the counts stay as planned), and kept where the held-out windows confirm it: the plan's ``keep_units`` are
    then updated in place.

    ``plans[i]`` has one entry per part of block ``i`` (``(attention, mlp)``, in the order of
    ``structure.leaders``): what stays, or ``None`` where nothing is removed. The
    model stays dense-shaped: the removed units' input columns of ``o`` / ``down`` are zeroed, which computes what
    removing them does, so the shapes that every block's captured arguments assume (and per-head tensors shared by
    all blocks) stay valid throughout; the caller removes the units afterwards (:func:`hf_prune.apply_plan`, which
    checks the pruned model against this masked one). Returns what was done per block, for the report.
    """
    model = structure.model
    device = next(model.parameters()).device
    # A bias only where some block loses units of that part (enabling one adds a zero bias to every block).
    leaders = structure.leaders  # plans[i] holds one entry per leading kind (one per part), in this order
    changes = [
        leaders[k].gated and any(p[k] is not None and len(p[k].keep_units) != p[k].units for p in plans)
        for k in range(len(leaders))
    ]
    if not any(changes):
        return []  # nothing with a projection to refit loses units (experts alone)
    was_training = model.training
    model.eval()
    can_bias = {
        kind.part: bias and changed and enable_bias(structure, kind.part)
        for kind, changed in zip(leaders, changes, strict=True)
    }
    captured = capture_block_inputs(structure, batches)
    hidden = [inputs.args[0] if inputs.args else inputs.kwargs["hidden_states"] for inputs in captured[0]]
    single = len(hidden) == 1
    log: list[dict[str, Any]] = []
    try:
        for index in tqdm(range(structure.num_layers), desc="reconstruction", unit="block", leave=False):
            layer, entry = structure.layers[index], {}
            for kind, sub in zip(leaders, plans[index], strict=True):
                # A kind without a gated mask module (experts, masked at the router) has no projection to refit.
                if sub is None or len(sub.keep_units) == sub.units or not kind.gated:
                    continue
                part, projection = kind.part, kind.mask_module(structure, index)
                width = projection.weight.shape[0 if isinstance(projection, Conv1D) else 1]
                recorder = InputRecorder(projection, width, stop=True)
                with torch.no_grad():
                    for b, inputs in enumerate(captured[index]):
                        # Alternate batches between fit and held out, so that held-out windows test the solve.
                        recorder.rows, recorder.route = inputs.rows, "split" if single else ("fit", "held_out")[b % 2]
                        with contextlib.suppress(StopForward):
                            _call_block(layer, inputs, hidden[b], device)
                recorder.remove()
                weight, unit_width = _weight_out_in(projection), width // sub.units
                fit_args = (recorder.fit, recorder.held_out, unit_width)
                fix = plan_fix(weight, *fit_args, sub.keep_units, can_bias[part], refit=refit)
                planned_error, reselected = fix.error_after, False
                if reselect and not sub.fixed:
                    fluctuation = recorder.fit.second_moment(centered=can_bias[part])  # a bias takes the mean
                    keep = select_units(weight, fluctuation, unit_width, sub.selection_groups(), sub.keep_units)
                    if keep != sorted(sub.keep_units):
                        other = plan_fix(weight, *fit_args, keep, can_bias[part], refit=refit)
                        if other.error_after < fix.error_after:  # on windows neither choice was made on
                            fix, reselected = other, True
                            sub.keep_units[:] = keep
                apply_fix(projection, fix, unit_width, keep_units=sub.keep_units)
                entry[part] = fix.summary() | {
                    "reselected": reselected,
                    "held_out_error_as_planned": round(planned_error, 6),  # after the fix, with the planned units
                }
            with torch.no_grad():
                hidden = [
                    _call_block(layer, inputs, hidden[b], device).detach().cpu()
                    for b, inputs in enumerate(captured[index])
                ]
            captured[index] = []  # free this block's arguments
            release_freed_memory()  # and what computing them allocated, before the next block
            log.append(entry)
    finally:
        model.train(was_training)
    return log
