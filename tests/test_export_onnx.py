"""ONNX export (ONNX Runtime): pruned models of any layout give PyTorch's logits at any batch and sequence size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import hf_prune
from hf_prune.export import ExportError, export_checkpoint, onnx_export
from hf_prune.structure import ModelStructure

from .cli_run import run_cli
from .export_models import pruned_encoder, pruned_llama


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """(checkpoint, ONNX file) of a pruned tiny BERT and a pruned tiny Llama GQA, both with per-layer counts."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, folder in (("bert", pruned_encoder(root / "bert")), ("llama", pruned_llama(root / "llama"))):
        export_checkpoint(folder, root / f"{name}.onnx", "onnx")
        out[name] = (folder, root / f"{name}.onnx")
    return out


def _feeds(session: onnxruntime.InferenceSession, batch: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + seq)
    ids = rng.integers(0, vocab, (batch, seq), dtype=np.int64)
    values = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {i.name: values[i.name] for i in session.get_inputs()}


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_onnx_runtime_matches_pytorch_at_any_shape(exported: dict[str, tuple[Path, Path]], name: str) -> None:
    folder, path = exported[name]
    model = hf_prune.from_pretrained(folder).eval()
    shapes = ModelStructure(model).shapes()
    assert len(set(shapes)) > 1  # per-layer differences
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    vocab = model.config.vocab_size
    for batch, seq in ((1, 7), (4, 12)):  # neither is the traced example's (2, 8): the axes are dynamic
        feeds = _feeds(session, batch, seq, vocab)
        (got,) = session.run(None, feeds)
        with torch.no_grad():
            expected = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4


def test_graph_axes_are_named_and_dynamic(exported: dict[str, tuple[Path, Path]]) -> None:
    graph = onnx.load(str(exported["llama"][1])).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    for tensor in [*graph.input, *graph.output]:
        dims = tensor.type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[1].dim_param  # symbolic, not fixed sizes
    assert [o.name for o in graph.output] == ["logits"]
    bert = onnx.load(str(exported["bert"][1])).graph
    assert [i.name for i in bert.input] == ["input_ids", "attention_mask", "token_type_ids"]


def test_the_check_is_recorded(exported: dict[str, tuple[Path, Path]]) -> None:
    from hf_prune.export.record import read_exports

    (entry,) = read_exports(exported["bert"][0])
    assert entry["format"] == "onnx" and entry["file"] == "bert.onnx"
    assert 0 <= entry["max_abs_diff"] <= 1e-4


def test_a_graph_that_disagrees_with_pytorch_is_not_written(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "max_abs_diff", lambda *args: 0.5)
    with pytest.raises(ExportError, match=r"differ from PyTorch's by up to 0.5 \(tolerance 0.0001"):
        export_checkpoint(exported["bert"][0], tmp_path / "m.onnx", "onnx", record=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_input(exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ExportError, match="unknown ONNX outtype 'f16'; valid ones are: f32"):
        export_checkpoint(exported["bert"][0], tmp_path / "m.onnx", "onnx", outtype="f16")
    code, _, err = run_cli(capsys, "export", tmp_path, "--format", "onnx", "--output", tmp_path / "m.onnx")
    assert code == 2 and "not a pruned or plain transformers checkpoint" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # about 5-20 s per family on one core; CI checks BERT and Llama above
@pytest.mark.parametrize(
    ("name", "ranking"),
    [
        ("roberta", "global"),
        ("distilbert", "global"),
        ("mpnet-base", "uniform"),  # MPNet's shared relative-attention bias keeps the same heads in every block
        ("gpt2", "global"),
        ("qwen3", "global"),
        ("gemma3", "global"),
        ("phi3", "global"),
    ],
)
def test_every_family_exports_and_matches_pytorch(tmp_path: Path, name: str, ranking: str) -> None:
    folder = pruned_encoder(tmp_path / name, name, ranking)  # any row of the test matrix, pruned and saved
    info = export_checkpoint(folder, tmp_path / "m.onnx", "onnx", record=False)
    assert info["max_abs_diff"] <= 1e-4  # checked at two batch/sequence sizes inside the export
