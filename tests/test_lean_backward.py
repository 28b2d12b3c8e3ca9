"""The lean calibration backward: the same Taylor scores as a plain backward, with only the scored weights'
gradients kept and every block recomputed, and the model left as it was."""

from __future__ import annotations

import pytest
import torch

import hf_prune
from hf_prune.importance import TaylorImportance
from hf_prune.lean_backward import causal_loss_in_chunks, chunked_loss_for
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
    # 2 batches, each block run in the forward and again in the backward, plus the chunked loss's check (the
    # model's own forward and the chunked one, without gradients) on the first batch
    assert len(calls) == 6
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


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_the_chunked_loss_is_the_models_loss_with_the_same_gradients(name: str) -> None:
    model = CASES_BY_NAME[name].build()
    batch = _batches(model, True)[0]
    batch["labels"][0, :4] = -100  # ignored positions count as in the model's own loss
    assert chunked_loss_for(model, batch) is causal_loss_in_chunks
    own = model(**batch).loss
    (own_grad,) = torch.autograd.grad(own, model.get_output_embeddings().weight)
    chunked = causal_loss_in_chunks(model, batch, chunk=5)  # 11 positions: chunks of 5, 5 and 1
    (chunked_grad,) = torch.autograd.grad(chunked, model.get_output_embeddings().weight)
    torch.testing.assert_close(chunked, own, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked_grad, own_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_the_chunked_loss_of_a_frozen_head_gives_the_blocks_the_same_gradients(name: str) -> None:
    """As in calibration, where the head is frozen: the hidden states' gradient is computed in the forward pass."""
    model = CASES_BY_NAME[name].build()
    model.get_output_embeddings().weight.requires_grad_(False)
    batch = _batches(model, True)[0]
    batch["labels"][0, :4] = -100
    block = ModelStructure(model).module(0, "down").weight
    own = model(**batch).loss
    (own_grad,) = torch.autograd.grad(own, block)
    chunked = causal_loss_in_chunks(model, batch, chunk=5)
    (chunked_grad,) = torch.autograd.grad(chunked, block)
    torch.testing.assert_close(chunked, own, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked_grad, own_grad, rtol=1e-4, atol=1e-7)


def test_a_head_that_is_more_than_a_linear_map_keeps_the_models_own_loss() -> None:
    model = CASES_BY_NAME["gemma2"].build()  # Gemma 2 soft-caps its final logits
    assert model.config.final_logit_softcapping
    assert chunked_loss_for(model, _batches(model, True)[0]) is None


def test_encoders_keep_their_own_loss() -> None:
    model = CASES_BY_NAME["bert"].build()
    assert chunked_loss_for(model, _batches(model, False)[0]) is None
