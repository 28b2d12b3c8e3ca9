"""Shared pieces of the MoE expert tests (tests/test_experts*.py): settings, inputs and a masked twin."""

from __future__ import annotations

import torch

from .architectures import MoECase
from .test_architectures import _pruned_with_masked_twin

ATOL = 1e-5
# Random scores (seeded): no calibration, no warning about magnitude on decoders, nothing reconstructed.
QUICK = {"importance": "random", "reconstruct": False}
TOP_K = 2


def moe_ids(batch: int = 2, length: int = 9) -> torch.Tensor:
    return torch.randint(3, 96, (batch, length), generator=torch.Generator().manual_seed(1))


def moe_targets(case: MoECase) -> dict[str, float]:
    """A third of the experts (6 -> 4 per block), and half the heads where the recipe removes heads."""
    return {"experts": 0.34, **({"heads": 0.5} if case.prunes_heads else {})}


def prune_with_masked_twin(case: MoECase, **settings: object) -> tuple[torch.nn.Module, torch.nn.Module, object]:
    """(pruned model, an unpruned copy masked with the same plan, the report)."""
    return _pruned_with_masked_twin(case.build, **{**QUICK, **settings})
