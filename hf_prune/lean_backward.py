"""A calibration backward pass that holds little more than the model: gradients only where a criterion reads them,
and block activations recomputed instead of stored.

Taylor scores read the gradients of the prunable projections' weights, nothing else. A plain ``loss.backward()``
also fills the embeddings' and norms' gradients and keeps every block's intermediate activations until the
backward reaches it. On SmolLM2-135M (one 512-token window at a time, one thread) the process peaked at 5.2x the
float32 model above the interpreter; with the other parameters frozen and each block checkpointed (its input kept,
its insides recomputed in the backward) at 3.3x, for the same gradients (``tests/test_lean_backward.py``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

from torch import nn
from torch.utils.checkpoint import checkpoint

from .structure import ModelStructure


def scored_weights(structure: ModelStructure) -> list[nn.Parameter]:
    """The weights of every block's prunable projections (q/k/v/o, up/gate/down...): what Taylor scores read."""
    roles = structure.roles()
    return [structure.module(i, role).weight for i in range(structure.num_layers) for role in roles]


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
