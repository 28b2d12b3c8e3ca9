"""The model card states what the PruningReport says, leaves out what nobody measured, and is valid Hub metadata."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

import hf_prune
from hf_prune import card as card_module
from hf_prune.card import PICTURE_NAME, REPO_PLACEHOLDER, auto_class, build_model_card, hub_model_id, write_card

from .architectures import CASES_BY_NAME, STRUCTURE_ONLY
from .hub_server import LocalHub

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LATENCY = {
    "median_ms": 12.5,
    "runs_ms": [12.0, 12.5, 13.0],
    "batch_size": 8,
    "seq_len": 128,
    "device": "CPU x86_64 (4 threads)",
    "dtype": "float32",
    "threads": 4,
}


def _pruned(name: str, **overrides: object) -> tuple[torch.nn.Module, hf_prune.PruningReport]:
    model = CASES_BY_NAME[name].build()
    report = hf_prune.prune(model, heads=0.5, neurons=0.5, **{**STRUCTURE_ONLY, **overrides})
    return model, report


@pytest.fixture(scope="module")
def uniform() -> tuple[torch.nn.Module, hf_prune.PruningReport]:
    return _pruned("llama")


@pytest.fixture(scope="module")
def heterogeneous() -> tuple[torch.nn.Module, hf_prune.PruningReport]:
    return _pruned("llama", protected_layers=[0])


def _section(text: str, title: str) -> str:
    """The body of the Markdown section ``## title`` (up to the next ``## ``)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_card_states_the_report_and_nothing_else(uniform: tuple, tmp_path: Path) -> None:
    model, report = uniform
    hf_prune.save_pretrained(model, tmp_path / "out")

    path = write_card(tmp_path / "out", report)

    card = ModelCard.load(path)
    assert card.data.to_dict() == {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",  # from config.json's architectures: LlamaForCausalLM
        "tags": ["pruned", "structured-pruning", "hf-prune"],
    }  # no base_model (built from a config: nothing to name), no license, no model-index
    text = card.text
    rows = [line.split("|")[1:-1] for line in _section(text, "What was removed").splitlines() if line.startswith("| ")]
    assert rows[0] == [" Layer ", " Heads kept ", " KV heads kept ", " Neurons kept "]
    for i, (before, after) in enumerate(zip(report.layers_before, report.layers_after, strict=True)):
        expected = [f"{after[k]} / {before[k]}" for k in ("heads", "kv_heads", "neurons")]
        assert [cell.strip() for cell in rows[1 + i]] == [str(i), *expected]
    size = _section(text, "Size and compute")
    assert f"| Parameters | {report.before.parameters:,} | {report.after.parameters:,} |" in size
    assert f"{report.before.flops_per_token:,} | {report.after.flops_per_token:,}" in size
    assert f"x{report.flops_ratio:.2f}" in size

    # Vanilla-loadable: plain transformers, nothing else.
    snippet = f'model = AutoModelForCausalLM.from_pretrained("{REPO_PLACEHOLDER}")'
    assert _python_blocks(_section(text, "How to load it")) == [
        f"from transformers import AutoModelForCausalLM\n\n{snippet}\n"
    ]
    # Not measured or not given: absent rather than guessed; quality, the first question, gets one plain line.
    for missing in ("Measured latency", "Schedule", "Training steps", "huggingface.co/", "| Metric |"):
        assert missing not in text
    assert _section(text, "Evaluation").strip().startswith("Quality was not measured for this card")
    assert "- Importance criterion: `magnitude`." in _section(text, "How it was pruned")
    assert yaml.safe_load(_section(text, "How it was pruned").split("```yaml\n")[1].split("```")[0]) == report.config

    assert f"]({PICTURE_NAME})" in text
    assert (tmp_path / "out" / PICTURE_NAME).read_bytes().startswith(PNG_MAGIC)
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_heterogeneous_card_gives_both_ways_to_load(heterogeneous: tuple) -> None:
    _, report = heterogeneous
    assert not report.vanilla_loadable

    text = build_model_card(report, model_class_name="LlamaForCausalLM", repo_id="me/tiny").text

    assert _python_blocks(_section(text, "How to load it")) == [
        'import hf_prune\n\nmodel = hf_prune.from_pretrained("me/tiny")\n',
        'from transformers import AutoModelForCausalLM\n\nmodel = AutoModelForCausalLM.from_pretrained("me/tiny", '
        "trust_remote_code=True)\n",
    ]
    table = _section(text, "What was removed")
    assert "| 0 | 8 / 8 | 2 / 2 | 96 / 96 |" in table  # the protected layer
    assert "| 1 | 4 / 8 | 1 / 2 | 48 / 96 |" in table


def test_bert_card_has_no_kv_column_and_loads_through_its_auto_class() -> None:
    model, report = _pruned("bert")
    card = build_model_card(report, config=model.config, model_class_name=type(model).__name__)

    assert card.data.pipeline_tag == "text-classification"
    assert "KV heads" not in card.text
    assert 'AutoModelForSequenceClassification.from_pretrained("<repo_id>", trust_remote_code=True)' in card.text


@pytest.mark.parametrize(
    ("class_name", "expected"),
    [
        ("LlamaForCausalLM", ("AutoModelForCausalLM", "text-generation")),
        ("GPT2LMHeadModel", ("AutoModelForCausalLM", "text-generation")),  # by transformers' mapping, not suffix
        ("BertForSequenceClassification", ("AutoModelForSequenceClassification", "text-classification")),
        ("Qwen2ForTokenClassification", ("AutoModelForTokenClassification", "token-classification")),
        ("DistilBertForQuestionAnswering", ("AutoModelForQuestionAnswering", "question-answering")),
        ("RobertaForMaskedLM", ("AutoModelForMaskedLM", "fill-mask")),
        ("BertModel", ("AutoModel", "feature-extraction")),
        ("SomeFutureForCausalLM", ("AutoModelForCausalLM", "text-generation")),  # unknown to transformers: suffix
        ("BertForMultipleChoice", (None, None)),  # no pipeline tag: none is claimed
        (None, (None, None)),
    ],
)
def test_auto_class_and_pipeline_tag(class_name: str | None, expected: tuple) -> None:
    assert auto_class(class_name) == expected


def test_unknown_class_gives_no_pipeline_tag_and_hf_prune_loading(uniform: tuple) -> None:
    _, report = uniform
    card = build_model_card(report)
    assert "pipeline_tag" not in card.data.to_dict()
    assert _python_blocks(card.text) == [f'import hf_prune\n\nmodel = hf_prune.from_pretrained("{REPO_PLACEHOLDER}")\n']


def test_base_model_comes_from_a_hub_id_never_a_local_path(uniform: tuple, tmp_path: Path) -> None:
    model, report = uniform
    config = copy.deepcopy(model.config)

    config._name_or_path = "meta-llama/Llama-3.2-1B"
    card = build_model_card(report, config=config)
    assert card.data.base_model == "meta-llama/Llama-3.2-1B"
    assert "[meta-llama/Llama-3.2-1B](https://huggingface.co/meta-llama/Llama-3.2-1B)" in card.text

    for local in (str(tmp_path), "./models/llama", "~/llama"):
        config._name_or_path = local
        assert build_model_card(report, config=config).data.base_model is None
    (tmp_path / "relative").mkdir()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert hub_model_id("relative") is None  # an existing folder, even if it reads like a repo name
    finally:
        os.chdir(cwd)
    assert build_model_card(report, config=config, base_model="org/base").data.base_model == "org/base"
    with pytest.raises(ValueError):
        build_model_card(report, base_model="/not/a/hub/id")


def test_license_is_carried_over_from_the_source_card(uniform: tuple, tmp_path: Path) -> None:
    _, report = uniform
    (tmp_path / "README.md").write_text("---\nlicense: other\nlicense_name: llama3\nlicense_link: LICENSE\n---\n")

    inherited = card_module.source_license(tmp_path)
    assert inherited == {"license": "other", "license_name": "llama3", "license_link": "LICENSE"}
    data = build_model_card(report, **inherited).data
    assert (data.license, data.license_name, data.license_link) == ("other", "llama3", "LICENSE")
    assert card_module.source_license(tmp_path / "no-such-folder") == {}
    assert build_model_card(report, license="mit").data.license == "mit"


def test_latency_is_shown_only_as_measured(uniform: tuple) -> None:
    _, report = uniform
    after_only = copy.deepcopy(report)
    after_only.extra["latency_after"] = LATENCY

    section = _section(build_model_card(after_only).text, "Measured latency")
    assert "| After pruning | 12.50 ms (median of 3 runs) | 8 | 128 | CPU x86_64 (4 threads) | float32 |" in section
    assert "Before pruning" not in section and "speedup" not in section

    both = copy.deepcopy(after_only)
    both.extra["latency_before"] = {**LATENCY, "median_ms": 25.0}
    section = _section(build_model_card(both).text, "Measured latency")
    assert "| Before pruning | 25.00 ms" in section and "Measured speedup under the same setting: x2.00." in section

    both.extra["latency_before"]["batch_size"] = 1  # different settings: no speedup is claimed
    assert "speedup" not in _section(build_model_card(both).text, "Measured latency")


def test_schedule_and_importance_from_the_training_callback(uniform: tuple) -> None:
    _, report = uniform
    trained = copy.deepcopy(report)
    trained.extra.update(
        {"schedule": {"kind": "cubic", "begin": 0.0, "end": 0.7}, "importance": "taylor", "training_steps": 1200}
    )

    section = _section(build_model_card(trained).text, "How it was pruned")
    assert "- Importance criterion: `taylor`." in section and "- Training steps: 1,200." in section
    assert yaml.safe_load(section.split("Schedule:\n\n```yaml\n")[1].split("```")[0]) == trained.extra["schedule"]


def test_eval_results_before_and_after(uniform: tuple) -> None:
    _, report = uniform
    metrics = {
        "before": {"eval_loss": 2.5, "eval_accuracy": 0.91, "eval_runtime": 3.2, "epoch": 1.0},
        "after": {"eval_loss": 2.75, "eval_accuracy": 0.875, "eval_samples_per_second": 100.0},
        "dataset": {"type": "wikitext", "name": "WikiText-2", "config": "wikitext-2-raw-v1", "split": "test"},
    }

    card = build_model_card(report, model_class_name="LlamaForCausalLM", eval_results=metrics, repo_id="me/tiny")

    # model-index describes this model: the pruned scores only, under the Hub's own EvalResult format.
    assert card.data.model_name == "tiny"
    assert [
        (r.metric_type, r.metric_value, r.task_type, r.dataset_type, r.dataset_split) for r in card.data.eval_results
    ] == [
        ("loss", 2.75, "text-generation", "wikitext", "test"),
        ("accuracy", 0.875, "text-generation", "wikitext", "test"),
    ]
    section = _section(card.text, "Evaluation")
    assert "| loss | WikiText-2 (wikitext-2-raw-v1, test) | 2.5 | 2.75 |" in section
    assert "| accuracy | WikiText-2 (wikitext-2-raw-v1, test) | 0.91 | 0.875 |" in section
    assert "runtime" not in section and "per_second" not in section and "epoch" not in section

    # The callback's report.extra["eval"] is the default, and without a dataset no model-index is made up.
    report_with_eval = copy.deepcopy(report)
    report_with_eval.extra["eval"] = {"before": {"eval_loss": 2.5}, "after": {"eval_loss": 2.75}}
    card = build_model_card(report_with_eval, model_class_name="LlamaForCausalLM")
    assert "model-index" not in card.data.to_dict()
    assert "| loss | 2.5 | 2.75 |" in _section(card.text, "Evaluation")

    result = EvalResult(
        task_type="text-classification", dataset_type="glue", dataset_name="GLUE SST-2", metric_type="accuracy",
        metric_value=0.9, dataset_config="sst2",
    )  # fmt: skip
    card = build_model_card(report, eval_results=[result], base_model="org/base")
    assert card.data.eval_results == [result] and card.data.model_name == "base-pruned"
    assert "| accuracy | GLUE SST-2 (sst2) | 0.9 |" in _section(card.text, "Evaluation")
    with pytest.raises(ValueError, match="unknown evaluation key"):
        build_model_card(report, eval_results={"after": {}, "datasets": {}})


def test_eval_section_says_which_stage_is_missing_and_when_each_was_measured(uniform: tuple) -> None:
    """One plain line for a stage nobody measured; figures taken during training say at which step."""
    _, report = uniform
    only_dense = {"before": {"loss": 2.5}, "after": None, "dataset": {}, "task_type": None, "steps": {"before": 0}}
    section = _section(build_model_card(report, eval_results=only_dense).text, "Evaluation")
    assert "| loss | 2.5 | — |" in section
    assert "The pruned model was not evaluated after its final pruning update." in section
    assert "Measured by the Trainer during training: the dense model at step 0." in section
    assert "dense model was not evaluated" not in section
    only_pruned = {"before": None, "after": {"loss": 2.75}, "steps": {"after": 1200}}
    section = _section(build_model_card(report, eval_results=only_pruned).text, "Evaluation")
    assert section.count("not evaluated") == 1 and "The dense model was not evaluated before pruning" in section
    assert "the pruned model at step 1,200." in section


def test_card_parses_back_round_trips_and_validates_on_the_hub(
    heterogeneous: tuple, local_hub: LocalHub, tmp_path: Path
) -> None:
    _, report = heterogeneous
    metrics = {"after": {"eval_accuracy": 0.8}, "before": {"eval_accuracy": 0.9}, "dataset": {"type": "imdb"}}
    card = build_model_card(
        report, base_model="org/base", license="apache-2.0", eval_results=metrics, model_class_name="LlamaForCausalLM"
    )
    card.save(tmp_path / "README.md")

    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.to_dict() == card.data.to_dict()
    assert loaded.text == card.text
    assert ModelCardData(**loaded.data.to_dict()).to_dict() == card.data.to_dict()  # model-index <-> eval_results
    assert loaded.data.to_dict()["model-index"][0]["results"][0]["metrics"] == [{"type": "accuracy", "value": 0.8}]

    loaded.validate()  # the Hub's own validation endpoint (raises on a refused card)
    assert ("POST", "/api/validate-yaml") in local_hub.requests


def test_picture_without_kept_indices_shows_fractions(uniform: tuple) -> None:
    _, report = uniform
    counts_only = copy.deepcopy(report)
    counts_only.kept = []
    assert card_module._kept_masks(counts_only) is None
    assert card_module.structure_png(counts_only).startswith(PNG_MAGIC)

    masks = card_module._kept_masks(report)
    assert masks is not None
    assert [sum(row) for row in masks[0]] == [a["heads"] for a in report.layers_after]
    assert [sum(row) for row in masks[1]] == [a["neurons"] for a in report.layers_after]


def test_write_card_is_atomic(uniform: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, report = uniform
    with pytest.raises(FileNotFoundError):
        write_card(tmp_path / "missing", report)
    write_card(tmp_path, report)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    calls = []

    def failing_replace(src: str, dst: str) -> None:
        calls.append(dst)
        raise OSError("disk full")

    monkeypatch.setattr(card_module.os, "replace", failing_replace)
    changed = copy.deepcopy(report)
    changed.extra["latency_after"] = LATENCY
    with pytest.raises(OSError, match="disk full"):
        write_card(tmp_path, changed)

    assert len(calls) == 1  # the picture failed first: the card was never touched
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no half file, no temp file left
