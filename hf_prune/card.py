"""The model card of a pruned checkpoint: Hub metadata, and a body that states only what was measured.

Every figure comes from the :class:`PruningReport` or from what the caller passes in. A fact that is not known
(the base model of a model loaded from a local folder, a latency nobody measured) is left out, never estimated.
The card is built with ``huggingface_hub``'s :class:`ModelCard` / :class:`ModelCardData`, so its metadata is the
Hub's own format and parses back with ``ModelCard.load``.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.utils import logging

from .evaluation import plain_metrics
from .kinds import UnitKind, registered_kinds
from .prune import PruningReport

logger = logging.get_logger(__name__)

CARD_NAME = "README.md"
PICTURE_NAME = "pruning_structure.png"
TAGS = ["pruned", "structured-pruning", "hf-prune"]
# Written in the loading snippet when the repo is not known yet; `push_to_hub` fills in the repo id.
REPO_PLACEHOLDER = "<repo_id>"

# (Auto class, transformers mapping of class names, class-name suffix, pipeline tag), most specific first. A class
# is looked up in transformers' own auto mappings (GPT2LMHeadModel is a causal LM), then by its suffix.
_TASKS = (
    ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "ForCausalLM", "text-generation"),
    (
        "AutoModelForSequenceClassification",
        "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
        "ForSequenceClassification",
        "text-classification",
    ),
    (
        "AutoModelForTokenClassification",
        "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
        "ForTokenClassification",
        "token-classification",
    ),
    (
        "AutoModelForQuestionAnswering",
        "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
        "ForQuestionAnswering",
        "question-answering",
    ),
    ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES", "ForMaskedLM", "fill-mask"),
    ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", None, "text2text-generation"),
    (
        "AutoModelForImageClassification",
        "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
        "ForImageClassification",
        "image-classification",
    ),
    (
        "AutoModelForSpeechSeq2Seq",
        "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
        None,
        "automatic-speech-recognition",
    ),
    ("AutoModel", "MODEL_MAPPING_NAMES", None, "feature-extraction"),
)


def auto_class(class_name: str | None) -> tuple[str | None, str | None]:
    """``(Auto class, pipeline tag)`` of a transformers model class name; ``(None, None)`` when neither is known."""
    if not class_name:
        return None, None
    from transformers.models.auto import modeling_auto

    for auto_name, mapping_name, _, tag in _TASKS:
        for names in getattr(modeling_auto, mapping_name, {}).values():
            if class_name == names or (isinstance(names, list | tuple) and class_name in names):
                return auto_name, tag
    for auto_name, _, suffix, tag in _TASKS:
        if suffix and class_name.endswith(suffix):
            return auto_name, tag
    return None, None


def hub_model_id(name: str | None) -> str | None:
    """``name`` if it reads as a Hub model id, ``None`` for a local path (or nothing): a card never names a path."""
    if not name or os.path.exists(name) or name.startswith((".", "~")) or "\\" in name:
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def source_license(source: str | os.PathLike[str] | None) -> dict[str, str]:
    """The ``license`` (and ``license_name`` / ``license_link``) of the card next to a source model, if any.

    ``source`` is a local folder or a Hub id; a card that cannot be read (offline, no README) gives ``{}``.
    """
    if not source:
        return {}
    local = Path(source).expanduser()
    if local.exists():
        location: str | Path | None = local / CARD_NAME if (local / CARD_NAME).is_file() else None
    else:
        location = hub_model_id(str(source))
    if location is None:
        return {}
    try:
        card = ModelCard.load(location, ignore_metadata_errors=True)
    except Exception as err:  # any failure (network, missing file, bad YAML) only means "license unknown"
        logger.info("no license carried over from %s: %s", source, err)
        return {}
    return {key: str(card.data.get(key)) for key in ("license", "license_name", "license_link") if card.data.get(key)}


# -- evaluation results ---------------------------------------------------------------------------------------------


@dataclass
class _EvalRow:
    metric: str
    dataset: str | None
    before: Any = None
    after: Any = None


def _stage_results(values: Any, dataset: Mapping[str, Any], task_type: str | None) -> list[tuple[Any, ...]]:
    """``(metric, dataset label, value, EvalResult or None)`` for the results of one stage (before or after)."""
    if values is None:
        return []
    if isinstance(values, Mapping):
        # Plain {metric: value}: a model-index entry needs the dataset and task, which only the caller knows.
        dataset_type = dataset.get("type")
        rows = []
        for metric, value in plain_metrics(values).items():
            result = None
            if dataset_type and task_type:
                result = EvalResult(
                    task_type=task_type,
                    dataset_type=dataset_type,
                    dataset_name=dataset.get("name") or dataset_type,
                    metric_type=metric,
                    metric_value=value,
                    dataset_config=dataset.get("config"),
                    dataset_split=dataset.get("split"),
                    dataset_revision=dataset.get("revision"),
                )
            rows.append((metric, _dataset_label(dataset), value, result))
        return rows
    if isinstance(values, EvalResult):
        values = [values]
    results = [item if isinstance(item, EvalResult) else EvalResult(**item) for item in values]
    return [(r.metric_name or r.metric_type, _dataset_label(r), r.metric_value, r) for r in results]


def _dataset_label(dataset: Mapping[str, Any] | EvalResult) -> str | None:
    if isinstance(dataset, EvalResult):
        name, extra = dataset.dataset_name, [dataset.dataset_config, dataset.dataset_split]
    else:
        name, extra = dataset.get("name") or dataset.get("type"), [dataset.get("config"), dataset.get("split")]
    if not name:
        return None
    details = ", ".join(str(e) for e in extra if e)
    return f"{name} ({details})" if details else str(name)


def evaluation(eval_results: Any, task_type: str | None) -> tuple[list[_EvalRow], list[EvalResult]]:
    """Rows for the card body (before and after pruning) and the pruned model's results for ``model-index``.

    ``eval_results`` is either a list of :class:`EvalResult` (results of the pruned model), or a mapping
    ``{"before": ..., "after": ..., "dataset": {"type", "name", "config", "split", "revision"}, "task_type": ...}``
    (:func:`hf_prune.evaluation.eval_entry`; optionally ``"steps"``, the training steps each stage was measured at)
    whose stages are ``{metric: value}`` dicts (``Trainer.evaluate()``'s output) or lists of :class:`EvalResult`
    (or of their fields as dicts). Only the *after* results go into ``model-index``: it describes this model, and the
    dense model's scores are not this model's. Plain metrics reach ``model-index`` only when the dataset is named.
    """
    if eval_results is None:
        return [], []
    if isinstance(eval_results, Mapping):
        unknown = sorted(set(eval_results) - {"before", "after", "dataset", "task_type", "steps"})
        if unknown:
            raise ValueError(
                f"unknown evaluation key(s) {unknown}; expected 'before', 'after', 'dataset', 'task_type' and 'steps'."
            )
        stages = {"before": eval_results.get("before"), "after": eval_results.get("after")}
        dataset = eval_results.get("dataset") or {}
        task_type = eval_results.get("task_type") or task_type
    else:
        stages, dataset = {"before": None, "after": eval_results}, {}
    rows: dict[tuple[str, str | None], _EvalRow] = {}
    model_index: list[EvalResult] = []
    for stage, values in stages.items():
        for metric, label, value, result in _stage_results(values, dataset, task_type):
            row = rows.setdefault((metric, label), _EvalRow(metric, label))
            setattr(row, stage, value)
            if stage == "after" and result is not None:
                model_index.append(result)
    return list(rows.values()), model_index


# -- body sections --------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.1%}" if before else "—"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _report_kinds(report: PruningReport) -> list[UnitKind]:
    """The kinds the report counts (hf_prune.kinds), in table order."""
    first = report.layers_before[0] if report.layers_before else {}
    return [kind for kind in registered_kinds() if kind.name in first]


def _structure_table(report: PruningReport) -> str:
    """One table of kept units per block; one per stack for a model with several block lists (an encoder's and a
    decoder's), each with the kinds its blocks have."""
    if not report.block_names:
        return _block_table(report, list(range(len(report.layers_before))), str)
    stacks = list(dict.fromkeys(name.rpartition(" ")[0] for name in report.block_names))
    tables = []
    for stack in stacks:
        blocks = [i for i, name in enumerate(report.block_names) if name.rpartition(" ")[0] == stack]
        title = f"**{stack[:1].upper()}{stack[1:]}**"
        tables.append(f"{title}\n\n" + _block_table(report, blocks, report.block_names.__getitem__))
    return "\n\n".join(tables)


def _block_table(report: PruningReport, blocks: list[int], name: Callable[[int], str]) -> str:
    before_rows = [report.layers_before[i] for i in blocks]
    # A coupled kind gets a column only where it differs from its leader (KV heads under GQA); a kind only where
    # these blocks have it (an encoder's have no cross-attention heads).
    kinds = [
        kind
        for kind in _report_kinds(report)
        if any(b[kind.name] for b in before_rows)
        and (kind.follows is None or any(b[kind.name] != b[kind.follows] for b in before_rows))
    ]
    header = ["Layer"] + [f"{kind.label[:1].upper()}{kind.label[1:]} kept" for kind in kinds]
    keys = [kind.name for kind in kinds]
    rows = []
    for i in blocks:
        before, after = report.layers_before[i], report.layers_after[i]
        if i in report.removed_layers:
            rows.append([name(i)] + ["block removed"] + [""] * (len(keys) - 1))
            continue
        rows.append([name(i)] + [f"{after[k]} / {before[k]}" for k in keys])
    after_rows = [report.layers_after[i] for i in blocks]
    totals = {k: (sum(a[k] for a in after_rows), sum(b[k] for b in before_rows)) for k in keys}
    rows.append(["**all**"] + [f"**{a} / {b}** ({_ratio(a, b)})" for a, b in totals.values()])
    return _table(header, rows, "l" + "r" * len(keys))


def _cost_table(report: PruningReport) -> str:
    before, after = report.before, report.after
    figures = [
        ("Parameters", before.parameters, after.parameters),
        ("Parameters in the pruned blocks (attention + MLP)", before.block_parameters, after.block_parameters),
        (f"FLOPs per token (context of {after.seq_len} tokens)", before.flops_per_token, after.flops_per_token),
        ("FLOPs per token in the pruned blocks", before.block_flops_per_token, after.block_flops_per_token),
    ]
    rows = [[name, f"{b:,}", f"{a:,}", _ratio(a, b)] for name, b, a in figures]
    return _table(["", "Before", "After", "After / before"], rows, "lrrr")


def _latency_target_line(entry: Any) -> str | None:
    """What a ``latency=`` target asked, what the measured table predicted and what the pruned model measured."""
    needed = {"target_removed", "dense_ms", "predicted_ms", "measured_ms"}
    if not isinstance(entry, Mapping) or not needed <= set(entry):
        return None
    table = entry.get("table") or {}
    dense = entry["dense_ms"]
    return (
        f"Latency target: remove {entry['target_removed']:.0%} of the forward latency at batch "
        f"{_fmt(table.get('batch_size'))} x {_fmt(table.get('seq_len'))} tokens on {_fmt(table.get('device'))}. "
        f"The latency table measured before pruning predicted {1 - entry['predicted_ms'] / dense:.0%}; the pruned "
        f"model measured {dense:.2f} -> {entry['measured_ms']:.2f} ms ({1 - entry['measured_ms'] / dense:.0%} less)."
    )


def _latency_section(extra: Mapping[str, Any]) -> str | None:
    measured = [(label, extra.get(key)) for label, key in (("Before", "latency_before"), ("After", "latency_after"))]
    measured = [(label, lat) for label, lat in measured if isinstance(lat, Mapping) and "median_ms" in lat]
    target = _latency_target_line(extra.get("latency"))
    if not measured:
        return None if target is None else "\n".join(["## Measured latency", "", target])
    rows = []
    for label, lat in measured:
        runs = lat.get("runs_ms") or []
        rows.append(
            [
                label + " pruning",
                f"{lat['median_ms']:.2f} ms" + (f" (median of {len(runs)} runs)" if runs else ""),
                _fmt(lat.get("batch_size")),
                _fmt(lat.get("seq_len")),
                _fmt(lat.get("device")),
                _fmt(lat.get("dtype")),
            ]
        )
    lines = [
        "## Measured latency",
        "",
        "Forward pass on random token ids, without a KV cache.",
        "",
        _table(["", "Latency", "Batch", "Sequence length", "Device", "dtype"], rows, "lrrrll"),
    ]
    setting = ("batch_size", "seq_len", "device", "dtype")
    if len(measured) == 2 and all(measured[0][1].get(k) == measured[1][1].get(k) for k in setting):
        speedup = measured[0][1]["median_ms"] / measured[1][1]["median_ms"]
        lines += ["", f"Measured speedup under the same setting: x{speedup:.2f}."]
    if target is not None:
        lines += ["", target]
    return "\n".join(lines)


def _yaml_block(data: Any) -> str:
    return "```yaml\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip() + "\n```"


def _calibration_lines(extra: Mapping[str, Any]) -> list[str]:
    """What the one-shot path calibrated on and what its reconstruction did (when it ran)."""
    lines = []
    data = extra.get("calibration")
    if isinstance(data, Mapping):
        if data.get("self_generated"):
            where = "text sampled from the model itself (self-calibration, seed " + f"{data.get('seed')})"
        else:
            where = f"`{data.get('source')}`"
        tokens = f", {data['tokens']:,} tokens" if isinstance(data.get("tokens"), int) else ""
        lines.append(f"- Calibration data: {where}, {data.get('sequences')} sequences{tokens}.")
    fix = extra.get("reconstruction")
    if isinstance(fix, Mapping):
        before, after = fix.get("mean_held_out_error_pruned", 0.0), fix.get("mean_held_out_error_after", 0.0)
        lines.append(
            f"- Reconstruction without retraining: of {fix.get('projections')} pruned output projections, "
            f"{fix.get('with_bias')} got a bias compensation, {fix.get('refit_scales', 0)} a scale refit and "
            f"{fix.get('refit_weights', 0)} a weight refit, each where held-out calibration windows confirmed it "
            f"(mean relative reconstruction error {before:.3f} -> {after:.3f})."
        )
        if fix.get("reselected"):
            lines.append(
                f"- In {fix['reselected']} of them the units removed were chosen again on the block's calibration "
                "inputs (the ones the refit replaces best; the per-layer counts as planned)."
            )
    return lines


def _method_section(report: PruningReport) -> str:
    importance = report.extra.get("importance") or report.config.get("importance")
    lines = [
        "## How it was pruned",
        "",
        f"- Recipe: `{report.recipe}` (model type `{report.model_type}`), head size {report.head_dim}.",
    ]
    if isinstance(importance, str):
        lines.append(f"- Importance criterion: `{importance}`.")
    schedule = report.extra.get("schedule")
    if isinstance(schedule, str):
        lines.append(f"- Schedule: `{schedule}`.")
    lines += _calibration_lines(report.extra)
    steps = report.extra.get("training_steps")
    if isinstance(steps, int) and not isinstance(steps, bool):
        lines.append(f"- Training steps: {steps:,}.")
    if isinstance(importance, Mapping):
        lines += ["", "Importance criterion:", "", _yaml_block(dict(importance))]
    if isinstance(schedule, Mapping):
        lines += ["", "Schedule:", "", _yaml_block(dict(schedule))]
    lines += ["", "`PruningConfig` used:", "", _yaml_block(report.config)]
    return "\n".join(lines)


NOT_EVALUATED = (
    "## Evaluation\n\nQuality was not measured for this card: compare it with the original model on your own data "
    "before use (`hf-prune prune ... --eval-data FILE` measures both)."
)


NO_BASELINE = (
    "The dense model was not evaluated before pruning started, so there is no figure to compare with (in a Trainer "
    "run, `TrainingArguments(eval_on_start=True)` or `PruningTrainer` with an `eval_dataset` measures it)."
)
NO_PRUNED_FIGURE = "The pruned model was not evaluated after its final pruning update."


def _eval_section(rows: Sequence[_EvalRow], steps: Any = None) -> str | None:
    if not rows:
        return None
    has_before = any(r.before is not None for r in rows)
    has_dataset = any(r.dataset for r in rows)
    header = ["Metric"] + (["Dataset"] if has_dataset else []) + (["Before pruning"] if has_before else [])
    header.append("After pruning")
    body = []
    for r in rows:
        cells = [r.metric] + ([_fmt(r.dataset)] if has_dataset else []) + ([_fmt(r.before)] if has_before else [])
        body.append([*cells, _fmt(r.after)])
    align = "l" * (1 + has_dataset) + "r" * (1 + has_before)
    notes = [] if has_before else [NO_BASELINE]
    if not any(r.after is not None for r in rows):
        notes.append(NO_PRUNED_FIGURE)
    if isinstance(steps, Mapping):
        when = [
            f"the {what} model at step {steps[k]:,}"
            for k, what in (("before", "dense"), ("after", "pruned"))
            if k in steps
        ]
        if when:
            notes.append(f"Measured by the Trainer during training: {' and '.join(when)}.")
    return "## Evaluation\n\n" + _table(header, body, align) + "".join("\n\n" + note for note in notes)


def _listed(items: Sequence[str], conjunction: str = "and") -> str:
    """ "a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {conjunction} {items[-1]}" if items else ""


def _units_prose(report: PruningReport, conjunction: str = "and", prose: bool = False) -> str:
    """The leading kinds' units: "heads and neurons", "heads and experts" (``prose``: "attention heads and MLP
    neurons")."""
    leaders = [kind for kind in _report_kinds(report) if kind.follows is None]
    labels = [(kind.prose or kind.label) if prose else kind.label for kind in leaders]
    return _listed(labels, conjunction)


def _loading_section(report: PruningReport, class_name: str | None, repo: str) -> str:
    auto_name, _ = auto_class(class_name)
    loader = auto_name or class_name
    if report.vanilla_loadable and loader:
        return (
            f"## How to load it\n\nEvery layer keeps the same number of {_units_prose(report)}, so plain transformers "
            "loads it (hf_prune is not needed):\n\n"
            f'```python\nfrom transformers import {loader}\n\nmodel = {loader}.from_pretrained("{repo}")\n```'
        )
    lines = ["## How to load it", ""]
    if report.vanilla_loadable:  # the class is unknown: hf_prune reads it from config.json
        lines += ["With hf_prune (it reads the model class from `config.json`):", ""]
    else:
        # Blocks of one stack (an encoder's, a decoder's) may differ from another stack's and still be "uniform".
        stacks = [name.rpartition(" ")[0] for name in report.block_names] or [""] * len(report.layers_after)
        layouts = enumerate(report.layers_after)
        kept_layers = {(stacks[i], tuple(sorted(a.items()))) for i, a in layouts if i not in report.removed_layers}
        uniform = len(kept_layers) == len(set(stacks))
        why = (
            "This architecture derives the head size from the hidden size and the number of heads, so its config "
            "cannot express fewer heads on its own"
            if uniform
            else f"Layers keep different numbers of {_units_prose(report, 'or')}"
        )
        lines += [f"{why}; the config records the structure per layer. Load it with hf_prune:", ""]
    lines.append(f'```python\nimport hf_prune\n\nmodel = hf_prune.from_pretrained("{repo}")\n```')
    if not report.vanilla_loadable and auto_name:
        lines += [
            "",
            "or with transformers alone, which runs the loader code shipped in this repository (`modeling_pruned.py`, "
            "`surgery.py`; read it first):",
            "",
            f"```python\nfrom transformers import {auto_name}\n\n"
            f'model = {auto_name}.from_pretrained("{repo}", trust_remote_code=True)\n```',
        ]
    return "\n".join(lines)


def _summary(report: PruningReport, base_model: str | None) -> str:
    leaders = [kind for kind in _report_kinds(report) if kind.follows is None]
    totals = {
        kind.name: (sum(a[kind.name] for a in report.layers_after), sum(b[kind.name] for b in report.layers_before))
        for kind in leaders
    }
    names = {kind.name: kind.prose or kind.label for kind in leaders}
    origin = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "a transformers model"
    removed = [names[k] for k, (kept, total) in totals.items() if kept < total]
    blocks = len(report.layers_before)
    if report.removed_layers:
        criterion = report.extra.get("depth", {}).get("criterion")
        which = ", ".join(map(str, report.removed_layers))
        chosen = f", chosen by {criterion.replace('_', ' ')}" if criterion else ""
        removed.insert(0, f"{len(report.removed_layers)} of its {blocks} transformer blocks ({which}{chosen})")
    sublayers = report.extra.get("sublayers", {})
    for part, gone in (sublayers.get("removed") or {}).items():
        name = "attention" if part == "attention" else "MLP"
        criterion = sublayers.get("criterion", "").replace("_", " ")
        removed.append(
            f"the {name} sublayer of {len(gone)} block{'s' if len(gone) > 1 else ''} ({', '.join(map(str, gone))}"
            f"{', chosen by ' + criterion if criterion else ''})"
        )
    how = f"with {_listed(removed)} physically removed" if removed else "passed through hf_prune, unpruned"
    kept = _listed([f"{kept:,} of {total:,} {names[k]}" for k, (kept, total) in totals.items()])
    return (
        f"This model is {origin} {how} (structured pruning with hf_prune). It keeps {kept}: "
        f"{report.after.parameters:,} parameters instead of {report.before.parameters:,} "
        f"({report.parameter_ratio:.1%}), and a theoretical speedup of x{report.flops_ratio:.2f} in FLOPs per token "
        f"(x{report.block_flops_ratio:.2f} in the attention and MLP blocks alone)."
    )


EXPORTS_HEADING = "## Exported for deployment"


def _export_lines(entry: Mapping[str, Any]) -> list[str]:
    name = entry.get("file", "model")
    if entry.get("format") == "gguf":
        layout = "per-layer counts" if entry.get("layout") == "per_layer" else "the same counts in every layer"
        return [
            f"- **llama.cpp** (GGUF, `{entry.get('outtype')}`, llama.cpp architecture `{entry.get('arch')}`, "
            f'{layout}): `{name}`. Run it with `llama-cli -m {name} -p "..."` or `llama-server -m {name}`, or from '
            f'Python with llama-cpp-python: `Llama(model_path="{name}")`.'
        ]
    diff = entry.get("max_abs_diff")
    checked = f", logits within {diff:.1e} of PyTorch's when exported" if isinstance(diff, float) else ""
    inputs = ", ".join(f"`{n}`" for n in entry.get("inputs", [])) or "the tokenizer's outputs"
    return [
        f"- **ONNX Runtime** (ONNX opset {entry.get('opset')}, fp32, dynamic batch and sequence axes{checked}): "
        f'`{name}`. Run it with `onnxruntime.InferenceSession("{name}").run(None, feeds)`, where `feeds` holds '
        f'{inputs} as int64 arrays (from the tokenizer with `return_tensors="np"`).'
    ]


def exports_section(exports: Sequence[Mapping[str, Any]]) -> str | None:
    """The card section listing the runtimes a checkpoint was exported to and how to run each file."""
    if not exports:
        return None
    lines = [
        EXPORTS_HEADING,
        "",
        "Exported from this checkpoint with `hf-prune export` (files not part of this "
        "folder unless uploaded next to it):",
        "",
    ]
    for entry in exports:
        lines += _export_lines(entry)
    return "\n".join(lines)


def with_exports_section(card_text: str, exports: Sequence[Mapping[str, Any]]) -> str:
    """``card_text`` with its "Exported for deployment" section replaced (or appended) by one for ``exports``."""
    section = exports_section(exports) or ""
    start = card_text.find(EXPORTS_HEADING + "\n")
    if start < 0:
        return card_text.rstrip("\n") + "\n\n" + section + "\n" if section else card_text
    end = card_text.find("\n## ", start + len(EXPORTS_HEADING))
    rest = card_text[end + 1 :] if end >= 0 else ""
    head = card_text[:start]
    body = (section + "\n\n" if section else "") + rest
    return (head + body).rstrip("\n") + "\n"


# -- picture --------------------------------------------------------------------------------------------------------


def _kept_masks(report: PruningReport) -> list[list[list[float]]] | None:
    """Per leading kind (table order), kept (1) / removed (0) per original unit of each layer; None if
    ``report.kept`` does not say."""
    if len(report.kept) != len(report.layers_after):
        return None
    masks = []
    for kind in (k for k in _report_kinds(report) if k.follows is None):
        width = max(b[kind.name] for b in report.layers_before)
        rows = []
        for kept, before, after in zip(report.kept, report.layers_before, report.layers_after, strict=True):
            keep = set(kept.get(f"keep_{kind.name}", []))
            if len(keep) != after[kind.name]:
                return None  # indices that disagree with the counts would draw a wrong picture
            rows.append([float(j in keep) if j < before[kind.name] else math.nan for j in range(width)])
        masks.append(rows)
    return masks


def structure_png(report: PruningReport) -> bytes:
    """A heat map of the units of each kind each layer keeps (PNG bytes), drawn with matplotlib's Agg backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    layers = len(report.layers_after)
    figure = Figure(figsize=(10, min(12.0, 1.6 + 0.3 * layers)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    masks = _kept_masks(report)
    if masks is not None:
        colors = ListedColormap(["#e5e7eb", "#15803d"]).with_extremes(bad="white")
        leaders = [kind for kind in _report_kinds(report) if kind.follows is None]
        widths = [len(mask[0]) if mask else 1 for mask in masks]
        # Narrow kinds (heads, experts) get narrow panels; hundreds of neurons are smoothed, not drawn one by one.
        ratios = [1 if width <= 64 else 3 for width in widths]
        panels = figure.subplots(1, len(masks), width_ratios=ratios, squeeze=False)[0]
        for axes, mask, kind, width in zip(panels, masks, leaders, widths, strict=True):
            interpolation = "nearest" if width <= 64 else "antialiased"
            axes.imshow(mask, cmap=colors, vmin=0, vmax=1, aspect="auto", interpolation=interpolation)
            axes.set_title(f"Kept {kind.prose or kind.label} (green)")
            axes.set_xlabel("index before pruning")
            axes.set_ylabel("layer")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:  # only the counts are known: the fraction each layer keeps
        kinds = _report_kinds(report)
        keys = [kind.name for kind in kinds]
        pairs = zip(report.layers_after, report.layers_before, strict=True)
        fractions = [[a[k] / b[k] if b[k] else math.nan for k in keys] for a, b in pairs]
        axes = figure.subplots()
        image = axes.imshow(fractions, cmap="Greens", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        axes.set_xticks(range(len(keys)), [kind.label for kind in kinds])
        axes.set_ylabel("layer")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title("Fraction kept per layer")
        figure.colorbar(image, ax=axes)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


# -- public API -----------------------------------------------------------------------------------------------------


def build_model_card(
    report: PruningReport,
    *,
    base_model: str | None = None,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
    eval_results: Sequence[EvalResult] | Mapping[str, Any] | None = None,
    model_class_name: str | None = None,
    config: Any = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    exports: Sequence[Mapping[str, Any]] | None = None,
) -> ModelCard:
    """The model card of a pruned model, from its :class:`PruningReport`.

    Args:
        report: what the pruning run did. ``report.extra`` may hold ``"schedule"``, ``"importance"``, ``"eval"``,
            ``"latency_before"`` / ``"latency_after"`` (:meth:`Latency.to_dict`); each is shown only when present.
        base_model: Hub id of the model that was pruned; by default ``config._name_or_path`` when it is a Hub id.
        license: license id (``apache-2.0``...), with ``license_name`` / ``license_link`` for ``license: other``.
        eval_results: see :func:`evaluation`; by default ``report.extra["eval"]``.
        model_class_name: transformers class (``LlamaForCausalLM``), for ``pipeline_tag`` and the loading code; by
            default ``config.architectures[0]``.
        config: the model's config, read for the two defaults above.
        repo_id: Hub repo the card will live in, for the loading code (else a ``<repo_id>`` placeholder, which
            :func:`hf_prune.push_to_hub` fills in).
        model_name: name in ``model-index`` (only used with evaluation results).
        exports: the exports recorded in the folder (``exports.json``), for the "Exported for deployment" section.
    """
    if config is not None:
        base_model = base_model or hub_model_id(getattr(config, "_name_or_path", None))
        model_class_name = model_class_name or next(iter(getattr(config, "architectures", None) or []), None)
    if base_model is not None:
        validate_repo_id(base_model)
    _, pipeline_tag = auto_class(model_class_name)
    eval_results = eval_results if eval_results is not None else report.extra.get("eval")
    rows, model_index = evaluation(eval_results, pipeline_tag)
    if model_index and not model_name:
        model_name = repo_id.split("/")[-1] if repo_id else f"{(base_model or report.model_type).split('/')[-1]}-pruned"
    data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        license=license,
        license_name=license_name,
        license_link=license_link,
        pipeline_tag=pipeline_tag,
        tags=list(TAGS),
        eval_results=model_index or None,
        model_name=model_name if model_index else None,
    )
    title = repo_id.split("/")[-1] if repo_id else (f"{base_model.split('/')[-1]} (pruned)" if base_model else None)
    sections = [
        f"# {title or 'Pruned ' + report.model_type + ' model'}",
        _summary(report, base_model),
        _loading_section(report, model_class_name, repo_id or REPO_PLACEHOLDER),
        "## What was removed\n\n" + _structure_table(report),
        f"![Kept {_units_prose(report, prose=True)} per layer]({PICTURE_NAME})",
        "## Size and compute\n\n"
        + _cost_table(report)
        + "\n\nCounted by hf_prune on the model itself, as saved here (with the embeddings and whatever head "
        "the checkpoint holds): FLOPs are 2 x the multiply-accumulates of every linear layer, plus attention scores "
        f"over a context of {report.after.seq_len} tokens. Theoretical speedup (FLOPs before / after): "
        f"x{report.flops_ratio:.2f} for the whole model, x{report.block_flops_ratio:.2f} for the pruned blocks.",
        _latency_section(report.extra),
        _eval_section(rows, eval_results.get("steps") if isinstance(eval_results, Mapping) else None) or NOT_EVALUATED,
        _method_section(report),
        exports_section(exports or []),
    ]
    body = "\n\n".join(s for s in sections if s) + "\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def card_files(report: PruningReport, **card_args: Any) -> dict[str, str | bytes]:
    """``README.md`` (the card) and the picture it shows, as ``{file name: content}`` (see ``save_pretrained``'s
    ``extra_files``); ``card_args`` are those of :func:`build_model_card`."""
    return {PICTURE_NAME: structure_png(report), CARD_NAME: str(build_model_card(report, **card_args))}


def _atomic_write(path: Path, content: str | bytes) -> None:
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_card(folder: str | os.PathLike[str], report: PruningReport, **card_args: Any) -> Path:
    """Write ``README.md`` and ``pruning_structure.png`` into a saved checkpoint folder; returns the card's path.

    Each file is written to a temporary file and renamed over the old one, the picture first, so a reader never
    sees half a file or a card that shows a missing picture. ``card_args`` are those of :func:`build_model_card`;
    by default the model class is read from the folder's ``config.json``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"'{folder}' is not a directory; save the model first (hf_prune.save_pretrained).")
    if not card_args.get("model_class_name") and card_args.get("config") is None:
        config_path = folder / "config.json"
        if config_path.is_file():
            architectures = json.loads(config_path.read_text(encoding="utf-8")).get("architectures") or []
            card_args["model_class_name"] = next(iter(architectures), None)
    files = card_files(report, **card_args)
    for name in (PICTURE_NAME, CARD_NAME):
        _atomic_write(folder / name, files[name])
    return folder / CARD_NAME
