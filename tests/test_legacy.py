"""Checkpoints pruned by transformers 4's ``prune_heads`` (hf_prune.legacy): loaded and converted.

The checkpoints are written here the way transformers 4 wrote them: the listed heads' q/k/v output rows and o input
columns cut out of the saved tensors, and ``pruned_heads`` (string layer keys, as JSON has them) in config.json.
What they must compute is the dense model with those heads masked, as transformers 4's ``head_mask`` did.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import save_file

import hf_prune
from hf_prune.legacy import LegacyCheckpointError
from hf_prune.structure import ModelStructure

from .cli_run import run_cli

HEADS, HEAD_DIM, HIDDEN = 4, 8, 32
REMOVED = {0: [1, 3], 2: [0]}  # layer 1 keeps all heads


@dataclass(frozen=True)
class Family:
    """Where a family's attention tensors are, for cutting heads out of them by hand."""

    build: Callable[[], torch.nn.Module]
    layer: str  # state-dict prefix of layer i, with {i}
    rows: tuple[str, ...]  # linear layers whose output rows are per head (weight + bias)
    fused: str | None  # GPT-2's Conv1D c_attn: [q | k | v] along the output (second) dimension
    o: str  # the projection whose inputs are per head
    o_conv1d: bool  # Conv1D stores (in, out): its per-head inputs are rows


def _encoder(config_cls: type, model_cls: type) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        config = config_cls(
            vocab_size=96,
            hidden_size=HIDDEN,
            num_hidden_layers=3,
            num_attention_heads=HEADS,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        return model_cls(config).eval()

    return build


def _distilbert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(
        vocab_size=96, dim=HIDDEN, n_layers=3, n_heads=HEADS, hidden_dim=64, max_position_embeddings=64
    )
    return transformers.DistilBertModel(config).eval()


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=96, n_embd=HIDDEN, n_layer=3, n_head=HEADS, n_positions=64)
    return transformers.GPT2LMHeadModel(config).eval()


BERT_ATTENTION = dict(
    rows=("attention.self.query", "attention.self.key", "attention.self.value"),
    fused=None,
    o="attention.output.dense",
    o_conv1d=False,
)
FAMILIES = {
    "bert": Family(_encoder(transformers.BertConfig, transformers.BertModel), "encoder.layer.{i}.", **BERT_ATTENTION),
    "bert_classifier": Family(
        _encoder(transformers.BertConfig, transformers.BertForSequenceClassification),
        "bert.encoder.layer.{i}.",
        **BERT_ATTENTION,
    ),
    "roberta": Family(
        _encoder(transformers.RobertaConfig, transformers.RobertaModel), "encoder.layer.{i}.", **BERT_ATTENTION
    ),
    "distilbert": Family(
        _distilbert,
        "transformer.layer.{i}.",
        rows=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        fused=None,
        o="attention.out_lin",
        o_conv1d=False,
    ),
    "gpt2": Family(_gpt2, "transformer.h.{i}.", rows=(), fused="attn.c_attn", o="attn.c_proj", o_conv1d=True),
}


def _kept(removed: list[int]) -> torch.Tensor:
    return torch.cat([torch.arange(h * HEAD_DIM, (h + 1) * HEAD_DIM) for h in range(HEADS) if h not in removed])


def write_legacy(model: torch.nn.Module, family: Family, path: Path, removed: dict[Any, list[int]]) -> Path:
    """Save ``model`` as transformers 4 saved it after ``model.prune_heads(removed)``."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied to the embeddings, as transformers saves it
    for layer, heads in removed.items():
        prefix, keep = family.layer.format(i=layer), _kept(heads)
        for name in family.rows:
            for part in ("weight", "bias"):
                state[f"{prefix}{name}.{part}"] = state[f"{prefix}{name}.{part}"][keep]
        if family.fused:
            fused = torch.cat([keep + j * HIDDEN for j in range(3)])
            state[f"{prefix}{family.fused}.weight"] = state[f"{prefix}{family.fused}.weight"][:, fused]
            state[f"{prefix}{family.fused}.bias"] = state[f"{prefix}{family.fused}.bias"][fused]
        o = f"{prefix}{family.o}.weight"
        state[o] = state[o][keep] if family.o_conv1d else state[o][:, keep]
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, path / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    config["pruned_heads"] = {str(layer): heads for layer, heads in removed.items()}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def _masked_reference(model: torch.nn.Module, family: Family, removed: dict[int, list[int]]) -> torch.nn.Module:
    """``model`` with the removed heads' context zeroed before the output projection (transformers 4's head_mask)."""
    for layer, heads in removed.items():

        def zero(module: torch.nn.Module, args: tuple[torch.Tensor, ...], heads: list[int] = heads) -> tuple[Any, ...]:
            context = args[0].clone()
            for h in heads:
                context[..., h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
            return (context, *args[1:])

        model.get_submodule(family.layer.format(i=layer) + family.o).register_forward_pre_hook(zero)
    return model


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    input_ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.eval()(input_ids=input_ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_from_pretrained_reads_transformers4_pruned_heads(name: str, tmp_path: Path) -> None:
    family = FAMILIES[name]
    path = write_legacy(family.build(), family, tmp_path / "legacy", REMOVED)
    model = hf_prune.from_pretrained(path)
    assert type(model).__name__ == type(family.build()).__name__
    assert [s.heads for s in ModelStructure(model).shapes()] == [2, 4, 3]
    assert not hasattr(model.config, "pruned_heads"), "recorded the hf_prune way: saving it converts it"
    expected = _outputs(_masked_reference(family.build(), family, REMOVED))
    torch.testing.assert_close(_outputs(model), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_cli_convert_writes_an_hf_prune_checkpoint(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    family = FAMILIES[name]
    source = write_legacy(family.build(), family, tmp_path / "legacy", REMOVED)
    output = tmp_path / "converted"
    code, out, err = run_cli(capsys, "convert", source, output)
    assert code == 0, err
    assert f"saved to {output}" in out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(row[1]) for row in rows] == [2, 4, 3]

    config = json.loads((output / "config.json").read_text())
    assert "pruned_heads" not in config
    assert [layer["heads"] for layer in config["hf_prune"]["layers"]] == [2, 4, 3]
    expected = _outputs(_masked_reference(family.build(), family, REMOVED))
    torch.testing.assert_close(_outputs(hf_prune.from_pretrained(output)), expected, atol=1e-6, rtol=0)
    auto = transformers.AutoModelForCausalLM if name == "gpt2" else transformers.AutoModel
    plain = auto.from_pretrained(output, trust_remote_code=True)  # without hf_prune: the saved loader code
    torch.testing.assert_close(_outputs(plain), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("removed", "message"),
    [
        (
            {0: [1], 2: [0]},  # the weights of layer 0 have two heads fewer
            "config.pruned_heads (layer 0: [1], layer 2: [0]) disagrees with the checkpoint's tensor shapes",
        ),
        ({5: [1]}, "config.pruned_heads removes heads from layer 5, but the model has 3 layers"),
        ({0: [0, 1, 2, 3]}, "removes heads [0, 1, 2, 3] from layer 0, which has 4 heads (0 to 3) and must keep"),
        ({0: [4]}, "removes heads [4] from layer 0, which has 4 heads"),
    ],
)
def test_config_that_disagrees_with_the_weights_is_refused(
    removed: dict[int, list[int]], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    family = FAMILIES["bert"]
    source = write_legacy(family.build(), family, tmp_path / "legacy", REMOVED)
    config = json.loads((source / "config.json").read_text())
    config["pruned_heads"] = {str(layer): heads for layer, heads in removed.items()}
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(LegacyCheckpointError) as info:
        hf_prune.from_pretrained(source)
    assert message in str(info.value)
    if len(removed) == 2:
        assert "encoder.layer.0.attention.self.query.weight (checkpoint [16, 32], model [24, 32])" in str(info.value)
    code, out, err = run_cli(capsys, "convert", source, tmp_path / "converted")
    assert code == 2 and out == "" and message in err
    assert not (tmp_path / "converted").exists()


def test_convert_refuses_a_checkpoint_without_pruned_heads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    FAMILIES["bert"].build().save_pretrained(tmp_path / "plain")
    code, out, err = run_cli(capsys, "convert", tmp_path / "plain", tmp_path / "converted")
    assert code == 2 and out == ""
    assert "has no config.pruned_heads: it is no transformers-4 pruned checkpoint, so there is nothing" in err
    assert not (tmp_path / "converted").exists()


def test_convert_into_a_non_empty_folder_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    family = FAMILIES["bert"]
    source = write_legacy(family.build(), family, tmp_path / "legacy", REMOVED)
    output = tmp_path / "converted"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    code, _, err = run_cli(capsys, "convert", source, output)
    assert code == 2 and "already exists and is not empty" in err
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
    code, _, err = run_cli(capsys, "convert", source, output, "--overwrite")
    assert code == 0, err
    assert not (output / "keep.txt").exists() and (output / "model.safetensors").is_file()
