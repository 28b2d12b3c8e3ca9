"""Importance criteria: turn a model's weights (and optionally gradients or activations) into one score per
unit of every scored kind (query heads, neurons: :mod:`hf_prune.kinds`) of every block. Higher means more important.

Criteria register themselves by name, so ``PruningConfig(importance="taylor")`` and the CLI find them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from transformers.utils import logging

from .kinds import UnitKind, get_kind
from .lean_backward import chunked_loss_for, lean_backward
from .memory import release_freed_memory
from .packed import pack_scores, unpack_scores
from .structure import ModelStructure, adapted_weight

if TYPE_CHECKING:
    from .masks import MaskSet

logger = logging.get_logger(__name__)

_REGISTRY: dict[str, type[Importance]] = {}


class Scores(dict[str, list[torch.Tensor]]):
    """Per scored kind (``"heads"``, ``"neurons"``...), one tensor per block with one score per unit.

    ``Scores({"heads": [...], "neurons": [...]})``; the positional ``Scores(heads, neurons)`` of earlier versions
    still builds the same thing (custom criteria return it).
    """

    def __init__(
        self,
        scores: dict[str, list[torch.Tensor]] | list[torch.Tensor] | None = None,
        neurons: list[torch.Tensor] | None = None,
        /,
    ) -> None:
        if isinstance(scores, list) or neurons is not None:
            heads = scores if isinstance(scores, list) else []
            scores = {"heads": list(heads), "neurons": list(neurons or [])}
        super().__init__(scores or {})

    @property
    def heads(self) -> list[torch.Tensor]:
        return self["heads"]

    @property
    def neurons(self) -> list[torch.Tensor]:
        return self["neurons"]

    def clone(self) -> Scores:
        return Scores({kind: [t.clone() for t in tensors] for kind, tensors in self.items()})


class Importance:
    """Base class. Stateless criteria only implement :meth:`scores`; accumulating ones also implement
    :meth:`attach`, :meth:`accumulate` and :meth:`state_dict` (so a resumed run keeps its statistics)."""

    name: str = ""
    #: True when the criterion needs ``accumulate()`` calls (after backward) before it can score.
    accumulates: bool = False
    #: Loss scale still on the gradients that the next ``accumulate()`` reads (see :meth:`set_loss_scale`).
    loss_scale: float = 1.0
    parameter_gradient_scale: float = 1.0

    def set_loss_scale(self, loss: float = 1.0, parameters: float | None = None) -> None:
        """Mixed precision: the loss was multiplied by ``loss`` before backward (an fp16 ``GradScaler``).

        Gradients of anything outside the optimizer (the mask gates of fisher) carry that factor; the
        parameters' gradients carry ``parameters`` (1 once the scaler unscaled them, as gradient clipping
        does; ``loss`` by default). Criteria divide these out, so scores do not depend on the loss scale.
        PruningCallback sets both before every accumulate.
        """
        for value in (loss, parameters):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"a loss scale must be a positive finite number, got {value!r}.")
        self.loss_scale = float(loss)
        self.parameter_gradient_scale = float(loss if parameters is None else parameters)

    def attach(self, structure: ModelStructure, masks: MaskSet | None = None) -> None:
        """Start observing the model (hooks etc.). With ``masks``, the kinds of :meth:`applies_masks` are masked
        by this criterion's own hooks (the caller attaches ``masks`` for the other kinds only)."""

    def applies_masks(self, structure: ModelStructure) -> list[str]:
        """The kinds whose masks :meth:`attach` applies when given them: a criterion whose hooks multiply a kind's
        mask-module input anyway (the gates of fisher) folds the mask into that multiply, one pass over the
        activation instead of two."""
        return []

    def detach(self) -> None:
        """Stop observing the model."""

    def accumulate(self, structure: ModelStructure) -> None:
        """Fold the current step's gradients/activations into the running statistics."""

    def scores(self, structure: ModelStructure) -> Scores:
        raise NotImplementedError

    @classmethod
    def scores_kind(cls, kind: UnitKind) -> bool:
        """Whether this criterion scores units of ``kind`` (its :meth:`scores` then has an entry for it)."""
        return True

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    def keep_units(self, keep: dict[str, list[torch.Tensor]]) -> None:
        """Compaction removed units from the model: statistics follow the kept ones (``keep[kind][block]``, the
        positions kept in the numbering the statistics had)."""


def register_importance(name: str) -> Callable[[type[Importance]], type[Importance]]:
    """Class decorator that makes a criterion available by ``name``."""

    def wrap(cls: type[Importance]) -> type[Importance]:
        if name in _REGISTRY:
            raise ValueError(f"importance '{name}' is already registered by {_REGISTRY[name].__name__}.")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_importances() -> list[str]:
    return sorted(_REGISTRY)


def importances_for(kind: UnitKind) -> list[str]:
    """The registered criteria that score units of ``kind``."""
    return [name for name in available_importances() if _REGISTRY[name].scores_kind(kind)]


def gated_leaders(structure: ModelStructure) -> list[UnitKind]:
    """The leading kinds whose mask module's input holds one slice per unit: what input-gate criteria score."""
    return [kind for kind in structure.leaders if kind.gated]


def get_importance(name: str | Importance, **kwargs: object) -> Importance:
    """An importance criterion by name (or an instance, returned as is)."""
    if isinstance(name, Importance):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown importance '{name}'. Available: {', '.join(available_importances())}.")
    return _REGISTRY[name](**kwargs)


def combine_head_scores(structure: ModelStructure, index: int, head: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Per-query-head score: its own q/o part plus an equal share of its KV head's k/v part."""
    return get_kind("heads").combine({"heads": head, "kv_heads": kv}, structure.shape(index).counts)


def weight_scores(
    structure: ModelStructure,
    values: Callable[[torch.nn.Module], torch.Tensor | None],
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> Scores:
    """``transform`` of :meth:`ModelStructure.unit_scores` of ``values``, for every block and scored kind."""
    per_block = [structure.unit_scores(i, values) for i in range(structure.num_layers)]
    return Scores({kind.name: [transform(b[kind.name]) for b in per_block] for kind in structure.leaders})


@register_importance("magnitude")
class MagnitudeImportance(Importance):
    """L2 norm of every weight that belongs to the group (rows of q/k/v/up/gate, columns of o/down)."""

    def scores(self, structure: ModelStructure) -> Scores:
        with torch.no_grad():
            return weight_scores(structure, lambda m: adapted_weight(m) ** 2, torch.sqrt)


@register_importance("random")
class RandomImportance(Importance):
    """Uniform random scores: the baseline every criterion should beat."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def scores(self, structure: ModelStructure) -> Scores:
        shapes = structure.shapes()
        return Scores(
            {k.name: [torch.rand(s[k.name], generator=self.generator) for s in shapes] for k in structure.leaders}
        )


class _Accumulating(Importance):
    """Shared machinery of criteria that fold one statistic per group into an exponential moving average."""

    accumulates = True
    #: False when forward passes alone are enough (no backward needed during calibration).
    needs_gradients = True
    #: True when calibration should score once, from the gradient of the whole calibration loss (gradients add
    #: up over the batches), instead of averaging a per-batch statistic.
    scores_summed_gradient = False

    def __init__(self, beta: float | None = 0.9) -> None:
        if beta is not None and not 0.0 <= beta < 1.0:
            raise ValueError(f"the moving-average beta must be in [0, 1) (or None for a plain mean), got {beta!r}.")
        self.beta = beta
        self.values: Scores | None = None  # the running statistic, per scored kind and block
        self.updates = 0
        self.skipped = 0  # steps left out because their statistics were not finite

    def _fold(self, values: dict[str, list[torch.Tensor]]) -> None:
        if not all(bool(torch.isfinite(t).all()) for tensors in values.values() for t in tensors):
            # An overflowing fp16 step (GradScaler then skips the optimizer step too) or a diverging one: one
            # inf/NaN would stay in the moving average for good.
            self.skipped += 1
            log = logger.warning if self.skipped == 1 else logger.debug
            log(
                "importance '%s': a step with inf/NaN statistics was left out (%d so far); expected now and then "
                "under fp16 loss scaling",
                self.name,
                self.skipped,
            )
            return
        if self.values is None or _shapes(self.values) != _shapes(values):
            self.values = Scores(values).clone()
        else:
            # beta=None: plain running mean (calibration); otherwise an exponential moving average (training).
            b = self.updates / (self.updates + 1) if self.beta is None else self.beta
            self.values = Scores(
                {
                    kind: [b * old + (1 - b) * new for old, new in zip(self.values[kind], values[kind], strict=True)]
                    for kind in self.values
                }
            )
        self.updates += 1

    def scores(self, structure: ModelStructure) -> Scores:
        if self.values is None:
            raise RuntimeError(
                f"importance '{self.name}' has no statistics yet: it needs at least one training or calibration "
                "step (forward and backward) before it can score."
            )
        return self.values.clone()

    def state_dict(self) -> dict:
        """``{"updates": n, kind: [packed scores per block]...}`` (the kind keys are "heads" and "neurons" today)."""
        if self.values is None:
            return {"updates": 0}
        return {"updates": self.updates, **{kind: [pack_scores(t) for t in ts] for kind, ts in self.values.items()}}

    def keep_units(self, keep: dict[str, list[torch.Tensor]]) -> None:
        if self.values is not None:
            self.values = Scores(
                {
                    kind: [v[index] for v, index in zip(values, keep[kind], strict=True)] if kind in keep else values
                    for kind, values in self.values.items()
                }
            )

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state.get("updates", 0))
        kinds = [k for k in state if k != "updates"]
        if kinds:  # packed float32 (hf_prune.packed), or the plain lists older checkpoints hold
            self.values = Scores({kind: [unpack_scores(t) for t in state[kind]] for kind in kinds})


def _shapes(values: dict[str, list[torch.Tensor]]) -> dict[str, list[int]]:
    return {kind: [t.numel() for t in tensors] for kind, tensors in values.items()}


@register_importance("taylor")
class TaylorImportance(_Accumulating):
    """First-order Taylor estimate of the loss change when a group is removed (Molchanov et al. 2019):
    ``sum |w * dL/dw|`` over the group's weights.

    During training the per-step values are averaged with an exponential moving average. :func:`calibrate`
    scores once from the gradient of the whole calibration loss instead: with per-batch ``|w * g|`` the
    gradient noise of each batch adds up rather than cancelling, and on SmolLM2-135M that choice made
    one-shot perplexity at 20% fewer block parameters 4.5x worse (benchmarks/README.md).
    """

    scores_summed_gradient = True
    #: Reads only the prunable weights' gradients: calibration can freeze the rest and recompute activations.
    reads_weight_gradients_only = True

    def accumulate(self, structure: ModelStructure) -> None:
        def values(module: torch.nn.Module) -> torch.Tensor | None:
            grad = module.weight.grad
            # dL/dW of a LoRA layer's base weight is dL/dW' of the adapted one (W' = W + s B A): |W' dL/dW'|.
            return None if grad is None else (adapted_weight(module) * grad).abs()

        scale = self.parameter_gradient_scale
        with torch.no_grad():
            self._fold(weight_scores(structure, values, lambda t: t / scale))


class _GateHooks:
    """Multiply the input of every mask module (attention output / down projection) by a gate of ones, per unit of
    each scored kind. The gates change nothing in the forward pass; their gradients are the mask gradients
    ``dL/dm`` of Michel et al. (2019) and Kwon et al. (2022), and the hooks also see activations."""

    def __init__(
        self,
        structure: ModelStructure,
        track_gradients: bool,
        track_activations: bool = True,
        masks: MaskSet | None = None,
    ) -> None:
        self.structure = structure
        self.track_gradients = track_gradients
        self.track_activations = track_activations
        #: Masks applied in the gate's multiply (the mask hooks of these kinds are then not installed).
        self.masks = masks
        self.gates: dict[tuple[str, int], torch.Tensor] = {}
        self.activations: dict[tuple[str, int], torch.Tensor] = {}
        self.handles: list = []
        for i in range(structure.num_layers):
            for kind in gated_leaders(structure):
                if not structure.has(i, kind):
                    continue
                module = kind.mask_module(structure, i)
                self.handles.append(module.register_forward_pre_hook(self._hook(kind.name, i)))

    def _hook(self, kind: str, index: int):
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
            hidden = args[0]
            keep = None if self.masks is None else self.masks.multiplier(kind, index, hidden)

            def masked() -> tuple[torch.Tensor, ...] | None:  # the input as the mask hook would leave it
                return None if keep is None else (hidden * keep, *args[1:])

            if not torch.is_grad_enabled():
                return masked()  # evaluation (no_grad/inference_mode) does not count
            width = get_kind(kind).unit_width(self.structure)
            groups = hidden.shape[-1] // width
            key = (kind, index)
            if self.track_activations:
                with torch.no_grad():
                    grouped = hidden.detach().float().reshape(-1, groups, width)
                    magnitude = grouped.norm(dim=-1).mean(0).cpu()  # mean activation norm per group
                    if keep is not None:  # a masked unit's activation is zero
                        magnitude = magnitude * keep.detach().float().reshape(groups, width)[:, 0].cpu()
                self.activations[key] = self.activations.get(key, 0) + magnitude
            if not (self.track_gradients and hidden.requires_grad):
                return masked()
            gate = self.gates.get(key)
            if gate is None or gate.numel() != groups or gate.device != hidden.device:
                gate = torch.ones(groups, device=hidden.device, dtype=hidden.dtype, requires_grad=True)
                self.gates[key] = gate
            factor = gate[:, None] if keep is None else gate[:, None] * keep.reshape(groups, width)
            return ((hidden.reshape(*hidden.shape[:-1], groups, width) * factor).reshape(hidden.shape), *args[1:])

        return hook

    def pop_gradients(self) -> dict[tuple[str, int], torch.Tensor]:
        grads = {}
        for key, gate in self.gates.items():
            if gate.grad is not None:
                grads[key] = gate.grad.detach().float().cpu()
                gate.grad = None
        return grads

    def pop_activations(self) -> dict[tuple[str, int], torch.Tensor]:
        activations, self.activations = self.activations, {}
        return activations

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class _HookedImportance(_Accumulating):
    track_gradients = True
    track_activations = False  # mean activation norms per unit (a forward reduction and a device sync per module)

    def __init__(self, beta: float | None = 0.9) -> None:
        super().__init__(beta)
        self.hooks: _GateHooks | None = None

    @classmethod
    def scores_kind(cls, kind: UnitKind) -> bool:
        return kind.gated  # it reads the gated input of the kind's mask module

    def attach(self, structure: ModelStructure, masks: MaskSet | None = None) -> None:
        if self.hooks is None:
            self.hooks = _GateHooks(structure, self.track_gradients, self.track_activations, masks)
        else:
            self.hooks.masks = masks

    def applies_masks(self, structure: ModelStructure) -> list[str]:
        return [kind.name for kind in gated_leaders(structure)]

    def detach(self) -> None:
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None

    def _collect(self, structure: ModelStructure, values: dict[tuple[str, int], torch.Tensor]) -> None:
        shapes = structure.shapes()
        if not values:
            return
        self._fold(
            {
                k.name: [values.get((k.name, i), torch.zeros(s[k.name])) for i, s in enumerate(shapes)]
                for k in gated_leaders(structure)
            }
        )


@register_importance("fisher")
class FisherImportance(_HookedImportance):
    """Empirical Fisher information of a per-group mask: ``(dL/dm)^2`` with ``m`` a gate of ones on each head's
    output and each neuron (Kwon et al. 2022; Michel et al. 2019 use ``|dL/dm|``), averaged over steps."""

    def accumulate(self, structure: ModelStructure) -> None:
        if self.hooks is None:
            raise RuntimeError("call attach(structure) before training so the mask gates are in the graph.")
        self.hooks.pop_activations()
        scale = self.loss_scale  # the gates are not parameters: no scaler ever unscales their gradients
        self._collect(structure, {k: (g / scale) ** 2 for k, g in self.hooks.pop_gradients().items()})


@register_importance("activation")
class ActivationImportance(_HookedImportance):
    """Mean L2 norm of each head's output and each neuron's activation, from forward hooks."""

    track_gradients = False
    track_activations = True
    needs_gradients = False

    def accumulate(self, structure: ModelStructure) -> None:
        if self.hooks is None:
            raise RuntimeError("call attach(structure) before running batches so activations are recorded.")
        self._collect(structure, self.hooks.pop_activations())


def calibrate(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    importance: str | Importance = "fisher",
    recipe: str = "auto",
    max_batches: int | None = None,
) -> Importance:
    """Fit an accumulating criterion on calibration batches, for one-shot pruning without training
    (the post-training setting of Kwon et al. 2022). Batches are model inputs; those for a loss need labels.

    Example::

        fisher = hf_prune.calibrate(model, batches, "fisher")
        hf_prune.prune(model, heads=0.3, neurons=0.3, importance=fisher, ranking="global")
    """
    if isinstance(importance, str):
        accumulating = get_importance(importance).accumulates
        criterion = get_importance(importance, **({"beta": None} if accumulating else {}))  # plain mean
    else:
        criterion = importance
    if not criterion.accumulates:
        return criterion
    structure = ModelStructure(model, recipe)
    device = next(model.parameters()).device
    summed = getattr(criterion, "scores_summed_gradient", False)
    was_training = model.training
    model.eval()  # no dropout: scores of the model as it will be used
    model.zero_grad(set_to_none=True)
    criterion.attach(structure)
    no_cache = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
    lean = getattr(criterion, "reads_weight_gradients_only", False)
    try:
        with lean_backward(structure, lean):
            count, chunked_loss = 0, None
            for batch in batches:
                if max_batches is not None and count >= max_batches:
                    break
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                if lean and count == 0 and no_cache:
                    chunked_loss = chunked_loss_for(model, batch)
                if chunked_loss is not None:
                    loss = chunked_loss(model, batch)  # the same loss, without the sequence's whole logits
                else:
                    # No KV cache: nothing reads it, and recomputed blocks would fill it twice.
                    output = model(**{**batch, **no_cache})
                    loss = getattr(output, "loss", None)  # base models (no head) return none
                    del output  # the logits: the loss keeps what its backward needs
                if getattr(criterion, "needs_gradients", True):
                    if loss is None:
                        raise ValueError(f"importance '{criterion.name}' needs a loss: give the batches labels.")
                    loss.backward()
                    del loss
                release_freed_memory()  # this window's activations, before the next one allocates its own
                count += 1
                if not summed:
                    criterion.accumulate(structure)
                    model.zero_grad(set_to_none=True)
            if summed and count:
                criterion.accumulate(structure)  # once, from the gradients summed over every batch
    finally:
        model.zero_grad(set_to_none=True)
        criterion.detach()
        model.train(was_training)
    return criterion
