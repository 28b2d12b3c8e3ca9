"""llama.cpp loads and evaluates the exported GGUF files: logits of tiny models in every layout, and the real
SmolLM2-135M's perplexity. Marked slow: they need llama-cpp-python (pip install 'hf-prune[llama-cpp]'), which builds
llama.cpp from source, so CI does not run them; benchmarks/export_llama_cpp.py measures the same at full size."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import transformers as T

import hf_prune
from hf_prune.export import export_checkpoint

from .export_models import pruned_llama, pruned_mixtral, pruned_olmoe, pruned_qwen2_moe, pruned_qwen3_moe

pytestmark = pytest.mark.slow


def _llama_cpp() -> ModuleType:
    """llama-cpp-python. Imported when a test runs, not at collection: CI deselects these slow tests, and run
    without the extra they fail with the install command rather than skip."""
    try:
        import llama_cpp
    except ImportError:
        pytest.fail(
            "these tests need llama-cpp-python: pip install -e '.[llama-cpp]' (builds llama.cpp)", pytrace=False
        )
    return llama_cpp


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _benchmark() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("export_llama_cpp", BENCHMARKS / "export_llama_cpp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    llm = _llama_cpp().Llama(model_path=str(path), n_ctx=32, n_batch=32, n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)])


def _difference_from_pytorch(folder: Path, path: Path) -> tuple[float, float]:
    """(largest difference between llama.cpp's logits from the GGUF file ``path`` and PyTorch's from ``folder`` on
    the same 12 token ids, max(1, largest PyTorch logit)): tolerances scale with the second."""
    ids = [int(i) for i in torch.randint(1, 300, (12,), generator=torch.Generator().manual_seed(0))]
    model = hf_prune.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    got = _llama_cpp_logits(path, ids)
    return float(np.abs(got - expected).max()), max(1.0, float(np.abs(expected).max()))


@pytest.mark.parametrize(
    ("ranking", "config_cls", "model_cls", "arch"),
    [
        ("global", T.LlamaConfig, T.LlamaForCausalLM, "deci"),
        ("uniform", T.LlamaConfig, T.LlamaForCausalLM, "llama"),
        ("global", T.MistralConfig, T.MistralForCausalLM, "deci"),
        ("global", T.Qwen2Config, T.Qwen2ForCausalLM, "deci"),
        ("uniform", T.Qwen2Config, T.Qwen2ForCausalLM, "qwen2"),
        ("uniform", T.Qwen3Config, T.Qwen3ForCausalLM, "qwen3"),
    ],
)
def test_llama_cpp_logits_equal_pytorch(
    tmp_path: Path, ranking: str, config_cls: type, model_cls: type, arch: str
) -> None:
    folder = pruned_llama(tmp_path / "ckpt", ranking, config_cls, model_cls)
    info = export_checkpoint(folder, tmp_path / "m.gguf", "gguf", outtype="f32")
    assert info["arch"] == arch
    difference, scale = _difference_from_pytorch(folder, tmp_path / "m.gguf")
    assert difference < 1e-3 * scale


@pytest.mark.real_model
def test_real_smollm2_pruned_perplexity_in_llama_cpp(tmp_path: Path) -> None:
    bench = _benchmark()
    from assets import load_smollm2

    dense, tokenizer = load_smollm2(plain=True)
    evaluation = bench.token_windows(tokenizer, [bench.shakespeare(bench.EVALUATION_PLAY)], 128, 2)
    calibration = bench.windows(tokenizer, [bench.shakespeare(p) for p in bench.CALIBRATION_PLAYS], 128, 2)
    models = bench.prune_layouts(dense, calibration, 0.25)
    for name in ("uniform", "global"):
        folder = tmp_path / name
        hf_prune.save_pretrained(models[name], folder, tokenizer=tokenizer)
        info = export_checkpoint(folder, tmp_path / f"{name}.gguf", "gguf", outtype="f32")
        assert info["layout"] == ("uniform" if name == "uniform" else "per_layer")
        expected = bench.torch_perplexity(models[name], evaluation)
        got = bench.llama_cpp_perplexity(tmp_path / f"{name}.gguf", evaluation, threads=1)
        assert abs(got / expected - 1) < 0.02, (name, got, expected)


@pytest.mark.parametrize("kind", ["byte_level", "sentencepiece_style"])
def test_llama_cpp_tokenizes_text_as_transformers_does(tmp_path: Path, kind: str) -> None:
    from .export_models import TEXT, bpe_tokenizer, sentencepiece_style_tokenizer, tiny_llama

    tokenizer = bpe_tokenizer() if kind == "byte_level" else sentencepiece_style_tokenizer()
    hf_prune.save_pretrained(tiny_llama(len(tokenizer)), tmp_path / "ckpt", tokenizer=tokenizer)
    export_checkpoint(tmp_path / "ckpt", tmp_path / "m.gguf", "gguf")
    llm = _llama_cpp().Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=32, vocab_only=True, verbose=False)
    text = TEXT[:120]
    assert llm.tokenize(text.encode(), add_bos=False) == tokenizer(text, add_special_tokens=False).input_ids


def test_k_quant_through_llama_cpp_quantizer(tmp_path: Path) -> None:
    import gguf

    folder = pruned_llama(tmp_path / "ckpt", "global")
    info = export_checkpoint(folder, tmp_path / "m.gguf", "gguf", outtype="q4_k_m")
    assert info["outtype"] == "q4_k_m"
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert reader.fields["deci.attention.head_count"].contents() == [8, 4, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "m.gguf"]  # the f32 intermediate is gone
    logits = _llama_cpp_logits(tmp_path / "m.gguf", [1, 2, 3, 4])
    assert np.isfinite(logits).all()


@pytest.mark.parametrize(
    "remove", [{"attention": [1, 2]}, {"attention": [1], "mlp": [1]}], ids=["attention", "whole-block-of-no-ops"]
)
def test_llama_cpp_runs_blocks_without_attention_or_ffn(tmp_path: Path, remove: dict[str, list[int]]) -> None:
    """Removed sublayers export as deci's no-op parts (0 heads, FFN width 0): llama.cpp's logits equal PyTorch's.
    (What llama.cpp cannot run, such as a block without FFN that keeps its attention, is refused by the export:
    tests/test_sublayers.py.)"""
    from .export_models import llama_without_sublayers

    folder = llama_without_sublayers(tmp_path / "ckpt", remove)
    info = export_checkpoint(folder, tmp_path / "m.gguf", "gguf", outtype="f32")
    assert info["arch"] == "deci"
    difference, scale = _difference_from_pytorch(folder, tmp_path / "m.gguf")
    assert difference < 1e-3 * scale


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_llama_cpp_runs_a_pruned_mixtral_as_pytorch_does(tmp_path: Path, outtype: str) -> None:
    """Experts removed, neurons inside the rest and query heads: llama.cpp's MoE path (its own routing, softmax over
    the kept experts, top-2 renormalised) gives PyTorch's logits (f32), or close to them (q8_0)."""
    folder = pruned_mixtral(tmp_path / "ckpt")
    export_checkpoint(folder, tmp_path / "m.gguf", "gguf", outtype=outtype)
    difference, scale = _difference_from_pytorch(folder, tmp_path / "m.gguf")
    assert difference < (1e-3 if outtype == "f32" else 5e-2) * scale


# Largest logit difference allowed, times max(1, largest logit): f16 and q8_0 round the weights.
MOE_TOLERANCE = {"f32": 1e-3, "f16": 2e-3, "q8_0": 5e-2}


@pytest.mark.parametrize("outtype", list(MOE_TOLERANCE))
@pytest.mark.parametrize(
    ("build", "config"),
    [
        (pruned_qwen3_moe, {}),
        (pruned_olmoe, {}),
        (pruned_olmoe, {"tie_word_embeddings": True}),
        (pruned_qwen2_moe, {}),
        (pruned_qwen2_moe, {"tie_word_embeddings": True}),
    ],
    ids=["qwen3_moe", "olmoe", "olmoe-tied", "qwen2_moe", "qwen2_moe-tied"],
)
def test_llama_cpp_runs_pruned_moe_families_as_pytorch_does(
    tmp_path: Path, build: Callable[..., Path], config: dict[str, object], outtype: str
) -> None:
    """Experts and the neurons inside them removed (and the query heads of Qwen3-MoE and Qwen2-MoE, and Qwen2-MoE's
    shared-expert neurons): llama.cpp's qwen3moe (top-k renormalised, per-head q/k norms), olmoe (top-k as they
    are, full-width q/k norms; tied: output.weight written) and qwen2moe (top-k as they are, q/k/v biases, the
    gated shared expert, zero heads filling Q to hidden_size; tied: output.weight written) give PyTorch's logits
    (f32), or close to them (f16, q8_0)."""
    folder = build(tmp_path / "ckpt", **config)
    export_checkpoint(folder, tmp_path / "m.gguf", "gguf", outtype=outtype)
    difference, scale = _difference_from_pytorch(folder, tmp_path / "m.gguf")
    assert difference < MOE_TOLERANCE[outtype] * scale


def test_llama_cpp_runs_qwen2_with_zero_query_heads(tmp_path: Path) -> None:
    """llama.cpp's qwen2 sizes Q and attn_output by hidden_size: 4 heads of 16 (hidden 64) pruned to 2 run as 4, the
    last two zero, and give PyTorch's logits."""
    folder = pruned_llama(tmp_path / "ckpt", "uniform", T.Qwen2Config, T.Qwen2ForCausalLM, num_attention_heads=4)
    export_checkpoint(folder, tmp_path / "m.gguf", "gguf", outtype="f32")
    difference, scale = _difference_from_pytorch(folder, tmp_path / "m.gguf")
    assert difference < 1e-3 * scale
