"""sentence-transformers folders pruned by `hf-prune prune`: the pipeline files come along, and
`SentenceTransformer(pruned_path)` computes hf_prune's embeddings (hf_prune.sentence_files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from huggingface_hub import HfApi
from sentence_transformers import SentenceTransformer

import hf_prune
from hf_prune.checkpoint import save_pretrained
from hf_prune.evaluation import mean_embeddings
from hf_prune.sentence_files import SentenceTransformersError, sentence_transformers_files

from .cli_run import run_cli
from .hub_server import LocalHub
from .text_data import byte_tokenizer, texts

HIDDEN = 32
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
POOLING = {
    "word_embedding_dimension": HIDDEN,
    "pooling_mode_cls_token": False,
    "pooling_mode_mean_tokens": True,
    "pooling_mode_max_tokens": False,
    "pooling_mode_mean_sqrt_len_tokens": False,
}
MAX_LENGTH = 40
PIPELINE = {
    "modules.json": MODULES,
    "1_Pooling/config.json": POOLING,
    "sentence_bert_config.json": {"max_seq_length": MAX_LENGTH, "do_lower_case": False},
    "config_sentence_transformers.json": {"__version__": {"sentence_transformers": "5.0.0"}},
}


def _bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=260,  # the byte tokenizer's ids
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return transformers.BertModel(config).eval()


def _qwen3() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=260,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return transformers.Qwen3Model(config).eval()


def _st_folder(path: Path, model: torch.nn.Module, **changes: Any) -> Path:
    """A sentence-transformers folder: the model, its tokenizer, the module files (``changes`` replace some)."""
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    for name, content in {**PIPELINE, **changes}.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(json.dumps(content))
    return path


def _hf_prune_embeddings(path: Path, sentences: list[str]) -> torch.Tensor:
    """Mean pooling + normalisation (what modules.json says) of hf_prune's own load of the pruned model."""
    batch = byte_tokenizer()(sentences, return_tensors="pt", padding=True, truncation=True, max_length=MAX_LENGTH)
    pooled = mean_embeddings(hf_prune.from_pretrained(path), [dict(batch)])
    return torch.nn.functional.normalize(pooled, dim=-1)


PRUNE = ("--heads", "0.5", "--neurons", "0.5", "--importance", "magnitude", "--no-reconstruct")


@pytest.mark.parametrize("ranking", ["uniform", "global"])
def test_pruned_pipeline_loads_in_sentence_transformers(
    ranking: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _st_folder(tmp_path / "st", _bert())
    output = tmp_path / "pruned"
    code, _, err = run_cli(capsys, "prune", source, *PRUNE, "--ranking", ranking, "--output", output)
    assert code == 0, err
    assert "carrying the sentence-transformers pipeline over" in err
    for name in PIPELINE:
        assert (output / name).read_bytes() == (source / name).read_bytes(), name

    # BERT's pruned head size is not in its config: the loader code saved with the model rebuilds it, which
    # sentence-transformers runs when given trust_remote_code=True (it passes it on to AutoModel).
    pruned = SentenceTransformer(str(output), device="cpu", trust_remote_code=True)
    assert [type(m).__name__ for m in pruned] == ["Transformer", "Pooling", "Normalize"]
    assert pruned.max_seq_length == MAX_LENGTH
    sentences = texts(5)
    embeddings = pruned.encode(sentences, convert_to_tensor=True)
    torch.testing.assert_close(embeddings, _hf_prune_embeddings(output, sentences), atol=1e-6, rtol=0)
    dense = SentenceTransformer(str(source), device="cpu").encode(sentences, convert_to_tensor=True)
    assert not torch.allclose(embeddings, dense, atol=1e-3), "the pruned model is not the dense one"


def test_uniform_vanilla_pipeline_loads_without_remote_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A uniform prune whose config can say so (Qwen3, as in Qwen3-Embedding) is a plain sentence-transformers model."""
    source = _st_folder(tmp_path / "st", _qwen3())
    output = tmp_path / "pruned"
    code, _, err = run_cli(capsys, "prune", source, *PRUNE, "--output", output)
    assert code == 0, err
    assert not (output / "modeling_pruned.py").exists(), "vanilla-loadable: no loader code"
    pruned = SentenceTransformer(str(output), device="cpu")
    assert pruned[0].auto_model.config.num_attention_heads == 2
    sentences = texts(4)
    embeddings = pruned.encode(sentences, convert_to_tensor=True)
    torch.testing.assert_close(embeddings, _hf_prune_embeddings(output, sentences), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"1_Pooling/config.json": {**POOLING, "word_embedding_dimension": 48}},
            "'1_Pooling/config.json' pools token embeddings of width 48, but the model's hidden size is 32",
        ),
        (
            {"modules.json": [{**MODULES[0], "path": "0_Transformer"}, *MODULES[1:]]},
            "the transformer of this sentence-transformers pipeline is in the subfolder '0_Transformer/'",
        ),
    ],
)
def test_pipeline_that_does_not_fit_is_refused_before_pruning(
    changes: dict[str, Any], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _st_folder(tmp_path / "st", _bert(), **changes)
    code, out, err = run_cli(capsys, "prune", source, *PRUNE, "--output", tmp_path / "pruned")
    assert code == 2 and out == ""
    assert message in err
    assert not (tmp_path / "pruned").exists()
    with pytest.raises(SentenceTransformersError):
        sentence_transformers_files(source, HIDDEN)


def test_plain_checkpoint_has_no_pipeline_files(tmp_path: Path) -> None:
    _bert().save_pretrained(tmp_path / "plain")
    assert sentence_transformers_files(tmp_path / "plain", HIDDEN) == {}


def test_pipeline_files_from_the_hub(local_hub: LocalHub, tmp_path: Path) -> None:
    source = _st_folder(tmp_path / "st", _bert())
    HfApi().create_repo("user/st-model")
    HfApi().upload_folder(repo_id="user/st-model", folder_path=source)
    files = sentence_transformers_files("user/st-model", HIDDEN)
    assert files == {name: (source / name).read_bytes() for name in PIPELINE}


@pytest.mark.parametrize("name", ["../outside.json", "/tmp/absolute.json"])
def test_extra_files_stay_inside_the_checkpoint(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be a relative path inside the checkpoint folder"):
        save_pretrained(_bert(), tmp_path / "out", extra_files={name: "{}"})
    assert not (tmp_path / "out").exists() and not (tmp_path / "outside.json").exists()
