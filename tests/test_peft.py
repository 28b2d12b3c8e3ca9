"""Pruning a peft LoRA model: adapters are sliced with their base layers, criteria read the adapted weights, and
the merged model is the compact one that saves and loads as usual."""

from __future__ import annotations

import copy
from pathlib import Path

import peft
import pytest
import torch
import transformers as T

import hf_prune
from hf_prune.importance import get_importance
from hf_prune.structure import ModelStructure

from .architectures import CASES_BY_NAME
from .test_callback import _args, _config, _dataset

# peft 0.21 reads a property that transformers 5 deprecates; the suite turns transformers' FutureWarnings into errors.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora_model(**lora: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = CASES_BY_NAME["llama"].build()
    settings: dict[str, object] = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": TARGETS}
    settings.update(lora)
    return peft.get_peft_model(model, peft.LoraConfig(**settings))


def _inputs() -> torch.Tensor:
    return torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(3))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=_inputs()).logits


def test_lora_prune_recover_merge_save_load_gives_the_same_model(tmp_path: Path) -> None:
    """Gradual pruning of a LoRA run (the adapters keep training after the schedule ends: the recovery), then
    merge_and_unload() -> save -> plain transformers load: the same outputs at every stage."""
    model = _lora_model()
    callback = hf_prune.PruningCallback(_config(importance="auto"))
    trainer = T.Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback])
    trainer.train()
    assert callback.config.importance == "fisher", "frozen base weights: 'auto' is Fisher, not Taylor"
    assert callback.report.layers_after == [{"heads": 4, "kv_heads": 1, "neurons": 48}] * 3

    attention = model.get_base_model().model.layers[0].self_attn
    hd = ModelStructure(model).head_dim
    assert attention.q_proj.lora_B["default"].weight.shape == (4 * hd, 4), "B rows follow the kept heads"
    assert attention.o_proj.lora_A["default"].weight.shape == (4, 4 * hd), "A columns follow the kept heads"
    mlp = model.get_base_model().model.layers[0].mlp
    assert mlp.down_proj.lora_A["default"].weight.shape == (4, 48)
    assert float(mlp.down_proj.lora_B["default"].weight.detach().abs().sum()) > 0, "the adapters trained"

    adapted = _logits(model)
    merged = model.merge_and_unload()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), adapted, atol=1e-5, rtol=1e-5)
    hf_prune.save_pretrained(merged, tmp_path / "merged")
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # uniform: plain transformers
    torch.testing.assert_close(_logits(loaded), adapted, atol=1e-5, rtol=1e-5)


def test_one_shot_pruning_of_a_lora_model_equals_pruning_the_merged_model() -> None:
    """Magnitude scores the adapted weights (base + s * B @ A), so the LoRA model and its merged copy are pruned
    alike, and merging after pruning gives what pruning after merging gives."""
    model = _lora_model(init_lora_weights=False)  # random B: the adapters change the weights
    merged = copy.deepcopy(model).merge_and_unload()
    base = copy.deepcopy(model).unload()  # the base weights alone
    scores = get_importance("magnitude").scores(ModelStructure(model))
    merged_scores = get_importance("magnitude").scores(ModelStructure(merged))
    for a, b in zip(scores["neurons"], merged_scores["neurons"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    base_scores = get_importance("magnitude").scores(ModelStructure(base))
    assert not torch.allclose(scores["neurons"][0], base_scores["neurons"][0]), "the adapters count"

    settings = dict(heads=0.25, neurons=0.25, importance="magnitude", gqa_mode="query_heads", reconstruct=False)
    with pytest.warns(UserWarning, match="magnitude scores destroy"):
        hf_prune.prune(model, **settings)
        hf_prune.prune(merged, **settings)
    torch.testing.assert_close(_logits(model.merge_and_unload()), _logits(merged), atol=1e-5, rtol=1e-5)


def test_taylor_on_frozen_base_weights_is_refused_with_the_criteria_that_work(tmp_path: Path) -> None:
    model = _lora_model()
    callback = hf_prune.PruningCallback(_config(importance="taylor"))
    trainer = T.Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback])
    with pytest.raises(ValueError, match=r"frozen.*importance='fisher'"):
        trainer.train()


def test_reconstruction_of_a_lora_model_is_refused() -> None:
    with pytest.raises(ValueError, match=r"LoRA adapters.*merge_and_unload"):
        hf_prune.prune(_lora_model(), heads=0.25, importance="magnitude", reconstruct=True)


def test_dora_adapters_are_refused_before_any_surgery() -> None:
    model = _lora_model(use_dora=True)
    before = _logits(model)
    with pytest.raises(TypeError, match=r"LoRA variant.*use_dora=False"):
        hf_prune.prune(model, heads=0.25, neurons=0.25, importance="magnitude")
    torch.testing.assert_close(_logits(model), before, atol=0, rtol=0)


def test_compaction_of_a_lora_model_is_refused_before_training(tmp_path: Path) -> None:
    model = _lora_model()
    callback = hf_prune.PruningCallback(_config(importance="fisher", compact=True))
    trainer = T.Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[callback])
    with pytest.raises(ValueError, match=r"compact=True with a peft model.*compact=False"):
        trainer.train()
