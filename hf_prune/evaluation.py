"""Quality before and after pruning, on the same data, with the metric that fits the model.

- causal LMs: perplexity over packed windows of held-out text;
- sequence classifiers: accuracy (and F1 for two classes) against the data's labels;
- other encoders (sentence embeddings): cosine agreement of the pruned model's mean-pooled embeddings with the
  dense model's.

A user's own metric is a callable ``metric(model, batches) -> {name: value}``. During training, the Trainer's own
eval metrics are kept by :class:`TrainerEvaluations`. Every path puts the same entry (:func:`eval_entry`) into the
report (``report.extra["eval"]``), and from there into the card's ``model-index``. :func:`check_collapse` is the
push guard: it refuses a model whose measured quality fell apart. :func:`check_overlap` warns when the evaluation
data repeats the calibration data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .calibration import LABEL_COLUMNS, CalibrationData, is_causal_lm

Metric = Callable[[nn.Module, Sequence[dict[str, torch.Tensor]]], dict[str, float]]
METRICS = ("auto", "perplexity", "accuracy", "embedding_cosine")

# A measured collapse blocks a push unless forced (README: "Pushing to the Hub").
MAX_PERPLEXITY_RATIO = 3.0
MAX_ACCURACY_DROP = 0.10
MIN_EMBEDDING_COSINE = 0.80
# An evaluation sequence that shares this many consecutive tokens (all of it, if shorter) with the calibration data
# overlaps it.
OVERLAP_TOKENS = 32
# Trainer.evaluate() keys that describe the evaluation run, not the model's quality.
_RUN_KEYS = ("epoch", "runtime")
_RUN_SUFFIXES = ("_runtime", "_per_second")


class QualityCollapseError(ValueError):
    """The measured quality of a pruned model collapsed; pushing it needs ``force=True`` (CLI: ``--force``)."""


def _device_batches(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]):
    device = next(model.parameters()).device
    for batch in batches:
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.inference_mode()
def perplexity(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """exp of the mean token loss over every window (labels = inputs, padding ignored)."""
    model.eval()
    total, count = 0.0, 0
    for batch in _device_batches(model, batches):
        labels = batch.get("labels", batch["input_ids"])
        if "attention_mask" in batch:
            labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        shifted, targets = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
        loss = nn.functional.cross_entropy(shifted, targets, ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((targets != -100).sum())
    return {"perplexity": math.exp(total / max(count, 1))}


@torch.inference_mode()
def accuracy(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Accuracy (and F1 of class 1 when there are two classes) of a sequence classifier."""
    model.eval()
    predictions, labels = [], []
    for batch in _device_batches(model, batches):
        if "labels" not in batch:
            raise ValueError("accuracy needs labels: give evaluation data with a 'label' column.")
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        predictions.append(logits.argmax(-1).cpu())
        labels.append(batch["labels"].cpu())
    predicted, truth = torch.cat(predictions), torch.cat(labels)
    result = {"accuracy": float((predicted == truth).float().mean())}
    if int(truth.max()) <= 1 and getattr(model.config, "num_labels", 2) == 2:
        tp = int(((predicted == 1) & (truth == 1)).sum())
        precision_den, recall_den = int((predicted == 1).sum()), int((truth == 1).sum())
        result["f1"] = 2 * tp / (precision_den + recall_den) if precision_den + recall_den else 0.0
    return result


@torch.inference_mode()
def mean_embeddings(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Mean-pooled last hidden states (padding excluded), the sentence-transformers pooling."""
    model.eval()
    out = []
    for batch in _device_batches(model, batches):
        hidden = model(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
        mask = batch.get("attention_mask", torch.ones(hidden.shape[:2], device=hidden.device))[..., None].float()
        out.append(((hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).cpu())
    return torch.cat(out)


def choose_metric(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], metric: str | Metric) -> str | Metric:
    """``'auto'`` -> the metric that fits the model; a named metric that does not fit raises a clear error."""
    if callable(metric):
        return metric
    if metric not in METRICS:
        raise ValueError(f"unknown evaluation metric {metric!r}; choose one of {METRICS} or pass a callable.")
    classifier = "ForSequenceClassification" in type(model).__name__
    labelled = all("labels" in b for b in batches)
    fits = {
        "perplexity": is_causal_lm(model),
        "accuracy": classifier and labelled,
        "embedding_cosine": not is_causal_lm(model) and not classifier,  # a base encoder: its hidden states
    }
    no_labels = (
        f"the evaluation data has no label column ({' or '.join(repr(c) for c in LABEL_COLUMNS)}): give data with one"
    )
    if metric == "auto":
        for name in ("perplexity", "accuracy", "embedding_cosine"):
            if fits[name]:
                return name
        why = f": {no_labels}, or" if classifier else ":"
        raise ValueError(
            f"no built-in metric fits {type(model).__name__}{why} pass metric=a callable(model, batches) -> "
            "{name: value}."
        )
    if not fits[metric]:
        if metric == "accuracy":
            why = (
                f"needs labels: {no_labels}"
                if classifier
                else f"needs a labelled sequence classifier, not {type(model).__name__}"
            )
        else:
            why = f"does not fit {type(model).__name__}"
        raise ValueError(f"evaluation metric '{metric}' {why}; use 'auto' or one of {METRICS}.")
    return metric


@dataclass
class Evaluation:
    """Evaluation data and metric, measured once on the dense model (:meth:`before`) and once on the pruned one
    (:meth:`after`)."""

    data: CalibrationData
    metric: str | Metric
    dense_embeddings: torch.Tensor | None = None
    before_values: dict[str, float] | None = None

    def _measure(self, model: nn.Module) -> dict[str, float]:
        if callable(self.metric):
            return {k: float(v) for k, v in self.metric(model, self.data.batches).items()}
        if self.metric == "perplexity":
            return perplexity(model, self.data.batches)
        if self.metric == "accuracy":
            return accuracy(model, self.data.batches)
        embeddings = mean_embeddings(model, self.data.batches)
        if self.dense_embeddings is None:
            self.dense_embeddings = embeddings
        cosine = nn.functional.cosine_similarity(embeddings, self.dense_embeddings, dim=-1)
        return {"embedding_cosine": float(cosine.mean())}

    def before(self, dense: nn.Module) -> dict[str, float]:
        self.before_values = self._measure(dense)
        return self.before_values

    def after(self, pruned: nn.Module) -> dict[str, Any]:
        """The report's ``eval`` entry: before, after and the dataset (for the card's model-index)."""
        if self.before_values is None:
            raise RuntimeError("measure the dense model first (Evaluation.before).")
        source = Path(self.data.source)
        if source.exists():  # a local file or folder: its name, not this machine's path; no Hub split
            dataset = {"type": source.name, "name": source.name}
        else:
            dataset = {"type": self.data.source, "name": self.data.source, "split": self.data.details.get("split")}
        return eval_entry(self.before_values, self._measure(pruned), dataset)


def eval_entry(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    dataset: Mapping[str, Any] | None = None,
    steps: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The report's ``eval`` entry, the same on every path: the dense model's figures (``before``), the pruned
    model's (``after``), the dataset they were measured on (``type``, ``name``, ``config``, ``split``: what the
    card's ``model-index`` names) and, for figures taken during training, the ``steps`` they were taken at."""
    entry: dict[str, Any] = {
        "before": None if before is None else dict(before),
        "after": None if after is None else dict(after),
        "dataset": dict(dataset or {}),
        "task_type": None,  # the card fills in the model's task
    }
    if steps:
        entry["steps"] = dict(steps)
    return entry


def plain_metrics(metrics: Mapping[str, Any], causal_lm: bool = False) -> dict[str, Any]:
    """Quality metrics of a ``Trainer.evaluate()``-style dict, without the ``eval_`` prefix and the run timings.

    With ``causal_lm``, ``perplexity`` is added as ``exp(loss)``, as transformers' ``run_clm.py`` reports it.
    """
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = key.removeprefix("eval_")
        if name in _RUN_KEYS or name.endswith(_RUN_SUFFIXES) or isinstance(value, bool):
            continue
        if isinstance(value, int | float | str):
            out[name] = value
    if causal_lm and isinstance(out.get("loss"), int | float) and "perplexity" not in out:
        out["perplexity"] = math.exp(min(float(out["loss"]), 700.0))  # exp overflows float past ~709
    return out


def describe_dataset(dataset: Any) -> dict[str, Any]:
    """What a ``datasets.Dataset`` says about itself, for the card's ``model-index``: ``{}`` when it has no name of
    its own (built in memory, or read from local files, where the name is only the file format)."""
    info = getattr(dataset, "info", None)
    name = getattr(info, "dataset_name", None)
    if not name or name == getattr(info, "builder_name", None):
        return {}
    config = getattr(info, "config_name", None)
    split = getattr(dataset, "split", None)
    described = {"type": name, "name": name, "config": None if config == "default" else config}
    described["split"] = None if split is None else str(split)
    return {k: v for k, v in described.items() if v is not None}


@dataclass
class TrainerEvaluations:
    """The Trainer's own eval metrics around gradual pruning (what :class:`hf_prune.PruningCallback` records).

    ``before``: the last evaluation of the dense model, before the first pruning update (for instance
    ``TrainingArguments(eval_on_start=True)``); ``after``: the last evaluation after the final update. Evaluations
    in between measure a partly pruned model and are not kept. Several eval datasets evaluated at the same step
    (``eval_dataset={"a": ..., "b": ...}``) are merged into one stage.
    """

    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    steps: dict[str, int] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)

    def record(
        self,
        metrics: Mapping[str, Any],
        step: int,
        stage: str | None,
        dataset: Any = None,
        causal_lm: bool = False,
    ) -> None:
        """Keep ``metrics`` of an evaluation at ``step``; ``stage`` is ``'before'``, ``'after'`` or ``None``
        (a partly pruned model: ignored). ``dataset`` is the evaluated ``datasets.Dataset``, if known."""
        if stage not in ("before", "after"):
            return
        values = plain_metrics(metrics, causal_lm)
        described = describe_dataset(dataset)
        if self.steps.get(stage) == step and getattr(self, stage) is not None:  # another eval set, same model
            values = {**getattr(self, stage), **values}
            described = described if described == self.dataset else {}
        setattr(self, stage, values)
        self.steps[stage] = step
        self.dataset = described

    def entry(self) -> dict[str, Any] | None:
        """The report's ``eval`` entry (:func:`eval_entry`), or ``None`` when nothing was evaluated."""
        if self.before is None and self.after is None:
            return None
        return eval_entry(self.before, self.after, self.dataset, self.steps)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        restored = TrainerEvaluations(**(state or {}))
        self.before, self.after, self.steps, self.dataset = (
            restored.before,
            restored.after,
            dict(restored.steps),
            dict(restored.dataset),
        )


def evaluate_model(model: nn.Module, data: CalibrationData, metric: str | Metric = "auto") -> dict[str, float]:
    """One model's quality on ``data`` (prepared like calibration data, see :func:`hf_prune.prepare_calibration`).

    Example::

        data = hf_prune.prepare_calibration(model, "held_out.txt", tokenizer, samples=8)
        hf_prune.evaluate_model(model, data)  # {'perplexity': 41.2}
    """
    chosen = choose_metric(model, data.batches, metric)
    if chosen == "embedding_cosine":
        raise ValueError("embedding_cosine compares two models: use hf_prune.Evaluation(data, metric).before/after.")
    return Evaluation(data, chosen)._measure(model)


def check_collapse(result: Mapping[str, Any]) -> str | None:
    """Why a measured ``{"before", "after"}`` evaluation counts as a collapse, or ``None`` if it does not.

    Collapse: perplexity above ``MAX_PERPLEXITY_RATIO`` x dense, accuracy down by more than
    ``MAX_ACCURACY_DROP``, or embeddings whose cosine with the dense ones falls below ``MIN_EMBEDDING_COSINE``.
    """
    before, after = result.get("before") or {}, result.get("after") or {}
    if "perplexity" in after and before.get("perplexity"):
        ratio = after["perplexity"] / before["perplexity"]
        if ratio > MAX_PERPLEXITY_RATIO:
            return (
                f"perplexity went from {before['perplexity']:.4g} to {after['perplexity']:.4g} "
                f"(x{ratio:.1f}, the limit is x{MAX_PERPLEXITY_RATIO:g})"
            )
    if "accuracy" in after and "accuracy" in before:
        drop = before["accuracy"] - after["accuracy"]
        if drop > MAX_ACCURACY_DROP:
            return (
                f"accuracy went from {before['accuracy']:.1%} to {after['accuracy']:.1%} "
                f"(the limit is -{MAX_ACCURACY_DROP:.0%})"
            )
    if "embedding_cosine" in after and after["embedding_cosine"] < MIN_EMBEDDING_COSINE:
        return (
            f"embeddings agree with the dense model's at cosine {after['embedding_cosine']:.3f} "
            f"(the limit is {MIN_EMBEDDING_COSINE})"
        )
    return None


def _sequences(data: CalibrationData) -> Iterator[str]:
    """Every sequence of ``data`` without its padding, one character per token (cheap to slice and hash)."""
    for batch in data.batches:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        for i in range(ids.shape[0]):
            row = ids[i] if mask is None else ids[i][mask[i].bool()]
            yield "".join(map(chr, row.tolist()))


def check_overlap(
    evaluation: CalibrationData, calibration: CalibrationData, tokenizer: Any = None, tokens: int = OVERLAP_TOKENS
) -> int:
    """Warn when evaluation sequences repeat calibration data; returns how many do.

    A sequence overlaps when it shares ``tokens`` consecutive tokens with a calibration sequence (all of itself, if
    it is shorter). The warning names how many overlap and quotes the first shared text (with ``tokenizer``).
    """
    calibration_texts = list(_sequences(calibration))
    runs = {text[i : i + tokens] for text in calibration_texts for i in range(len(text) - tokens + 1)}
    joined = "\U0010ffff".join(calibration_texts)  # not a token id: no match runs across two sequences
    shared = []
    for text in _sequences(evaluation):
        if len(text) < tokens:
            found = text if text and text in joined else None
        else:
            found = next(
                (text[i : i + tokens] for i in range(len(text) - tokens + 1) if text[i : i + tokens] in runs), None
            )
        shared.append(found)
    overlapping = [run for run in shared if run is not None]
    if overlapping:
        first = [ord(c) for c in overlapping[0]]
        quote = repr(tokenizer.decode(first)[:80]) if tokenizer is not None else f"token ids {first[:8]}..."
        warnings.warn(
            f"the evaluation data overlaps the calibration data: {len(overlapping)} of {len(shared)} evaluation "
            f"sequences share {tokens} consecutive tokens (or all of a shorter sequence) with it, e.g. {quote} "
            f"(evaluation '{evaluation.source}', calibration '{calibration.source}'). The figures will look better "
            "than on unseen data: evaluate on held-out data.",
            UserWarning,
            stacklevel=2,
        )
    return len(overlapping)
