"""A calibration backward pass that holds little more than the model: gradients only where a criterion reads them,
and block activations recomputed instead of stored.

Taylor scores read the gradients of the prunable projections' weights, nothing else. A plain ``loss.backward()``
also fills the embeddings' and norms' gradients and keeps every block's intermediate activations until the
backward reaches it. On SmolLM2-135M (one 512-token window at a time, one thread) the process peaked at 5.2x the
float32 model above the interpreter; with the other parameters frozen and each block checkpointed (its input kept,
its insides recomputed in the backward) at 3.3x, for the same gradients (``tests/test_lean_backward.py``).

A causal LM's logits are the other large tensor: one 512-token window of SmolLM2's 49,152-token vocabulary is
100 MB of float32 logits, and the cross-entropy's softmax and gradient as much again each.
:func:`causal_loss_in_chunks` computes the same loss from the last hidden state, a few positions of logits at a time,
recomputed in the backward.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .structure import ModelStructure


def scored_weights(structure: ModelStructure) -> list[nn.Parameter]:
    """The weights of every block's prunable projections (q/k/v/o, up/gate/down...): what Taylor scores read."""
    roles = structure.roles()
    return [
        structure.module(i, role).weight
        for i in range(structure.num_layers)
        for role in roles
        if structure.present(i, role)
    ]


@contextlib.contextmanager
def gradients_only_for(model: nn.Module, keep: list[nn.Parameter]) -> Iterator[None]:
    """Turn off ``requires_grad`` on every parameter of ``model`` not in ``keep``; restored on exit."""
    kept = {id(p) for p in keep}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in kept]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


@contextlib.contextmanager
def checkpointed(layers: nn.ModuleList) -> Iterator[None]:
    """Run each block under activation checkpointing (non-reentrant), whatever the model's own settings and its
    train/eval mode (transformers' ``gradient_checkpointing_enable`` acts only in train mode, which would turn
    dropout on). The blocks' forwards are restored on exit."""
    patched = []
    for layer in layers:
        original = layer.forward
        own = layer.__dict__.get("forward")  # a forward already patched on the instance (accelerate hooks do)

        @functools.wraps(original)
        def forward(*args, _original=original, **kwargs):
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        layer.forward = forward
        patched.append((layer, own))
    try:
        yield
    finally:
        for layer, own in patched:
            if own is None:
                del layer.forward  # back to the class's forward
            else:
                layer.forward = own


@contextlib.contextmanager
def lean_backward(structure: ModelStructure, weights_only: bool) -> Iterator[None]:
    """The calibration context for a criterion: frozen non-scored parameters and checkpointed blocks when it reads
    only the prunable weights' gradients (``weights_only``); otherwise nothing changes (criteria that hook into the
    blocks, such as Fisher's mask gates, would see each recomputed block twice)."""
    if not weights_only:
        yield
        return
    with gradients_only_for(structure.model, scored_weights(structure)), checkpointed(structure.layers):
        yield


#: Positions of logits alive at a time in :func:`causal_loss_in_chunks`.
LOSS_CHUNK = 128
IGNORE_INDEX = -100


def _chunk_loss(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def causal_loss_in_chunks(model: nn.Module, batch: Mapping[str, Any], chunk: int = LOSS_CHUNK) -> torch.Tensor:
    """The mean next-token cross-entropy of ``batch`` (its ``labels``, -100 ignored), as a causal LM's own loss,
    without holding the whole sequence's logits: the output embedding and the loss run ``chunk`` positions at a
    time and are recomputed in the backward."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.base_model(**inputs, use_cache=False).last_hidden_state
    return _loss_of_hidden(model.get_output_embeddings(), hidden, batch["labels"], chunk)


class _FrozenHeadLoss(torch.autograd.Function):
    """Summed cross-entropy of a frozen linear head, ``chunk`` positions at a time. The head takes no gradient, so
    the hidden states' gradient ``(softmax - onehot) W`` is computed chunk by chunk in the forward pass: neither the
    whole logits nor a recomputation of the head (what checkpointing each chunk costs) is needed in the backward."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.zeros_like(hidden)
        for start in range(0, labels.shape[1], chunk):
            piece, targets = hidden[:, start : start + chunk], labels[:, start : start + chunk].flatten()
            log_p = nn.functional.linear(piece, weight, bias).float().flatten(0, 1).log_softmax(-1)
            valid = targets != IGNORE_INDEX
            rows = valid.nonzero().squeeze(1)
            total -= log_p[rows, targets[rows]].sum()
            slope = log_p.exp_()
            slope[rows, targets[rows]] -= 1
            slope[~valid] = 0
            grad[:, start : start + chunk] = (slope @ weight.float()).view_as(piece).to(grad.dtype)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None, None


def _frozen_linear(head: nn.Module) -> bool:
    return (
        type(head) is nn.Linear and not head.weight.requires_grad and (head.bias is None or not head.bias.requires_grad)
    )


def _loss_of_hidden(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    hidden, labels = hidden[:, :-1], labels[:, 1:].to(hidden.device)
    if _frozen_linear(head):  # the lean backward freezes the head: Taylor never scores it
        total = _FrozenHeadLoss.apply(hidden, head.weight, head.bias, labels, chunk)
        return total / (labels != IGNORE_INDEX).sum().clamp(min=1)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, labels.shape[1], chunk):
        piece = (hidden[:, start : start + chunk], labels[:, start : start + chunk])
        total = total + checkpoint(_chunk_loss, head, *piece, use_reentrant=False)
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def chunked_loss_for(model: nn.Module, batch: Mapping[str, Any]) -> Callable[..., torch.Tensor] | None:
    """:func:`causal_loss_in_chunks` if it computes ``model``'s own logits and loss on ``batch`` (checked once,
    without gradients), else ``None``. The check, not a list of architectures, decides: a model whose head does
    more than a linear map of the last hidden state (logit soft-capping, scaling) fails it and keeps its own
    forward."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or "labels" not in batch or getattr(model, "base_model", model) is model:
        return None
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        try:
            own = model(**batch, use_cache=False)
            hidden = model.base_model(**inputs, use_cache=False).last_hidden_state
        except (TypeError, AttributeError, ValueError):  # a base model that takes other inputs or returns no state
            return None
        logits = getattr(own, "logits", None)
        if own.loss is None or logits is None or logits.shape[:-1] != hidden.shape[:-1]:
            return None
        # The same linear map of the same hidden state gives the same logits to rounding; a soft-cap does not.
        if not torch.allclose(logits.float(), head(hidden).float(), rtol=1e-6, atol=1e-6):
            return None
        chunked = _loss_of_hidden(head, hidden, batch["labels"], LOSS_CHUNK)
    return causal_loss_in_chunks if torch.allclose(own.loss.float(), chunked, rtol=1e-4, atol=1e-6) else None
