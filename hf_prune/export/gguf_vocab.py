"""The tokenizer inside a GGUF file: token list and types, BPE merges, special tokens, pre-tokenizer name.

llama.cpp tokenizes with its own code, selected by ``tokenizer.ggml.model`` (``gpt2`` for byte-level BPE,
``llama`` for SentencePiece-style vocabularies) and, for BPE, ``tokenizer.ggml.pre`` (which splitting regexes run
first). The ``gguf`` package's vocab readers serve the SentencePiece-style ones; byte-level BPE is read here.
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
        return "gpt-2"
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


def _add_sentencepiece(writer: Any, vocab: Any, folder: Path, vocab_size: int) -> dict[str, str]:
    """A SentencePiece-style vocabulary (``gguf``'s vocab readers) as llama.cpp's ``llama`` tokenizer."""
    import gguf

    texts, scores, types = (list(column) for column in zip(*vocab.all_tokens(), strict=True))
    if isinstance(vocab, gguf.LlamaHfVocab):
        # gguf's reader gives every token the same placeholder score, but llama.cpp's SentencePiece tokenizer merges
        # by score: BPE vocabularies list merged pieces in merge order, so a lower id is an earlier merge.
        scores = [-float(i) if t == gguf.TokenType.NORMAL else 0.0 for i, t in enumerate(types)]
    if len(texts) > vocab_size:
        raise ExportError(f"the tokenizer has {len(texts)} tokens but the model's embedding only {vocab_size} rows.")
    for index in range(len(texts), vocab_size):  # embedding rows the tokenizer never produces
        texts.append(f"[PAD{index}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(texts)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=False, n_vocab=len(texts)).add_to_gguf(writer, quiet=True)
    return {"model": "llama", "pre": "default"}


def add_vocab(writer: Any, folder: Path, vocab_size: int) -> dict[str, str]:
    """Write the tokenizer saved in ``folder`` into ``writer``; returns ``{model, pre}`` as written.

    Byte-level BPE (GPT-2 style ``tokenizer.json``: SmolLM, Qwen, Llama 3) becomes llama.cpp's ``gpt2`` tokenizer;
    BPE with byte fallback (``tokenizer.json`` of Llama 2 / Mistral) or a SentencePiece ``tokenizer.model`` its
    ``llama`` tokenizer.
    """
    import gguf
    import transformers

    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        if (folder / "tokenizer.model").is_file():
            try:
                return _add_sentencepiece(writer, gguf.SentencePieceVocab(folder), folder, vocab_size)
            except RuntimeError as err:  # gguf raises this when sentencepiece is missing
                raise ExportError(f"reading tokenizer.model needs the sentencepiece package ({err}).") from None
        raise ExportError(
            f"'{folder}' holds no tokenizer (tokenizer.json), and a GGUF file carries its tokenizer for llama.cpp. "
            "Save the tokenizer with the model (hf_prune.save_pretrained(model, DIR, tokenizer=tokenizer); "
            "`hf-prune prune` does)."
        )
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    decoder = (data.get("decoder") or {}).get("type")
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return _add_sentencepiece(writer, gguf.LlamaHfVocab(folder), folder, vocab_size)
    if model.get("type") != "BPE" or decoder != "ByteLevel":
        raise ExportError(
            f"tokenizer.json holds a {model.get('type')} tokenizer (decoder {decoder}); GGUF export writes byte-level "
            "BPE tokenizers (GPT-2 style) and SentencePiece-style ones (BPE with byte fallback, tokenizer.model)."
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
