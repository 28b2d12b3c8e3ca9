"""The lean calibration backward: the same Taylor scores as a plain backward, with only the scored weights'
gradients kept and every block recomputed, and the model left as it was."""

from __future__ import annotations

import pytest
import torch

import hf_prune
from hf_prune.importance import TaylorImportance
from hf_prune.structure import ModelStructure

from .architectures import CASES_BY_NAME


def _batches(model: torch.nn.Module, decoder: bool) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(2):
        ids = torch.randint(3, model.config.vocab_size, (2, 12), generator=generator)
        labels = ids.clone() if decoder else torch.tensor([0, 1])
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return batches


def _scores(model: torch.nn.Module, batches: list, lean: bool, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    with monkeypatch.context() as patch:
        patch.setattr(TaylorImportance, "reads_weight_gradients_only", lean)
        scores = hf_prune.calibrate(model, batches, "taylor").scores(ModelStructure(model))
    return [*scores.heads, *scores.neurons]


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert", "gemma2"])
def test_lean_backward_gives_the_plain_backwards_scores(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES_BY_NAME[name]
    model = case.build()
    batches = _batches(model, case.decoder)
    plain = _scores(model, batches, False, monkeypatch)
    lean = _scores(model, batches, True, monkeypatch)
    for a, b in zip(plain, lean, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert max(float(s.abs().max()) for s in lean) > 0


def test_lean_backward_recomputes_blocks_and_freezes_the_rest() -> None:
    case = CASES_BY_NAME["llama"]
    model = case.build()
    structure = ModelStructure(model)
    calls = []
    structure.module(0, "down").register_forward_pre_hook(lambda module, args: calls.append(1))
    embedding_grads = []
    model.get_input_embeddings().weight.register_hook(lambda grad: embedding_grads.append(grad))
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    hf_prune.calibrate(model, _batches(model, True), "taylor")
    assert len(calls) == 4  # 2 batches, each block run in the forward and again in the backward
    assert embedding_grads == []  # frozen: no gradient computed for what Taylor does not read
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all("forward" not in layer.__dict__ for layer in structure.layers)  # the class's forward again
    assert all(p.grad is None for p in model.parameters())


def test_criteria_that_hook_into_blocks_run_them_once() -> None:
    model = CASES_BY_NAME["llama"].build()
    calls = []
    ModelStructure(model).module(0, "down").register_forward_pre_hook(lambda module, args: calls.append(1))
    hf_prune.calibrate(model, _batches(model, True), "fisher")
    assert len(calls) == 2
