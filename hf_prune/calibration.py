"""Calibration data: from a file, a ``datasets`` folder, a Hub dataset, texts or ready batches, to model inputs.

A causal LM given no data calibrates on text it samples itself (Williams et al. 2024, "self-calibration"),
seeded so that the same seed gives the same windows. Long texts are packed into windows of ``seq_len`` tokens
(causal LMs); encoders get one truncated text per sequence, with labels when the data has them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers.utils import logging

logger = logging.get_logger(__name__)

# File suffix -> the ``datasets`` builder that reads it.
BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
LABEL_COLUMNS = ("label", "labels")
SELF_CALIBRATION_FILE = "self_calibration.json"
GENERATION_BATCH = 32


class CalibrationError(ValueError):
    """Calibration data that cannot be used as asked (the message names the fix)."""


@dataclass
class CalibrationData:
    """Model inputs for calibration, and where they came from (for the report and the card)."""

    batches: list[dict[str, torch.Tensor]]
    source: str
    self_generated: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def num_sequences(self) -> int:
        """Sequences (or images) over all batches: the first dimension of their main input."""
        return sum(int(_main_input(b).shape[0]) for b in self.batches)

    @property
    def num_tokens(self) -> int | None:
        """Tokens over all batches (``None`` for inputs that are not token ids, such as images)."""
        if not all("input_ids" in b for b in self.batches):
            return None
        return sum(
            int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in self.batches
        )

    def describe(self) -> dict[str, Any]:
        """What the report records about the calibration data."""
        described = {"source": self.source, "self_generated": self.self_generated, "sequences": self.num_sequences}
        if (tokens := self.num_tokens) is not None:
            described["tokens"] = tokens
        return described | self.details


def _main_input(batch: Mapping[str, Any]) -> torch.Tensor:
    for name in ("input_ids", "pixel_values", "input_features", "inputs_embeds"):
        if name in batch:
            return batch[name]
    return next(v for v in batch.values() if isinstance(v, torch.Tensor))


def is_causal_lm(model: torch.nn.Module) -> bool:
    """Whether ``model`` generates text left to right (so it can be packed and can calibrate itself)."""
    can_generate = getattr(model, "can_generate", None)
    return bool(can_generate and can_generate()) and not getattr(model.config, "is_encoder_decoder", False)


# ---------------------------------------------------------------------------------------------------------
# Reading texts from a source.
# ---------------------------------------------------------------------------------------------------------


def load_rows(source: str | os.PathLike[str], split: str = "train", document_per_file: bool = True) -> Any:
    """A ``datasets.Dataset`` from a file (.txt .jsonl .json .csv .parquet), a folder written by
    ``Dataset.save_to_disk``, a folder of such files, or a Hub dataset id."""
    import datasets

    path = Path(source)
    try:
        if path.is_dir() and any((path / name).is_file() for name in ("state.json", "dataset_dict.json")):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise CalibrationError(
                        f"'{source}' has the splits {sorted(loaded)}, not '{split}': pass one of them as the split."
                    )
                loaded = loaded[split]
            return loaded
        if path.is_file():
            builder = BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise CalibrationError(
                    f"cannot read '{source}': use a .txt, .jsonl, .json, .csv or .parquet file, a folder saved with "
                    "datasets' save_to_disk, or a Hub dataset id."
                )
            if path.stat().st_size == 0:
                raise CalibrationError(f"'{source}' is empty: give a file with text in it.")
            options = {"sample_by": "document" if document_per_file else "line"} if builder == "text" else {}
            return datasets.load_dataset(builder, data_files=str(path), split="train", **options)
        if path.is_dir():
            return datasets.load_dataset(str(path), split=split)
        if path.suffix.lower() in BUILDERS or str(source).startswith((".", "/", "~")) or str(source).count("/") > 1:
            # Looks like a path, not a Hub id ("name" or "namespace/name").
            raise CalibrationError(f"'{source}' does not exist: check the path of the calibration data.")
        return datasets.load_dataset(str(source), split=split)
    except CalibrationError:
        raise
    except Exception as error:  # datasets raises many kinds; say what was being read
        raise CalibrationError(f"could not load calibration data '{source}' (split '{split}'): {error}") from error


def pick_column(rows: Any, column: str | None, source: str) -> str:
    """The text column: ``column`` if given, else ``text``, else the only string column."""
    names = list(rows.column_names)
    if column is not None:
        if column not in names:
            raise CalibrationError(f"'{source}' has no column '{column}'; its columns are {names}. Pass one of them.")
        return column
    if "text" in names:
        return "text"
    strings = [n for n in names if getattr(rows.features[n], "dtype", None) in ("string", "large_string")]
    if len(strings) == 1:
        return strings[0]
    raise CalibrationError(f"'{source}' has the columns {names}: name the text column (calibration_column).")


def _texts(rows: Any, column: str, source: str) -> list[str]:
    texts = [t for t in rows[column] if isinstance(t, str) and t.strip()]
    if not texts:
        raise CalibrationError(f"'{source}' has no text in column '{column}': give data with non-empty text.")
    return texts


# ---------------------------------------------------------------------------------------------------------
# From texts to batches.
# ---------------------------------------------------------------------------------------------------------


def _chunk(sequences: torch.Tensor, batch_size: int, **extra: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    batches = []
    for start in range(0, sequences.shape[0], batch_size):
        ids = sequences[start : start + batch_size]
        batch = {"input_ids": ids, **{k: v[start : start + batch_size] for k, v in extra.items()}}
        batches.append(batch)
    return batches


def pack_windows(
    token_ids: Sequence[Sequence[int]], samples: int, seq_len: int, separator: int | None, source: str
) -> torch.Tensor:
    """Concatenate tokenized texts (with ``separator`` between them) and cut ``samples`` windows of ``seq_len``
    tokens, spread evenly over the whole stream."""
    stream: list[int] = []
    for ids in token_ids:
        stream.extend(ids)
        if separator is not None:
            stream.append(separator)
    available = len(stream) // seq_len
    if available < samples:
        raise CalibrationError(
            f"'{source}' has {len(stream):,} tokens: {available} windows of {seq_len}, fewer than the {samples} asked. "
            "Give more text, or lower calibration_samples / calibration_seq_len."
        )
    ids = torch.tensor(stream[: available * seq_len]).view(available, seq_len)
    pick = torch.linspace(0, available - 1, samples).round().long()
    return ids[pick]


def causal_batches(
    texts: Sequence[str], tokenizer: Any, samples: int, seq_len: int, batch_size: int, source: str
) -> list[dict[str, torch.Tensor]]:
    """Windows of ``seq_len`` tokens with ``labels`` (the loss of a causal LM), packed from ``texts``."""
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    short = sum(len(ids) < seq_len for ids in encoded)
    if short:
        logger.info("packed %d of %d texts shorter than %d tokens into windows", short, len(encoded), seq_len)
    windows = pack_windows(encoded, samples, seq_len, tokenizer.eos_token_id, source)
    return [dict(b, labels=b["input_ids"].clone()) for b in _chunk(windows, batch_size)]


def encoder_batches(
    rows: Any,
    column: str,
    tokenizer: Any,
    samples: int,
    seq_len: int,
    batch_size: int,
    source: str,
    with_labels: bool,
    seed: int,
) -> list[dict[str, torch.Tensor]]:
    """One truncated text per sequence (padded per batch), with the data's labels when ``with_labels``."""
    rows = rows.filter(lambda r: isinstance(r[column], str) and bool(r[column].strip()))
    if len(rows) < samples:
        raise CalibrationError(
            f"'{source}' has {len(rows)} non-empty texts, fewer than the {samples} asked: lower calibration_samples."
        )
    rows = rows.shuffle(seed=seed).select(range(samples))
    label = next((c for c in LABEL_COLUMNS if c in rows.column_names), None) if with_labels else None
    batches = []
    for start in range(0, samples, batch_size):
        part = rows.select(range(start, min(start + batch_size, samples)))
        batch = dict(
            tokenizer(list(part[column]), truncation=True, max_length=seq_len, padding=True, return_tensors="pt")
        )
        if label is not None:
            batch["labels"] = torch.tensor(list(part[label]))
        batches.append(batch)
    return batches


# ---------------------------------------------------------------------------------------------------------
# Self-calibration: text sampled from the model itself.
# ---------------------------------------------------------------------------------------------------------


def _start_token(model: torch.nn.Module, tokenizer: Any | None) -> int:
    vocab = model.get_input_embeddings().num_embeddings
    for owner in (tokenizer, getattr(model, "generation_config", None), model.config):
        token = getattr(owner, "bos_token_id", None) if owner is not None else None
        if token is not None and 0 <= int(token) < vocab:
            return int(token)
    raise CalibrationError(
        "the model has no BOS token (within its vocabulary) to start self-generated calibration text from: give "
        "calibration data "
        "(calibration_data / --calibration-data)."
    )


@torch.no_grad()
def self_generate(
    model: torch.nn.Module,
    samples: int,
    seq_len: int,
    seed: int = 0,
    batch_size: int = 8,
    tokenizer: Any | None = None,
    top_p: float = 0.95,
) -> CalibrationData:
    """Sample ``samples`` sequences of ``seq_len`` tokens from a causal LM, starting from its BOS token
    (Williams et al. 2024). Seeded: the same model, seed and sizes give the same tokens.

    Up to ``GENERATION_BATCH`` sequences are sampled together (a decoding step reads every weight once whatever
    the batch, so wide batches are nearly free); they are then served in calibration batches of ``batch_size``.
    """
    if not is_causal_lm(model):
        raise CalibrationError(
            f"{type(model).__name__} does not generate text, so it cannot calibrate itself: give calibration data "
            "(calibration_data / --calibration-data)."
        )
    start = _start_token(model, tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sequences = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            width = max(batch_size, min(samples, GENERATION_BATCH))
            for first in tqdm(range(0, samples, width), desc="self-calibration", unit="batch", leave=False):
                count = min(width, samples - first)
                prompt = torch.full((count, 1), start, dtype=torch.long, device=device)
                out = model.generate(
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    do_sample=True,
                    top_p=top_p,
                    top_k=0,
                    temperature=1.0,
                    max_new_tokens=seq_len - 1,
                    min_new_tokens=seq_len - 1,
                    pad_token_id=start,
                )
                sequences.append(out[:, :seq_len].cpu())
    finally:
        model.train(was_training)
    windows = torch.cat(sequences)
    batches = [dict(b, labels=b["input_ids"].clone()) for b in _chunk(windows, batch_size)]
    details = {"seed": seed, "top_p": top_p, "seq_len": seq_len}
    return CalibrationData(batches, "self-generated by the model", self_generated=True, details=details)


def save_self_calibration(data: CalibrationData) -> str:
    """JSON of self-generated windows, to cache them next to a pruned model."""
    ids = torch.cat([b["input_ids"] for b in data.batches]).tolist()
    return json.dumps({"details": data.details, "input_ids": ids}) + "\n"


def load_self_calibration(path: str | os.PathLike[str], batch_size: int) -> CalibrationData:
    content = json.loads(Path(path).read_text(encoding="utf-8"))
    windows = torch.tensor(content["input_ids"], dtype=torch.long)
    batches = [dict(b, labels=b["input_ids"].clone()) for b in _chunk(windows, batch_size)]
    return CalibrationData(batches, "self-generated by the model", self_generated=True, details=content["details"])


# ---------------------------------------------------------------------------------------------------------
# The one entry point.
# ---------------------------------------------------------------------------------------------------------


def max_positions(model: torch.nn.Module) -> int | None:
    """The longest sequence the model's position embeddings allow, where its config says."""
    config = model.config.get_text_config()
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def usable_seq_len(model: torch.nn.Module, seq_len: int) -> int:
    """``seq_len``, shortened to the model's position embeddings where they are shorter."""
    longest = max_positions(model)
    if longest is not None and seq_len > longest:
        logger.info("calibration sequences shortened from %d to the model's %d positions", seq_len, longest)
        return longest
    return seq_len


def _is_batch_list(data: Any) -> bool:
    return isinstance(data, Sequence) and bool(data) and all(isinstance(b, Mapping) for b in data)


def prepare_calibration(
    model: torch.nn.Module,
    data: Any,
    tokenizer: Any | None = None,
    split: str = "train",
    column: str | None = None,
    samples: int = 32,
    seq_len: int = 512,
    batch_size: int = 8,
    seed: int = 0,
) -> CalibrationData:
    """Turn ``data`` into calibration batches for ``model``.

    ``data`` is one of: a :class:`CalibrationData`; a list of ready batches (dicts of model inputs, used as
    they are); a list of texts; a ``datasets.Dataset``; a path or Hub id (see :func:`load_rows`); or
    ``None`` to let a causal LM sample its own calibration text.
    """
    if isinstance(data, CalibrationData):
        return data
    seq_len = usable_seq_len(model, seq_len)
    if data is None:
        return self_generate(model, samples, seq_len, seed, batch_size, tokenizer)
    if _is_batch_list(data):
        return CalibrationData([dict(b) for b in data], "batches given by the caller")
    if isinstance(data, (str, os.PathLike)) and Path(data).name == SELF_CALIBRATION_FILE and Path(data).is_file():
        return load_self_calibration(data, batch_size)
    if tokenizer is None:
        raise CalibrationError(
            "calibration data given as text needs the model's tokenizer: pass tokenizer=..., or give ready batches."
        )
    if isinstance(data, (str, os.PathLike)):
        source = str(data)
        rows = load_rows(data, split, document_per_file=is_causal_lm(model))
    elif isinstance(data, Iterable) and not hasattr(data, "column_names"):
        import datasets

        source, rows = "texts given by the caller", datasets.Dataset.from_dict({"text": list(data)})
    else:
        source, rows = (getattr(data, "info", None) and data.info.dataset_name) or "a datasets.Dataset", data
    column = pick_column(rows, column, source)
    details = {"split": split, "column": column, "seq_len": seq_len}
    if is_causal_lm(model):
        batches = causal_batches(_texts(rows, column, source), tokenizer, samples, seq_len, batch_size, source)
    else:
        with_labels = "ForSequenceClassification" in type(model).__name__
        batches = encoder_batches(rows, column, tokenizer, samples, seq_len, batch_size, source, with_labels, seed)
    return CalibrationData(batches, source, details=details)
