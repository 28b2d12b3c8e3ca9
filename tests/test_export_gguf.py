"""GGUF export (llama.cpp): per-layer arrays where llama.cpp reads them, tensor shapes and names, the tokenizer,
quantized outtypes, and bad input refused before anything is written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers as T

import hf_prune
from hf_prune.export import ExportError, export_checkpoint, gguf_export
from hf_prune.structure import ModelStructure

from .cli_run import run_cli
from .export_models import (
    pruned_encoder,
    pruned_llama,
    pruned_mixtral,
    pruned_olmoe,
    pruned_qwen2_moe,
    pruned_qwen3_moe,
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf")
    return {
        "global": pruned_llama(root / "global", "global"),
        "uniform": pruned_llama(root / "uniform", "uniform"),
        "qwen2": pruned_llama(root / "qwen2", "global", T.Qwen2Config, T.Qwen2ForCausalLM),
        "qwen3": pruned_llama(root / "qwen3", "global", T.Qwen3Config, T.Qwen3ForCausalLM),
        "qwen3_uniform": pruned_llama(root / "qwen3_uniform", "uniform", T.Qwen3Config, T.Qwen3ForCausalLM),
        "bert": pruned_encoder(root / "bert"),
    }


def _field(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def _tensors(reader: gguf.GGUFReader) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in reader.tensors}


def _shapes(folder: Path) -> list:
    return ModelStructure(hf_prune.from_pretrained(folder)).shapes()


def test_non_uniform_llama_is_deci_with_per_layer_arrays(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = checkpoints["global"]
    shapes = _shapes(folder)
    assert len(set(shapes)) > 1  # the layers really differ
    info = export_checkpoint(folder, tmp_path / "m.gguf", "gguf", outtype="f32")
    assert (info["arch"], info["layout"]) == ("deci", "per_layer")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert _field(reader, "general.architecture") == "deci"
    assert _field(reader, "deci.block_count") == 3
    assert _field(reader, "deci.attention.head_count") == [s.heads for s in shapes] == [8, 4, 4]
    assert _field(reader, "deci.attention.head_count_kv") == [s.kv_heads for s in shapes] == [2, 1, 1]
    assert _field(reader, "deci.feed_forward_length") == [s.neurons for s in shapes]
    assert _field(reader, "deci.attention.key_length") == 16
    assert _field(reader, "deci.rope.dimension_count") == 16
    tensors = _tensors(reader)
    for i, s in enumerate(shapes):
        # GGUF lists dimensions innermost first: (in, out) for a linear layer.
        assert tensors[f"blk.{i}.attn_q.weight"].shape.tolist() == [64, s.heads * 16]
        assert tensors[f"blk.{i}.attn_k.weight"].shape.tolist() == [64, s.kv_heads * 16]
        assert tensors[f"blk.{i}.attn_v.weight"].shape.tolist() == [64, s.kv_heads * 16]
        assert tensors[f"blk.{i}.attn_output.weight"].shape.tolist() == [s.heads * 16, 64]
        assert tensors[f"blk.{i}.ffn_gate.weight"].shape.tolist() == [64, s.neurons]
        assert tensors[f"blk.{i}.ffn_down.weight"].shape.tolist() == [s.neurons, 64]
    assert "output.weight" in tensors  # untied head
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in tensors.values())


def test_tensors_are_the_models_with_q_k_rows_in_llama_cpp_rope_order(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    folder = checkpoints["global"]
    export_checkpoint(folder, tmp_path / "m.gguf", "gguf", outtype="f32")
    tensors = _tensors(gguf.GGUFReader(tmp_path / "m.gguf"))
    model = hf_prune.from_pretrained(folder)
    layer = model.model.layers[1]
    np.testing.assert_array_equal(
        np.asarray(tensors["token_embd.weight"].data), model.model.embed_tokens.weight.detach().numpy()
    )
    np.testing.assert_array_equal(
        np.asarray(tensors["blk.1.attn_v.weight"].data), layer.self_attn.v_proj.weight.detach().numpy()
    )
    # transformers rotates the halves of a head (dims j and j + 8 pair up); llama.cpp's normal RoPE rotates
    # neighbours (2j, 2j + 1): row 2j of a head in the file is row j of the model, row 2j + 1 is row j + 8.
    q_file = np.asarray(tensors["blk.1.attn_q.weight"].data)
    q_model = layer.self_attn.q_proj.weight.detach().numpy()
    for head in range(4):
        for j in range(8):
            np.testing.assert_array_equal(q_file[head * 16 + 2 * j], q_model[head * 16 + j])
            np.testing.assert_array_equal(q_file[head * 16 + 2 * j + 1], q_model[head * 16 + j + 8])
    k_file = np.asarray(tensors["blk.1.attn_k.weight"].data)
    np.testing.assert_array_equal(k_file[1], layer.self_attn.k_proj.weight.detach().numpy()[8])


def test_tokenizer_goes_with_the_file(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = checkpoints["global"]
    export_checkpoint(folder, tmp_path / "m.gguf", "gguf")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tokenizer = T.AutoTokenizer.from_pretrained(folder)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == len(tokenizer) == 300
    vocab = tokenizer.get_vocab()
    assert all(vocab[text] == index for index, text in enumerate(tokens))
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"  # a plain ByteLevel pre-tokenizer
    assert len(_field(reader, "tokenizer.ggml.merges")) > 0
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert _field(reader, "tokenizer.ggml.token_type")[vocab["<|endoftext|>"]] == gguf.TokenType.CONTROL


def test_sentencepiece_style_tokenizer_becomes_llama_cpp_llama_vocab(tmp_path: Path) -> None:
    from .export_models import sentencepiece_style_tokenizer, tiny_llama

    tokenizer = sentencepiece_style_tokenizer()
    hf_prune.save_pretrained(tiny_llama(len(tokenizer) + 4), tmp_path / "ckpt", tokenizer=tokenizer)  # padded rows
    export_checkpoint(tmp_path / "ckpt", tmp_path / "m.gguf", "gguf")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert _field(reader, "tokenizer.ggml.model") == "llama"
    tokens, types = _field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(tokenizer) + 4 and tokens[-1] == f"[PAD{len(tokenizer) + 3}]"
    vocab = tokenizer.get_vocab()
    assert types[vocab["<0x41>"]] == gguf.TokenType.BYTE and types[vocab["<s>"]] == gguf.TokenType.CONTROL
    assert _field(reader, "tokenizer.ggml.bos_token_id") == vocab["<s>"]
    scores = _field(reader, "tokenizer.ggml.scores")
    later, earlier = vocab["▁the"], vocab["▁"]
    assert scores[later] < scores[earlier]  # later merges score lower, as SentencePiece's BPE scores do


def test_uniform_export_uses_the_plain_architecture(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    info = export_checkpoint(checkpoints["uniform"], tmp_path / "m.gguf", "gguf", outtype="f16")
    assert (info["arch"], info["layout"]) == ("llama", "uniform")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.attention.head_count") == 4  # one number, not an array
    assert _field(reader, "llama.attention.head_count_kv") == 1
    tensors = _tensors(reader)
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_qwen_families(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    # Qwen2 per-layer: deci, which loads the q/k/v biases.
    export_checkpoint(checkpoints["qwen2"], tmp_path / "q2.gguf", "gguf", outtype="f32")
    reader = gguf.GGUFReader(tmp_path / "q2.gguf")
    assert _field(reader, "general.architecture") == "deci"
    tensors = _tensors(reader)
    assert tensors["blk.1.attn_q.bias"].shape.tolist() == [4 * 16]
    # Qwen3 uniform: its own architecture, halves rotated as in transformers (no permutation), q/k norms kept.
    export_checkpoint(checkpoints["qwen3_uniform"], tmp_path / "q3.gguf", "gguf", outtype="f32")
    tensors = _tensors(gguf.GGUFReader(tmp_path / "q3.gguf"))
    model = hf_prune.from_pretrained(checkpoints["qwen3_uniform"])
    np.testing.assert_array_equal(
        np.asarray(tensors["blk.0.attn_q.weight"].data), model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    )
    assert "blk.0.attn_q_norm.weight" in tensors
    # Qwen3 per-layer: no llama.cpp architecture holds it; the error says what is missing.
    with pytest.raises(ExportError, match="q/k RMSNorm") as err:
        export_checkpoint(checkpoints["qwen3"], tmp_path / "q3g.gguf", "gguf")
    assert "ONNX" in str(err.value)
    assert not (tmp_path / "q3g.gguf").exists()


def test_q8_0_quantizes_matrices_whose_rows_fit_its_blocks(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = checkpoints["global"]
    export_checkpoint(folder, tmp_path / "m.gguf", "gguf", outtype="q8_0")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = _tensors(reader)
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    q = tensors["blk.1.attn_q.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.Q8_0
    model = hf_prune.from_pretrained(folder)
    weight = model.model.layers[1].self_attn.v_proj.weight.detach().numpy()
    restored = gguf.quants.dequantize(tensors["blk.1.attn_v.weight"].data, gguf.GGMLQuantizationType.Q8_0)
    assert np.abs(restored.reshape(weight.shape) - weight).max() < 0.01 * np.abs(weight).max()
    # 56 neurons are no multiple of Q8_0's 32-wide blocks: that down projection falls back to f16.
    neurons = _field(reader, "deci.feed_forward_length")[1]
    expected = gguf.GGMLQuantizationType.Q8_0 if neurons % 32 == 0 else gguf.GGMLQuantizationType.F16
    assert tensors["blk.1.ffn_down.weight"].tensor_type == expected
    assert tensors["blk.1.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_llama3_rope_writes_rope_freqs_and_tied_embeddings_stay_tied(tmp_path: Path) -> None:
    from .export_models import bpe_tokenizer, tiny_llama

    tokenizer = bpe_tokenizer()
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}  # fmt: skip
    model = tiny_llama(len(tokenizer), rope_parameters=rope, tie_word_embeddings=True)
    hf_prune.save_pretrained(model, tmp_path / "ckpt", tokenizer=tokenizer)
    export_checkpoint(tmp_path / "ckpt", tmp_path / "m.gguf", "gguf", outtype="f32")
    tensors = _tensors(gguf.GGUFReader(tmp_path / "m.gguf"))
    assert "output.weight" not in tensors  # llama.cpp reuses token_embd, as transformers ties lm_head
    freqs = np.asarray(tensors["rope_freqs.weight"].data)
    # llama.cpp divides the plain RoPE frequencies by these: they must give transformers' own llama3 frequencies.
    plain = 1.0 / 500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    scaled = model.model.rotary_emb.inv_freq.to(torch.float64)
    np.testing.assert_allclose(freqs, (plain / scaled).numpy(), rtol=1e-5)
    assert freqs[0] == 1.0 and freqs[-1] == 8.0  # short wavelengths kept, long ones stretched by the factor


# -- bad input: a clear error, nothing written ------------------------------------------------------------------


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_unknown_outtype_lists_the_valid_ones(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"unknown GGUF outtype 'q9'.*f32, f16, q8_0"):
        export_checkpoint(checkpoints["global"], tmp_path / "m.gguf", "gguf", outtype="q9")
    with pytest.raises(ExportError, match=r"unknown export format 'tflite'.*gguf, onnx"):
        export_checkpoint(checkpoints["global"], tmp_path / "m.gguf", "tflite")
    assert _listing(tmp_path) == []


def test_llama_cpp_outtypes_need_llama_cpp_python(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # as if not installed
    with pytest.raises(ExportError, match=r"hf-prune\[llama-cpp\]"):
        export_checkpoint(checkpoints["global"], tmp_path / "m.gguf", "gguf", outtype="q4_k_m")
    assert _listing(tmp_path) == []


def test_not_a_checkpoint_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match=r"not a pruned or plain transformers checkpoint.*config\.json"):
        export_checkpoint(tmp_path / "empty", tmp_path / "m.gguf", "gguf")
    with pytest.raises(ExportError, match="is not a folder"):
        export_checkpoint(tmp_path / "missing", tmp_path / "m.gguf", "gguf")
    assert _listing(tmp_path) == ["empty"]


def test_unsupported_architecture_says_what_is_missing(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(
        ExportError, match=r"recipe 'bert' has no `gguf:` section.*llama, mistral, mixtral, olmoe, qwen2"
    ) as err:
        export_checkpoint(checkpoints["bert"], tmp_path / "m.gguf", "gguf")
    assert "--format onnx" in str(err.value)
    assert _listing(tmp_path) == []


def test_a_checkpoint_without_tokenizer_is_refused(tmp_path: Path) -> None:
    from .export_models import tiny_llama

    hf_prune.save_pretrained(tiny_llama(300), tmp_path / "ckpt")
    with pytest.raises(ExportError, match="no tokenizer"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "m.gguf", "gguf")
    assert _listing(tmp_path) == ["ckpt"]


def test_existing_output_is_kept_and_a_failed_write_leaves_nothing(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "m.gguf"
    target.write_bytes(b"previous")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_checkpoint(checkpoints["global"], target, "gguf")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_export, "_add_tensor", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_checkpoint(checkpoints["global"], target, "gguf", overwrite=True)
    assert target.read_bytes() == b"previous"
    assert _listing(tmp_path) == ["m.gguf"]


# -- CLI and the record ------------------------------------------------------------------------------------------


def test_cli_export(checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = checkpoints["uniform"]
    code, out, _ = run_cli(capsys, "export", folder, "--format", "gguf", "--output", tmp_path / "m.gguf")
    assert code == 0, out
    assert "llama.cpp architecture 'llama'" in out and "outtype f16" in out
    code, _, err = run_cli(capsys, "export", folder, "--format", "gguf", "--output", tmp_path / "m.gguf")
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(capsys, "export", folder, "--format", "gguf", "-o", tmp_path / "n.gguf", "--outtype", "x")
    assert code == 2 and "unknown GGUF outtype" in err
    assert (folder / "exports.json").is_file()


def test_export_is_recorded_in_the_card(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from hf_prune.export.record import read_exports

    folder = tmp_path / "ckpt"
    folder.mkdir()
    for path in checkpoints["uniform"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "exports.json").unlink(missing_ok=True)
    (folder / "README.md").write_text("# card\n\n## Evaluation\n\ntext\n", encoding="utf-8")
    export_checkpoint(folder, tmp_path / "a.gguf", "gguf", outtype="f32")
    export_checkpoint(folder, tmp_path / "b.gguf", "gguf", outtype="q8_0")
    export_checkpoint(folder, tmp_path / "c.gguf", "gguf", outtype="f32", overwrite=True)  # replaces the f32 entry
    assert [(e["file"], e["outtype"]) for e in read_exports(folder)] == [("b.gguf", "q8_0"), ("c.gguf", "f32")]
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert card.count("## Exported for deployment") == 1
    assert card.startswith("# card\n\n## Evaluation\n\ntext\n")
    assert "`c.gguf`" in card and "`b.gguf`" in card and "`a.gguf`" not in card
    assert "llama-cli -m c.gguf" in card
    assert str(tmp_path) not in card  # a card never names a local path


def test_card_built_from_a_report_lists_the_exports(tmp_path: Path) -> None:
    from hf_prune.card import build_model_card

    from .export_models import bpe_tokenizer, tiny_llama

    model = tiny_llama(len(bpe_tokenizer()))
    with pytest.warns(UserWarning, match="magnitude scores"):  # quality is not what this test is about
        report = hf_prune.prune(model, heads=0.5, neurons=0.5, importance="magnitude", reconstruct=False)
    exports = [
        {"format": "gguf", "file": "m.gguf", "outtype": "q8_0", "arch": "llama", "layout": "uniform"},
        {
            "format": "onnx",
            "file": "m.onnx",
            "outtype": "f32",
            "opset": 18,
            "inputs": ["input_ids"],
            "max_abs_diff": 2e-7,
        },
    ]
    card = str(build_model_card(report, exports=exports))
    section = card[card.index("## Exported for deployment") :]
    assert "llama-cli -m m.gguf" in section and "`q8_0`" in section
    assert 'onnxruntime.InferenceSession("m.onnx")' in section and "within 2.0e-07 of PyTorch's" in section
    assert "## Exported for deployment" not in str(build_model_card(report))


def _assert_experts_exported(tensors: dict[str, gguf.ReaderTensor], experts: torch.nn.Module) -> None:
    """Block 1's 4 kept experts of 48 neurons: router rows, [gate | up] split, down as is (hidden size 64)."""
    assert tensors["blk.1.ffn_gate_inp.weight"].shape.tolist() == [64, 4]
    for name in ("ffn_gate_exps", "ffn_up_exps"):
        assert tensors[f"blk.1.{name}.weight"].shape.tolist() == [64, 48, 4]  # innermost first: hidden, width, experts
    assert tensors["blk.1.ffn_down_exps.weight"].shape.tolist() == [48, 64, 4]
    gate_up = experts.gate_up_proj.detach().numpy()
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.ffn_gate_exps.weight"].data), gate_up[:, :48])
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.ffn_up_exps.weight"].data), gate_up[:, 48:])
    np.testing.assert_array_equal(
        np.asarray(tensors["blk.1.ffn_down_exps.weight"].data), experts.down_proj.detach().numpy()
    )


def test_mixtral_exports_its_experts_as_llama_cpp_reads_them(tmp_path: Path) -> None:
    """A pruned Mixtral (experts removed, neurons inside the rest, heads) is llama.cpp's 'llama' with experts: the
    expert count and width, the router rows, and [gate | up] split into ffn_gate_exps and ffn_up_exps."""
    folder = pruned_mixtral(tmp_path / "ckpt")
    info = export_checkpoint(folder, tmp_path / "m.gguf", "gguf", outtype="f32")
    assert (info["arch"], info["layout"]) == ("llama", "uniform")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert (_field(reader, "llama.expert_count"), _field(reader, "llama.expert_used_count")) == (4, 2)
    assert _field(reader, "llama.feed_forward_length") == 48  # each expert's width: 64, a quarter removed
    assert _field(reader, "llama.attention.head_count") == 4
    _assert_experts_exported(_tensors(reader), hf_prune.from_pretrained(folder).model.layers[1].mlp.experts)


def test_mixtral_with_layers_that_differ_is_refused_with_the_reason(tmp_path: Path) -> None:
    folder = pruned_mixtral(tmp_path / "ckpt", "global")
    with pytest.raises(ExportError, match="one expert count, one expert width and one head count for every layer"):
        export_checkpoint(folder, tmp_path / "m.gguf", "gguf")
    assert not (tmp_path / "m.gguf").exists()


def _exported_moe(folder: Path, path: Path, arch: str) -> gguf.GGUFReader:
    """Export a uniform tiny MoE (4 of 6 experts kept, top-2) at f32 and read it back: written as ``arch``."""
    info = export_checkpoint(folder, path, "gguf", outtype="f32")
    assert (info["arch"], info["layout"]) == (arch, "uniform")
    reader = gguf.GGUFReader(path)
    assert _field(reader, "general.architecture") == arch
    assert (_field(reader, f"{arch}.expert_count"), _field(reader, f"{arch}.expert_used_count")) == (4, 2)
    return reader


def test_qwen3_moe_exports_as_llama_cpp_qwen3moe(tmp_path: Path) -> None:
    """Experts, the neurons inside them and half the query heads removed: 'qwen3moe' reads each expert's width from
    expert_feed_forward_length, per-head q/k norms, Q/K rows as transformers has them (NeoX RoPE)."""
    folder = pruned_qwen3_moe(tmp_path / "ckpt")
    reader = _exported_moe(folder, tmp_path / "m.gguf", "qwen3moe")
    assert _field(reader, "qwen3moe.expert_feed_forward_length") == 48  # each expert's width: 64, a quarter removed
    assert _field(reader, "qwen3moe.attention.head_count") == 4
    assert _field(reader, "qwen3moe.attention.head_count_kv") == 1
    assert _field(reader, "qwen3moe.attention.key_length") == 16
    tensors = _tensors(reader)
    assert tensors["blk.1.attn_q_norm.weight"].shape.tolist() == [16]  # one head's width, shared by the heads
    assert tensors["blk.1.attn_k_norm.weight"].shape.tolist() == [16]
    assert tensors["blk.1.attn_q.weight"].shape.tolist() == [64, 4 * 16]
    assert tensors["blk.1.attn_k.weight"].shape.tolist() == [64, 16]
    layer = hf_prune.from_pretrained(folder).model.layers[1]
    np.testing.assert_array_equal(  # not permuted: llama.cpp rotates halves here, as transformers does
        np.asarray(tensors["blk.1.attn_q.weight"].data), layer.self_attn.q_proj.weight.detach().numpy()
    )
    _assert_experts_exported(tensors, layer.mlp.experts)


def test_olmoe_exports_as_llama_cpp_olmoe(tmp_path: Path) -> None:
    """Experts and the neurons inside them removed (OLMoE's heads stay): 'olmoe' reads each expert's width from
    feed_forward_length and q/k norms over the full width."""
    folder = pruned_olmoe(tmp_path / "ckpt")
    reader = _exported_moe(folder, tmp_path / "m.gguf", "olmoe")
    assert _field(reader, "olmoe.feed_forward_length") == 48
    assert _field(reader, "olmoe.attention.head_count") == _field(reader, "olmoe.attention.head_count_kv") == 4
    tensors = _tensors(reader)
    assert tensors["blk.1.attn_q_norm.weight"].shape.tolist() == [64]  # heads x head size: one RMS over all heads
    assert tensors["blk.1.attn_k_norm.weight"].shape.tolist() == [64]
    _assert_experts_exported(tensors, hf_prune.from_pretrained(folder).model.layers[1].mlp.experts)


def _query_heads_padded(exported: np.ndarray, kept: np.ndarray, axis: int, groups: int) -> None:
    """``exported`` holds ``kept``'s query heads (along ``axis``) group by group, the rest of each KV group's share
    of its slots zero."""
    exported, kept = np.moveaxis(exported, axis, 0), np.moveaxis(kept, axis, 0)
    per_group, share = len(kept) // groups, len(exported) // groups
    for group in range(groups):
        start = group * share
        np.testing.assert_array_equal(
            exported[start : start + per_group], kept[group * per_group : (group + 1) * per_group]
        )
        assert not exported[start + per_group : start + share].any()


def test_qwen2_moe_exports_as_llama_cpp_qwen2moe(tmp_path: Path) -> None:
    """Experts, the neurons inside them, the shared expert's neurons and half the query heads removed: 'qwen2moe'
    reads each routed expert's width from expert_feed_forward_length and the shared one's from
    expert_shared_feed_forward_length; its gate is a vector; Q and attn_output, sized hidden_size by llama.cpp,
    carry the kept heads and zero heads (NeoX RoPE: rows otherwise as they are)."""
    folder = pruned_qwen2_moe(tmp_path / "ckpt")
    reader = _exported_moe(folder, tmp_path / "m.gguf", "qwen2moe")
    assert _field(reader, "qwen2moe.expert_feed_forward_length") == 48  # each routed expert: 64, a quarter removed
    assert _field(reader, "qwen2moe.expert_shared_feed_forward_length") == 72  # the shared expert: 96, a quarter
    assert _field(reader, "qwen2moe.attention.head_count") == 8  # hidden_size / head size: 4 kept, 4 zero heads
    assert _field(reader, "qwen2moe.attention.head_count_kv") == 2
    assert _field(reader, "qwen2moe.attention.key_length") == 8
    tensors = _tensors(reader)
    assert tensors["blk.1.attn_q.weight"].shape.tolist() == [64, 64]
    assert tensors["blk.1.attn_q.bias"].shape.tolist() == [64]
    assert tensors["blk.1.attn_k.weight"].shape.tolist() == [64, 2 * 8]
    assert tensors["blk.1.attn_k.bias"].shape.tolist() == [2 * 8]
    assert tensors["blk.1.attn_output.weight"].shape.tolist() == [64, 64]
    for name in ("ffn_gate_shexp", "ffn_up_shexp"):
        assert tensors[f"blk.1.{name}.weight"].shape.tolist() == [64, 72]
    assert tensors["blk.1.ffn_down_shexp.weight"].shape.tolist() == [72, 64]
    gate = tensors["blk.1.ffn_gate_inp_shexp.weight"]
    assert (gate.shape.tolist(), gate.tensor_type) == ([64], gguf.GGMLQuantizationType.F32)
    assert "output.weight" in tensors
    layer = hf_prune.from_pretrained(folder).model.layers[1]
    attention = layer.self_attn
    for name, kept, axis in (
        ("attn_q.weight", attention.q_proj.weight, 0),
        ("attn_q.bias", attention.q_proj.bias, 0),
        ("attn_output.weight", attention.o_proj.weight, 1),
    ):  # 2 heads in each of 2 KV groups, each group's 4 slots: [h0 h1 0 0 | h2 h3 0 0]
        _query_heads_padded(np.asarray(tensors[f"blk.1.{name}"].data), kept.detach().numpy(), axis, 2)
    np.testing.assert_array_equal(
        np.asarray(gate.data), layer.mlp.shared_expert_gate.weight.detach().numpy().reshape(-1)
    )
    _assert_experts_exported(tensors, layer.mlp.experts)


def test_qwen2_with_fewer_query_heads_than_hidden_size_pads_them(tmp_path: Path) -> None:
    """llama.cpp's 'qwen2' sizes Q and attn_output by hidden_size too: 4 heads of 16 (hidden 64) pruned to 2 are
    written as 4, the last two zero."""
    folder = pruned_llama(tmp_path / "ckpt", "uniform", T.Qwen2Config, T.Qwen2ForCausalLM, num_attention_heads=4)
    export_checkpoint(folder, tmp_path / "m.gguf", "gguf", outtype="f32")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert (_field(reader, "qwen2.attention.head_count"), _field(reader, "qwen2.attention.head_count_kv")) == (4, 1)
    tensors = _tensors(reader)
    attention = hf_prune.from_pretrained(folder).model.layers[0].self_attn
    assert attention.q_proj.weight.shape == (2 * 16, 64)
    q = np.asarray(tensors["blk.0.attn_q.weight"].data)
    _query_heads_padded(q, attention.q_proj.weight.detach().numpy(), 0, 1)
    o = np.asarray(tensors["blk.0.attn_output.weight"].data)
    _query_heads_padded(o, attention.o_proj.weight.detach().numpy(), 1, 1)


@pytest.mark.parametrize("build", [pruned_olmoe, pruned_qwen2_moe], ids=["olmoe", "qwen2_moe"])
def test_tied_moe_writes_the_output_tensor(tmp_path: Path, build: Callable[..., Path]) -> None:
    """llama.cpp's 'olmoe' and 'qwen2moe' require output.weight (no fallback to token_embd), so tied embeddings are
    written twice."""
    folder = build(tmp_path / "ckpt", tie_word_embeddings=True)
    export_checkpoint(folder, tmp_path / "m.gguf", "gguf", outtype="f32")
    tensors = _tensors(gguf.GGUFReader(tmp_path / "m.gguf"))
    np.testing.assert_array_equal(
        np.asarray(tensors["output.weight"].data), np.asarray(tensors["token_embd.weight"].data)
    )


@pytest.mark.parametrize(
    ("build", "settings", "reason"),
    [
        (pruned_qwen3_moe, {"ranking": "global"}, "qwen3moe reads one expert count, one expert width and one head"),
        (pruned_olmoe, {"ranking": "global"}, "olmoe reads one expert count and one expert width for every layer"),
        (pruned_qwen3_moe, {"norm_topk_prob": False}, r"config norm_topk_prob=False: .*'qwen3moe' always renormalises"),
        (pruned_olmoe, {"norm_topk_prob": True}, r"config norm_topk_prob=True: .*'olmoe' never renormalises"),
        (pruned_olmoe, {"num_key_value_heads": 2}, r"'olmoe' sizes Q and the q/k RMSNorm weights by hidden_size"),
        (pruned_olmoe, {"clip_qkv": 8.0}, r"config clip_qkv=8\.0: the model clamps its queries, keys and values"),
        (pruned_qwen2_moe, {"ranking": "global"}, "qwen2moe reads one expert count, one expert width, one shared"),
        (pruned_qwen2_moe, {"norm_topk_prob": True}, r"config norm_topk_prob=True: .*'qwen2moe' never renormalises"),
        (pruned_qwen2_moe, {"heads": 0.0, "head_dim": 16}, r"'qwen2moe' sizes Q and attn_output by hidden_size \(64\)"),
        (pruned_qwen2_moe, {"use_sliding_window": True, "sliding_window": 8},
         r"blocks \[0\] attend to the last 8 positions only \(sliding_window\)"),
    ],
    ids=["qwen3_moe-layers-differ", "olmoe-layers-differ", "qwen3_moe-unnormalised", "olmoe-normalised", "olmoe-gqa",
         "olmoe-clip_qkv", "qwen2_moe-layers-differ", "qwen2_moe-normalised", "qwen2_moe-heads-wider-than-hidden",
         "qwen2_moe-sliding-window"],
)  # fmt: skip
def test_moe_llama_cpp_cannot_run_is_refused_with_the_reason(
    tmp_path: Path, build: Callable[..., Path], settings: dict[str, object], reason: str
) -> None:
    folder = build(tmp_path / "ckpt", **settings)
    with pytest.raises(ExportError, match=reason):
        export_checkpoint(folder, tmp_path / "m.gguf", "gguf")
    assert _listing(tmp_path) == ["ckpt"]
