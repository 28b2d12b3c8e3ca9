"""Tiny random models of every shipped architecture: the test matrix (one row per recipe/case).

Adding an architecture = one recipe file + one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers as T

# prune() settings for tests of surgery and structure: no calibration data, no reconstruction (which changes
# weights and adds biases), so masked == pruned and the closed-form counts hold.
STRUCTURE_ONLY = {"importance": "magnitude", "reconstruct": False}


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], torch.nn.Module]
    decoder: bool
    # Which projections carry biases (for the closed-form parameter count).
    q_bias: bool
    kv_bias: bool
    mlp_in_projections: int  # up (+ gate)
    mlp_in_bias: bool
    # A plain transformers checkpoint is promised when every layer keeps the same counts.
    vanilla_when_uniform: bool


def _llama_like(config_cls: type, model_cls: type, **extra: object) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        defaults = dict(
            vocab_size=96,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=64,
        )
        defaults.update(extra)
        return model_cls(config_cls(**defaults)).eval()

    return build


def _bert_like(config_cls: type, model_cls: type) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        config = config_cls(
            vocab_size=96,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=8,
            max_position_embeddings=64,
            num_labels=3,
        )
        return model_cls(config).eval()

    return build


def _distilbert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = T.DistilBertConfig(
        vocab_size=96, dim=64, hidden_dim=96, n_layers=3, n_heads=8, max_position_embeddings=64, num_labels=3
    )
    return T.DistilBertForSequenceClassification(config).eval()


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = T.GPT2Config(vocab_size=96, n_embd=64, n_layer=3, n_head=8, n_positions=64, n_inner=96)
    return T.GPT2LMHeadModel(config).eval()


def _phi3() -> torch.nn.Module:
    torch.manual_seed(0)
    config = T.Phi3Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return T.Phi3ForCausalLM(config).eval()


CASES = [
    Case("bert", _bert_like(T.BertConfig, T.BertForSequenceClassification), False, True, True, 1, True, False),
    Case("roberta", _bert_like(T.RobertaConfig, T.RobertaForSequenceClassification), False, True, True, 1, True, False),
    Case("distilbert", _distilbert, False, True, True, 1, True, False),
    Case("gpt2", _gpt2, True, True, True, 1, True, False),
    Case("llama", _llama_like(T.LlamaConfig, T.LlamaForCausalLM), True, False, False, 2, False, True),
    Case("mistral", _llama_like(T.MistralConfig, T.MistralForCausalLM), True, False, False, 2, False, True),
    Case("qwen2", _llama_like(T.Qwen2Config, T.Qwen2ForCausalLM), True, True, True, 2, False, True),
    Case("qwen3", _llama_like(T.Qwen3Config, T.Qwen3ForCausalLM), True, False, False, 2, False, True),
    Case(
        "gemma3",
        _llama_like(T.Gemma3TextConfig, T.Gemma3ForCausalLM, head_dim=32, sliding_window=8),
        True,
        False,
        False,
        2,
        False,
        True,
    ),
    Case(
        "gemma3_mqa",
        _llama_like(T.Gemma3TextConfig, T.Gemma3ForCausalLM, num_key_value_heads=1, head_dim=24, sliding_window=8),
        True,
        False,
        False,
        2,
        False,
        True,
    ),
    Case("phi3", _phi3, True, False, False, 2, False, True),
]

CASES_BY_NAME = {case.name: case for case in CASES}
