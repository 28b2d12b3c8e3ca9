"""FSDP2 (``torch.distributed.fsdp.fully_shard``): reading sharded weights, and gathering them for the final surgery.

Under FSDP2 every parameter is a ``DTensor`` holding one shard (dim 0) per process; the forward pass all-gathers a
block's weights, so masks (hooks on activations) work unchanged. Two things need this module:

- scores sum a weight-shaped value over each unit. The sum is taken on the shards first and only the per-unit
  vector is gathered (:func:`full`), so a step exchanges one number per unit, not a copy of the weights;
- the end of training removes units from whole weights. :func:`gather_fsdp2` turns the sharded model back into a
  plain one in place (every process then holds the full weights), so that surgery, the report and
  ``trainer.save_model()`` work as in a single process.

FSDP1 (flat parameters) and DeepSpeed ZeRO-3 are refused by the callback instead: their placeholders carry no
shapes to read.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a ``DTensor`` shard (FSDP2)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def full(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a plain tensor: a ``DTensor`` is gathered (a collective: every process must call it)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def gather_fsdp2(model: nn.Module) -> None:
    """Make a ``fully_shard``-ed ``model`` a plain module again, in place, with whole weights on every process.

    Every process must call it (the weights are all-gathered). Tied parameters stay tied. FSDP2's forward hooks
    are removed and each module gets its original class back, so the module no longer gathers or frees weights
    around its forward; the optimizer's references to the old shards are dropped with them (training is over).
    """
    from torch.distributed.fsdp import FSDPModule

    gathered: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if not isinstance(parameter, DTensor):
                continue
            if id(parameter) not in gathered:
                whole = parameter.full_tensor().detach().clone()
                gathered[id(parameter)] = nn.Parameter(whole, requires_grad=parameter.requires_grad)
            module._parameters[name] = gathered[id(parameter)]
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # torch 2.13 has no public "undo fully_shard": its state holds the two forward-hook handles it
            # registered, and the module's class is FSDP<Original> with the original at index 2 of its MRO.
            state = module._get_fsdp_state()
            state._pre_forward_hook_handle.remove()
            state._post_forward_hook_handle.remove()
            module.__class__ = type(module).__mro__[type(module)._orig_cls_mro_index]
