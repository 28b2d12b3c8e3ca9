"""A byte-level tokenizer and texts for calibration tests (no network, no tokenizer files)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<s>", "</s>"]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Every byte is a token (ids 3..258 after three special tokens): tiny models with vocab >= 259 read it."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(SPECIAL)}
    vocab.update({char: len(SPECIAL) + i for i, char in enumerate(sorted(alphabet))})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


SENTENCES = [
    "The committee met on Tuesday to discuss the budget for the coming year.",
    "Rain is expected over the hills tonight, clearing by the morning.",
    "She opened the window and the sound of the market drifted in.",
    "A good recipe names every ingredient and the order they go in.",
    "The train was late again, so he walked the last two miles home.",
    "Prices of fresh vegetables rose sharply after the long dry summer.",
]


def texts(count: int) -> list[str]:
    return [f"{SENTENCES[i % len(SENTENCES)]} ({i})" for i in range(count)]
