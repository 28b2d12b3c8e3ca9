"""Tiny checkpoints for the export tests: a byte-level BPE tokenizer trained on a fixed text, and pruned Llama-family
decoders and encoders saved with it. "global" prunes with global ranking and layer 0 protected, so that the layers
keep different counts (8 heads in 2 KV groups in layer 0, 4 in 1 group after it)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

import hf_prune

from .architectures import CASES_BY_NAME, STRUCTURE_ONLY

TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and arrows "
    "of outrageous fortune, or to take arms against a sea of troubles and by opposing end them. 1234567890"
)


def bpe_tokenizer(vocab_size: int = 300) -> T.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 layout) trained on ``TEXT``: deterministic, no download."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TEXT] * 4, trainer=trainer)
    return T.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def sentencepiece_style_tokenizer(vocab_size: int = 400) -> T.PreTrainedTokenizerFast:
    """A Llama-2-style tokenizer (BPE with byte fallback, "▁" for spaces) trained on ``TEXT``."""
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator([TEXT] * 4, trainer=trainer)
    return T.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_llama(vocab_size: int, config_cls: type = T.LlamaConfig, model_cls: type = T.LlamaForCausalLM, **extra):
    """A 3-layer GQA decoder: 8 query heads of 16 in 2 KV groups, 96 neurons."""
    torch.manual_seed(0)
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    fields.update(extra)
    return model_cls(config_cls(**fields)).eval()


def _prune(model: torch.nn.Module, ranking: str) -> None:
    protected = [0] if ranking == "global" else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # magnitude scores on a causal LM: fine for shapes
        hf_prune.prune(model, heads=0.5, neurons=0.4, ranking=ranking, protected_layers=protected, **STRUCTURE_ONLY)


def pruned_llama(
    folder: Path,
    ranking: str = "global",
    config_cls: type = T.LlamaConfig,
    model_cls: type = T.LlamaForCausalLM,
    **extra: object,
) -> Path:
    """A tiny Llama-family decoder pruned (half the heads, 40% of the neurons) and saved with its tokenizer; ``extra``
    overrides :func:`tiny_llama`'s config."""
    tokenizer = bpe_tokenizer()
    model = tiny_llama(len(tokenizer), config_cls, model_cls, **extra)
    _prune(model, ranking)
    hf_prune.save_pretrained(model, folder, tokenizer=tokenizer)
    return folder


def llama_without_sublayers(
    folder: Path, remove: dict[str, list[int]], config_cls: type = T.LlamaConfig, model_cls: type = T.LlamaForCausalLM
) -> Path:
    """The tiny decoder with the sublayers ``remove`` (``{"attention": [0], "mlp": [2]}``) removed, saved with its
    tokenizer."""
    from hf_prune.depth import remove_sublayers

    tokenizer = bpe_tokenizer()
    model = tiny_llama(len(tokenizer), config_cls, model_cls)
    remove_sublayers(hf_prune.ModelStructure(model), remove)
    hf_prune.save_pretrained(model, folder, tokenizer=tokenizer)
    return folder


def pruned_encoder(folder: Path, name: str = "bert", ranking: str = "global") -> Path:
    """A tiny model of the test matrix (``CASES_BY_NAME[name]``: encoder classifiers, decoders), pruned and saved."""
    model = CASES_BY_NAME[name].build()
    _prune(model, ranking)
    hf_prune.save_pretrained(model, folder)
    return folder


# The tiny MoE decoders: 2 blocks of 6 experts of 64 neurons, each token routed to 2.
_MOE = dict(hidden_size=64, num_hidden_layers=2, num_experts_per_tok=2, max_position_embeddings=64, bos_token_id=0,
            eos_token_id=0)  # fmt: skip


def pruned_moe(
    folder: Path,
    config_cls: type,
    model_cls: type,
    ranking: str = "uniform",
    heads: float = 0.5,
    neurons: float = 0.0,
    **config: object,
) -> Path:
    """A tiny MoE decoder with a third of its experts, a quarter of the neurons inside the rest, ``heads`` of its
    query heads and ``neurons`` of its dense MLP's (a shared expert's) removed, saved with its tokenizer; "global"
    keeps layer 0 whole (the layers then differ)."""
    tokenizer = bpe_tokenizer()
    torch.manual_seed(0)
    model = model_cls(config_cls(vocab_size=len(tokenizer), **_MOE, **config)).eval()
    protected = [0] if ranking == "global" else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # magnitude scores on a causal LM: fine for shapes
        hf_prune.prune(
            model, heads=heads, experts=0.34, expert_neurons=0.25, ranking=ranking, protected_layers=protected,
            **({"neurons": neurons} if neurons else {}), **STRUCTURE_ONLY,
        )  # fmt: skip
    hf_prune.save_pretrained(model, folder, tokenizer=tokenizer)
    return folder


def pruned_mixtral(folder: Path, ranking: str = "uniform") -> Path:
    """A tiny Mixtral (8 query heads of 16 in 2 KV groups), pruned as :func:`pruned_moe` does."""
    return pruned_moe(
        folder, T.MixtralConfig, T.MixtralForCausalLM, ranking, intermediate_size=64, num_attention_heads=8,
        num_key_value_heads=2, head_dim=16, num_local_experts=6,
    )  # fmt: skip


def pruned_qwen3_moe(folder: Path, ranking: str = "uniform", **config: object) -> Path:
    """A tiny Qwen3-MoE (8 query heads of 16 in 2 KV groups, top-k renormalised), pruned as :func:`pruned_moe` does;
    ``config`` overrides its config."""
    fields: dict[str, object] = dict(
        num_attention_heads=8, num_key_value_heads=2, head_dim=16, num_experts=6, moe_intermediate_size=64,
        norm_topk_prob=True,
    )  # fmt: skip
    return pruned_moe(folder, T.Qwen3MoeConfig, T.Qwen3MoeForCausalLM, ranking, **{**fields, **config})


def pruned_olmoe(folder: Path, ranking: str = "uniform", **config: object) -> Path:
    """A tiny OLMoE (4 heads of 16, as many KV heads; top-k weights as they are), its experts and the neurons inside
    them pruned as :func:`pruned_moe` does (its heads stay: recipes/olmoe.yaml); ``config`` overrides its config."""
    fields: dict[str, object] = dict(
        intermediate_size=64, num_attention_heads=4, num_key_value_heads=4, num_experts=6, norm_topk_prob=False
    )
    return pruned_moe(folder, T.OlmoeConfig, T.OlmoeForCausalLM, ranking, heads=0.0, **{**fields, **config})


def pruned_qwen2_moe(folder: Path, ranking: str = "uniform", **config: object) -> Path:
    """A tiny Qwen2-MoE (8 query heads of 8 in 4 KV groups, q/k/v biases, top-k weights as they are; a shared expert
    of 96 neurons), pruned as :func:`pruned_moe` does, with a quarter of the shared expert's neurons; half its query
    heads go in whole KV groups (no data), so 4 heads in 2 groups remain; ``config`` overrides its config."""
    fields: dict[str, object] = dict(
        num_attention_heads=8, num_key_value_heads=4, num_experts=6, moe_intermediate_size=64,
        shared_expert_intermediate_size=96, norm_topk_prob=False,
    )  # fmt: skip
    return pruned_moe(folder, T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM, ranking, neurons=0.25, **{**fields, **config})
