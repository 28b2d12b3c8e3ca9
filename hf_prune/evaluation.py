"""Quality before and after pruning, on the same data, with the metric that fits the model.

- causal LMs: perplexity over packed windows of held-out text;
- sequence classifiers: accuracy (and F1 for two classes) against the data's labels;
- other encoders (sentence embeddings): cosine agreement of the pruned model's mean-pooled embeddings with the
  dense model's.

A user's own metric is a callable ``metric(model, batches) -> {name: value}``. The results go into the report
(``report.extra["eval"]``) and from there into the card's ``model-index``. :func:`check_collapse` is the push
guard: it refuses a model whose measured quality fell apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .calibration import CalibrationData, is_causal_lm

Metric = Callable[[nn.Module, Sequence[dict[str, torch.Tensor]]], dict[str, float]]
METRICS = ("auto", "perplexity", "accuracy", "embedding_cosine")

# A measured collapse blocks a push unless forced (README: "Pushing to the Hub").
MAX_PERPLEXITY_RATIO = 3.0
MAX_ACCURACY_DROP = 0.10
MIN_EMBEDDING_COSINE = 0.80


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
    if metric == "auto":
        for name in ("perplexity", "accuracy", "embedding_cosine"):
            if fits[name]:
                return name
        unlabelled = " (its evaluation data has no labels)" if classifier else ""
        raise ValueError(
            f"no built-in metric fits {type(model).__name__}{unlabelled}: give labelled data, or pass metric=a "
            "callable(model, batches) -> {name: value}."
        )
    if not fits[metric]:
        why = "needs a labelled sequence classifier" if metric == "accuracy" else f"does not fit {type(model).__name__}"
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
        return {"before": self.before_values, "after": self._measure(pruned), "dataset": dataset, "task_type": None}


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
