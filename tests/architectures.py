"""Tiny random models of every shipped architecture: the test matrix (one row per recipe/case).

Two kinds of rows:
- ``CASES``: small synthetic dimensions (8 heads, 96 neurons, 3 layers) that unit tests elsewhere count on;
- ``PUBLISHED``: each family's smallest real checkpoint, from its published config. Head counts, KV heads, head
  size and hidden size are the real ones (Phi-3 and Mistral are scaled down keeping the head size and the ratios),
  so that divisibility, GQA layouts and config validators behave as on the real model; only the layers (2), the
  vocabulary and the MLP width (which nothing divides) are shrunk, to keep each case at a fraction of a second.

Adding an architecture = one recipe file + one row in each list.
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
    # A batch of 2 inputs for models that do not read token ids (vision); unset: token ids.
    inputs: Callable[[], dict[str, torch.Tensor]] | None = None


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


def _modernbert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = T.ModernBertConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=8,
        max_position_embeddings=64,
        local_attention=8,
        global_attn_every_n_layers=2,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
    )
    return T.ModernBertForSequenceClassification(config).eval()


def _images(size: int) -> Callable[[], dict[str, torch.Tensor]]:
    def inputs() -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))}

    return inputs


def _vision(config_cls: type, model_cls: type, size: int, **fields: object) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return model_cls(config_cls(image_size=size, num_channels=3, num_labels=3, **fields)).eval()

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
    Case(
        "gemma2",
        _llama_like(T.Gemma2Config, T.Gemma2ForCausalLM, head_dim=32, sliding_window=8, query_pre_attn_scalar=32),
        True,
        False,
        False,
        2,
        False,
        True,
    ),
    Case("modernbert", _modernbert, False, False, False, 2, False, False),
    Case(
        "vit",
        _vision(
            T.ViTConfig,
            T.ViTForImageClassification,
            16,
            patch_size=4,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=8,
            intermediate_size=96,
        ),
        False,
        True,
        True,
        1,
        True,
        True,
        _images(16),
    ),
]


def _published(
    config_cls: type, model_cls: type, layers: str = "num_hidden_layers", **fields: object
) -> Callable[[], torch.nn.Module]:
    """A published config with 2 layers and a 128-token vocabulary (``layers``: the config's name for the count)."""

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return model_cls(config_cls(**{layers: 2, "vocab_size": 128, **fields})).eval()

    return build


_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_ROBERTA_IDS = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "max_position_embeddings": 66}


def _decoder(name: str, config_cls: type, model_cls: type, qkv_bias: bool = False, **fields: object) -> Case:
    """A gated-MLP decoder (Llama family): vanilla-loadable when uniform; Qwen2 has q/k/v biases."""
    build = _published(config_cls, model_cls, max_position_embeddings=64, **_IDS, **fields)
    return Case(name, build, True, qkv_bias, qkv_bias, 2, False, True)


def _encoder(name: str, config_cls: type, model_cls: type, **fields: object) -> Case:
    """A BERT-like encoder classifier: biases everywhere, head size derived from hidden/heads."""
    return Case(name, _published(config_cls, model_cls, num_labels=3, **fields), False, True, True, 1, True, False)


# A table, one row per family with its published dimensions: kept dense rather than one field per line.
# fmt: off
PUBLISHED = [
    # google/gemma-3-270m: 640 hidden, 4 query heads, 1 KV head (MQA), head_dim 256 (4 x 256 != 640), FFN 2048.
    _decoder(
        "gemma3-270m", T.Gemma3TextConfig, T.Gemma3ForCausalLM, hidden_size=640, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, intermediate_size=256, query_pre_attn_scalar=256, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
    ),
    # HuggingFaceTB/SmolLM2-135M: 576 hidden, 9 query heads in 3 KV groups, head_dim 64, FFN 1536, tied embeddings.
    _decoder(
        "smollm2-135m", T.LlamaConfig, T.LlamaForCausalLM, hidden_size=576, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, intermediate_size=192, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    ),
    # Qwen/Qwen2.5-0.5B: 896 hidden, 14 query heads in 2 KV groups, head_dim 64, FFN 4864, q/k/v biases.
    _decoder(
        "qwen2.5-0.5b", T.Qwen2Config, T.Qwen2ForCausalLM, qkv_bias=True, hidden_size=896, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=608, tie_word_embeddings=True,
    ),
    # Qwen/Qwen3-0.6B: 1024 hidden, 16 query heads in 8 KV groups, head_dim 128 (16 x 128 != 1024), q/k norms.
    _decoder(
        "qwen3-0.6b", T.Qwen3Config, T.Qwen3ForCausalLM, hidden_size=1024, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, intermediate_size=384, tie_word_embeddings=True,
    ),
    # microsoft/Phi-3-mini-4k-instruct (3072 hidden, 32 heads of 96, MHA, fused qkv): scaled to 8 heads of 96.
    _decoder(
        "phi3-mini", T.Phi3Config, T.Phi3ForCausalLM, hidden_size=768, num_attention_heads=8, num_key_value_heads=8,
        intermediate_size=256,
    ),
    # mistralai/Mistral-7B-v0.1 (4096 hidden, 32 heads of 128 in 8 KV groups): scaled to 8 heads of 128 in 2 groups.
    _decoder(
        "mistral-7b", T.MistralConfig, T.MistralForCausalLM, hidden_size=1024, num_attention_heads=8,
        num_key_value_heads=2, head_dim=128, intermediate_size=448,
    ),
    # sentence-transformers/all-MiniLM-L6-v2 (BERT): 384 hidden, 12 heads of 32, FFN 1536.
    _encoder(
        "minilm-l6", T.BertConfig, T.BertForSequenceClassification, hidden_size=384, num_attention_heads=12,
        intermediate_size=192, max_position_embeddings=64,
    ),
    # distilbert-base-uncased: 768 hidden, 12 heads of 64, FFN 3072.
    _encoder(
        "distilbert-base", T.DistilBertConfig, T.DistilBertForSequenceClassification, layers="n_layers", dim=768,
        n_heads=12, hidden_dim=384, max_position_embeddings=64,
    ),
    # FacebookAI/roberta-base: 768 hidden, 12 heads of 64, FFN 3072.
    _encoder(
        "roberta-base", T.RobertaConfig, T.RobertaForSequenceClassification, hidden_size=768, num_attention_heads=12,
        intermediate_size=384, **_ROBERTA_IDS,
    ),
    # openai-community/gpt2: 768 hidden, 12 heads of 64, FFN 3072, fused Conv1D qkv, biases everywhere.
    Case(
        "gpt2-124m",
        _published(T.GPT2Config, T.GPT2LMHeadModel, layers="n_layer", n_embd=768, n_head=12, n_inner=384, **_IDS),
        True, True, True, 1, True, False,
    ),
    # google/gemma-2-2b (2304 hidden, 8 query heads of 256 in 4 KV groups, soft-capping): scaled to 4 heads of 256
    # in 2 groups on 1152 hidden, keeping the head size and the ratios.
    _decoder(
        "gemma2-2b", T.Gemma2Config, T.Gemma2ForCausalLM, hidden_size=1152, num_attention_heads=4,
        num_key_value_heads=2, head_dim=256, intermediate_size=256, query_pre_attn_scalar=256, sliding_window=8,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
    ),
    # answerdotai/ModernBERT-base: 768 hidden, 12 heads of 64, GLU FFN 1152, global attention every third layer.
    Case(
        "modernbert-base",
        _published(
            T.ModernBertConfig, T.ModernBertForSequenceClassification, num_labels=3, hidden_size=768,
            num_attention_heads=12, intermediate_size=384, max_position_embeddings=64, local_attention=8,
            global_attn_every_n_layers=3, cls_token_id=1, sep_token_id=2, **_IDS,
        ),
        False, False, False, 2, False, False,
    ),
    # google/vit-base-patch16-224: 768 hidden, 12 heads of 64, FFN 3072, 16-pixel patches (images cut to 32 pixels).
    Case(
        "vit-base",
        _vision(
            T.ViTConfig, T.ViTForImageClassification, 32, patch_size=16, hidden_size=768, num_hidden_layers=2,
            num_attention_heads=12, intermediate_size=384,
        ),
        False, True, True, 1, True, True, _images(32),
    ),
    # facebook/deit-tiny-patch16-224: 192 hidden, 3 heads of 64, FFN 768, a distillation token besides CLS.
    Case(
        "deit-tiny",
        _vision(
            T.DeiTConfig, T.DeiTForImageClassification, 32, patch_size=16, hidden_size=192,
            num_hidden_layers=2, num_attention_heads=3, intermediate_size=256,
        ),
        False, True, True, 1, True, True, _images(32),
    ),
    # sentence-transformers/all-mpnet-base-v2 (MPNet): 768 hidden, 12 heads of 64, FFN 3072, and one relative
    # attention bias with a column per head, shared by all layers.
    _encoder(
        "mpnet-base", T.MPNetConfig, T.MPNetForSequenceClassification, hidden_size=768, num_attention_heads=12,
        intermediate_size=384, **_ROBERTA_IDS,
    ),
]

# fmt: on

CASES_BY_NAME = {case.name: case for case in CASES + PUBLISHED}


@dataclass(frozen=True)
class MoECase:
    """A tiny mixture-of-experts model (tests/test_experts.py): 2 blocks of 6 experts, each token routed to 2."""

    name: str
    build: Callable[..., torch.nn.Module]  # keyword arguments override the config
    count_attribute: str  # the config attribute holding the experts per block
    prunes_heads: bool  # the recipe can remove attention heads too
    moe_intermediate: str  # the config attribute holding one expert's width


def _moe(config_cls: type, model_cls: type, **fields: object) -> Callable[..., torch.nn.Module]:
    def build(**overrides: object) -> torch.nn.Module:
        torch.manual_seed(0)
        defaults: dict[str, object] = dict(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            num_experts_per_tok=2,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        defaults.update(fields)
        defaults.update(overrides)
        return model_cls(config_cls(**defaults)).eval()

    return build


MOE_CASES = [
    MoECase(
        "mixtral",
        _moe(T.MixtralConfig, T.MixtralForCausalLM, head_dim=8, num_local_experts=6),
        "num_local_experts",
        True,
        "intermediate_size",
    ),
    MoECase(
        "qwen3_moe",
        _moe(
            T.Qwen3MoeConfig,
            T.Qwen3MoeForCausalLM,
            head_dim=8,
            num_experts=6,
            moe_intermediate_size=24,
            norm_topk_prob=True,
        ),
        "num_local_experts",
        True,
        "moe_intermediate_size",
    ),
    MoECase(
        "qwen3_moe-unnormalised",  # top-k probabilities used as they are (norm_topk_prob=False)
        _moe(
            T.Qwen3MoeConfig,
            T.Qwen3MoeForCausalLM,
            head_dim=8,
            num_experts=6,
            moe_intermediate_size=24,
            norm_topk_prob=False,
        ),
        "num_local_experts",
        True,
        "moe_intermediate_size",
    ),
    MoECase(
        "qwen2_moe",  # a shared expert (a dense MLP behind a sigmoid gate) next to the routed ones
        _moe(
            T.Qwen2MoeConfig,
            T.Qwen2MoeForCausalLM,
            head_dim=8,
            num_experts=6,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=32,
            norm_topk_prob=True,
        ),
        "num_experts",
        True,
        "moe_intermediate_size",
    ),
    MoECase(
        "gpt_oss",  # router bias, interleaved gate/up with biases, attention sinks, alternating sliding windows
        _moe(
            T.GptOssConfig,
            T.GptOssForCausalLM,
            head_dim=8,
            num_local_experts=6,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
        ),
        "num_local_experts",
        False,  # the attention sinks (recipes/gpt_oss.yaml)
        "intermediate_size",
    ),
    MoECase(
        "olmoe",
        _moe(T.OlmoeConfig, T.OlmoeForCausalLM, num_key_value_heads=4, num_experts=6, norm_topk_prob=True),
        "num_experts",
        False,  # q/k norms over the full width (recipes/olmoe.yaml)
        "intermediate_size",
    ),
]
MOE_CASES_BY_NAME = {case.name: case for case in MOE_CASES}
