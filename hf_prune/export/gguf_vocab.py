"""The tokenizer inside a GGUF file: token list and types, BPE merges, special tokens, pre-tokenizer name.

llama.cpp tokenizes with its own code, selected by ``tokenizer.ggml.model`` (``gpt2`` for byte-level BPE,
``llama`` for SentencePiece) and, for BPE, ``tokenizer.ggml.pre`` (which splitting regexes run first).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from .common import ExportError


def _byte_level_pre(pre: Any) -> str | None:
    """llama.cpp's pre-tokenizer name for the two byte-level layouts read here with certainty, else ``None``.

    ``ByteLevel`` with its regex is GPT-2's split; ``Digits(individual_digits)`` before it is SmolLM's. Other
    layouts (Llama 3's and Qwen's ``Split`` regexes...) are not guessed.
    """
    if not isinstance(pre, dict):
        return None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps or []]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte_level is None or not byte_level.get("use_regex", True):
        return None
    if kinds == ["ByteLevel"]:
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    return None


def _bpe_tokens(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings by id (padded to the embedding's rows) and their llama.cpp types."""
    import gguf

    by_id = {index: text for text, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    if by_id and max(by_id) >= vocab_size:
        raise ExportError(
            f"the tokenizer has ids up to {max(by_id)} but the model's embedding has {vocab_size} rows; they must "
            "belong to the same model."
        )
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:  # rows the tokenizer never produces (embeddings padded to a multiple)
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            token = added[index]
            tokens.append(token.content)
            types.append(gguf.TokenType.CONTROL if token.special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def add_vocab(writer: Any, folder: Path, vocab_size: int) -> dict[str, str]:
    """Write the tokenizer saved in ``folder`` into ``writer``; returns ``{model, pre}`` as written."""
    import gguf
    import transformers

    tokenizer_json = folder / "tokenizer.json"
    sentencepiece = folder / "tokenizer.model"
    if sentencepiece.is_file() and not tokenizer_json.is_file():
        try:
            vocab = gguf.SentencePieceVocab(folder)
        except (ImportError, ModuleNotFoundError) as err:
            raise ExportError(f"reading tokenizer.model needs the sentencepiece package ({err}).") from None
        texts, scores, types = zip(*vocab.all_tokens(), strict=True)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(list(texts))
        writer.add_token_scores(list(scores))
        writer.add_token_types(list(types))
        gguf.SpecialVocab(folder, load_merges=False, n_vocab=len(texts)).add_to_gguf(writer, quiet=True)
        return {"model": "llama", "pre": ""}
    if not tokenizer_json.is_file():
        raise ExportError(
            f"'{folder}' holds no tokenizer (tokenizer.json), and a GGUF file carries its tokenizer for llama.cpp. "
            "Save the tokenizer with the model (hf_prune.save_pretrained(model, DIR, tokenizer=tokenizer); "
            "`hf-prune prune` does)."
        )
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or (data.get("decoder") or {}).get("type") != "ByteLevel"
    ):
        fallback = " with byte fallback" if model.get("byte_fallback") else ""
        raise ExportError(
            f"tokenizer.json is a {model.get('type')} tokenizer{fallback}; "
            "GGUF export writes byte-level BPE tokenizers (GPT-2 style) or SentencePiece ones (tokenizer.model)."
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokens, types = _bpe_tokens(tokenizer, vocab_size)
    pre = _byte_level_pre(data.get("pre_tokenizer"))
    if pre is None:
        warnings.warn(
            "the tokenizer's pre-tokenizer is not one hf_prune recognises; the GGUF file says 'default', and "
            "llama.cpp may split text differently from transformers (token ids fed directly are unaffected).",
            UserWarning,
            stacklevel=3,
        )
        pre = "default"
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise ExportError("tokenizer.json has no BPE merges; llama.cpp cannot tokenize without them.")
    special.add_to_gguf(writer, quiet=True)
    return {"model": "gpt2", "pre": pre}
