"""Encoder-decoders: Whisper and T5, two stacks (encoder, decoder) and the decoder's cross-attention, on tiny random
models. Their test-matrix rows: masked == pruned (forward, and cached generation), backward, closed-form parameter
counts, checkpoints three ways, the CLI, a Trainer run (masking and compaction), the card's per-stack tables, T5's
tied heads, and the errors."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers as T
from huggingface_hub import ModelCard, snapshot_download

import hf_prune
from hf_prune.hub import push_to_hub
from hf_prune.recipe import Recipe, RecipeError, shipped_recipes
from hf_prune.structure import ModelStructure

from .test_architectures import _assert_loads_without_hf_prune, _assert_same_generation, _pruned_with_masked_twin
from .test_callback import _args

ATOL = 1e-5
QUICK = {"importance": "random", "reconstruct": False, "neuron_multiple": 1}
HALF = {"heads": 0.5, "neurons": 0.5, "cross_heads": 0.5}
HIDDEN, HEAD_DIM, HEADS = 64, 16, 4


def _whisper() -> T.WhisperForConditionalGeneration:
    torch.manual_seed(0)
    config = T.WhisperConfig(
        vocab_size=96,
        num_mel_bins=8,
        d_model=HIDDEN,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=96,
        decoder_ffn_dim=80,
        max_source_positions=16,
        max_target_positions=32,
        decoder_start_token_id=1,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        init_std=0.3,  # large enough that greedy decoding does not repeat one token
    )
    model = T.WhisperForConditionalGeneration(config).eval()
    model.generation_config.suppress_tokens = None
    model.generation_config.begin_suppress_tokens = None
    return model


def _t5() -> T.T5ForConditionalGeneration:
    torch.manual_seed(0)
    # As many decoder as encoder blocks: generate() in transformers 5.25 sizes T5's cache by the encoder's count.
    config = T.T5Config(
        vocab_size=96,
        d_model=HIDDEN,
        d_kv=HEAD_DIM,
        d_ff=96,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=HEADS,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T.T5ForConditionalGeneration(config).eval()


def _features(batch: int, seed: int) -> dict[str, torch.Tensor]:
    return {"input_features": torch.randn(batch, 8, 32, generator=torch.Generator().manual_seed(seed))}


def _token_ids(batch: int, seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 96, (batch, 9), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[-1, 6:] = 0  # padding exercises the encoder mask, in self- and cross-attention
    return {"input_ids": ids, "attention_mask": mask}


@dataclass(frozen=True)
class Seq2SeqCase:
    name: str
    build: Callable[[], torch.nn.Module]
    source: Callable[[int, int], dict[str, torch.Tensor]]  # (batch, seed) -> encoder inputs
    blocks: tuple[int, int]  # encoder, decoder
    neurons: tuple[int, int]
    qkv_biases: int  # of q, k and v, how many have a bias (one entry per row)
    mlp_in_bias: bool
    auto: str
    # Heads stay the same in every block of a stack: T5's relative position bias is computed by the first block.
    tied_heads: bool
    # Which targets, uniform, the config can state: Whisper derives its head size from d_model / heads.
    vanilla_heads: bool


CASES = [
    Seq2SeqCase("whisper", _whisper, _features, (2, 3), (96, 80), 2, True, "AutoModelForSpeechSeq2Seq", False, False),
    Seq2SeqCase("t5", _t5, _token_ids, (2, 2), (96, 96), 0, False, "AutoModelForSeq2SeqLM", True, True),
]
BY_NAME = {case.name: case for case in CASES}
WHISPER = BY_NAME["whisper"]


def _inputs(case: Seq2SeqCase) -> dict[str, torch.Tensor]:
    return {
        **case.source(2, 1),
        "decoder_input_ids": torch.randint(3, 96, (2, 5), generator=torch.Generator().manual_seed(2)),
    }


def _logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _masked_twin(case: Seq2SeqCase, **settings: object) -> tuple[torch.nn.Module, torch.nn.Module, object]:
    """(pruned model, an unpruned copy masked with the same plan, the report)."""
    return _pruned_with_masked_twin(case.build, **{**QUICK, **settings})


def _expected_after(case: Seq2SeqCase) -> list[tuple[int, int, int]]:
    """(heads, cross-attention heads, neurons) of every block after HALF, uniform."""
    encoder, decoder = case.blocks
    return [(2, 0, case.neurons[0] // 2)] * encoder + [(2, 2, case.neurons[1] // 2)] * decoder


def _counts(layers: list[dict[str, int]]) -> list[tuple[int, int, int]]:
    return [(a["heads"], a["cross_heads"], a["neurons"]) for a in layers]


cases = pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)


def _head_magnitudes(structure: ModelStructure, index: int, prefix: str = "") -> torch.Tensor:
    """Block ``index``'s squared weights per head of its attention (``prefix`` "cross_": its cross-attention): the
    q, k and v rows and the o columns, what magnitude importance sums."""
    rows = sum(structure.module(index, f"{prefix}{r}").weight.detach().pow(2).view(HEADS, -1).sum(1) for r in "qkv")
    columns = structure.module(index, f"{prefix}o").weight.detach().pow(2).view(-1, HEADS, HEAD_DIM).sum((0, 2))
    return rows + columns


@cases
def test_stacks_are_numbered_encoder_first_and_only_decoder_blocks_have_cross_attention(case: Seq2SeqCase) -> None:
    structure = ModelStructure(case.build())
    encoder, decoder = case.blocks
    names = [f"encoder {i}" for i in range(encoder)] + [f"decoder {i}" for i in range(decoder)]
    assert [structure.block_name(i) for i in range(structure.num_layers)] == names
    assert (
        _counts([s.counts for s in structure.shapes()])
        == [(HEADS, 0, case.neurons[0])] * encoder + [(HEADS, HEADS, case.neurons[1])] * decoder
    )
    assert [kind.name for kind in structure.leaders] == ["heads", "cross_heads", "neurons"]
    decoder_blocks = structure.stacks[1][2]
    assert structure.module(encoder + 1, "cross_o") in set(decoder_blocks[1].modules())
    with pytest.raises(KeyError, match="no 'cross_o' projection in its encoder blocks"):
        structure.module(0, "cross_o")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("ranking", ["uniform", "global"])
@cases
def test_masked_model_equals_pruned_model(case: Seq2SeqCase, ranking: str, attn: str) -> None:
    model, masked, report = _masked_twin(case, **HALF, ranking=ranking)
    for m in (model, masked):
        m.set_attn_implementation(attn)
    inputs = _inputs(case)
    torch.testing.assert_close(_logits(model, inputs), _logits(masked, inputs), atol=ATOL, rtol=1e-5)
    assert (_logits(case.build(), inputs) - _logits(masked, inputs)).abs().max() > 1e-3, "masks must matter"
    encoder = case.blocks[0]
    after = report.layers_after
    assert all(a["cross_heads"] == 0 for a in after[:encoder]) and all(
        0 < a["cross_heads"] < 4 for a in after[encoder:]
    )
    assert all(a["heads"] < HEADS for a in after)
    assert sum(a["neurons"] for a in after) < sum(a["neurons"] for a in report.layers_before)
    if ranking == "uniform":
        assert _counts(after) == _expected_after(case)
    if case.tied_heads:  # whatever the ranking, a stack's blocks keep the same heads and cross-attention heads
        assert len({tuple(kept["keep_heads"]) for kept in report.kept[:encoder]}) == 1
        assert len({tuple(kept["keep_heads"]) for kept in report.kept[encoder:]}) == 1
        assert len({tuple(kept["keep_cross_heads"]) for kept in report.kept[encoder:]}) == 1


@cases
def test_cross_heads_are_chosen_apart_from_self_attention_heads(case: Seq2SeqCase) -> None:
    """Removing only cross-attention heads leaves every self-attention head; magnitude picks them by the
    cross-attention's own q/k/v rows and o columns (summed over the decoder's blocks where they are tied)."""
    model = case.build()
    structure = ModelStructure(copy.deepcopy(model))
    report = hf_prune.prune(model, heads=0.0, neurons=0.0, cross_heads=0.5, importance="magnitude", reconstruct=False)
    encoder, decoder = case.blocks
    assert (
        _counts(report.layers_after)
        == [(HEADS, 0, case.neurons[0])] * encoder + [(HEADS, 2, case.neurons[1])] * decoder
    )

    per_block = [_head_magnitudes(structure, i, "cross_") for i in range(encoder, encoder + decoder)]
    if case.tied_heads:
        total = sum(n / n.sum() for n in per_block)  # each block's scores normalised, then summed over the tie
        per_block = [total] * decoder
    for kept, block_norms in zip(report.kept[encoder:], per_block, strict=True):
        assert kept["keep_cross_heads"] == sorted(block_norms.argsort(descending=True)[:2].tolist())
        assert kept["keep_heads"] == list(range(HEADS))


@cases
def test_cached_generation_matches_the_masked_model(case: Seq2SeqCase) -> None:
    model, masked, _ = _masked_twin(case, **HALF, ranking="global")
    source = case.source(2, 1)
    prompt = source.pop(next(iter(source)))
    out = _assert_same_generation(model, masked, prompt, max_new_tokens=6, **source)
    if case.name == "whisper":  # a random T5 repeats one token whatever its init; its logits are compared above
        assert len(set(out.sequences[0].tolist())) > 2, "the tiny model should not generate one token over and over"


@cases
def test_backward_reaches_pruned_weights_in_both_stacks(case: Seq2SeqCase) -> None:
    model, _, _ = _masked_twin(case, **HALF, ranking="global")
    model.train()
    inputs = _inputs(case)
    labels = inputs.pop("decoder_input_ids")
    model(**inputs, labels=labels).loss.backward()
    structure = ModelStructure(model)
    for i in range(structure.num_layers):
        for role in ["o", "down", *(["cross_o"] if i >= case.blocks[0] else [])]:
            weight = structure.module(i, role).weight
            assert weight.grad is not None and weight.grad.shape == weight.shape and torch.isfinite(weight.grad).all()


@cases
def test_parameter_count_matches_closed_form(case: Seq2SeqCase) -> None:
    model = case.build()
    before = sum(p.numel() for p in model.parameters())
    report = hf_prune.prune(model, **QUICK, **HALF, ranking="global")
    # q, k and v rows and o columns, self- or cross-attention alike; biases on q/k/v rows (o's is per output).
    per_head = 4 * HIDDEN * HEAD_DIM + case.qkv_biases * HEAD_DIM
    per_neuron = 2 * HIDDEN + int(case.mlp_in_bias)
    removed = sum(
        (b["heads"] - a["heads"]) * per_head
        + (b["cross_heads"] - a["cross_heads"]) * per_head
        + (b["neurons"] - a["neurons"]) * per_neuron
        for b, a in zip(report.layers_before, report.layers_after, strict=True)
    )
    for blocks, entry in ModelStructure(case.build()).shared_head_tensors():  # T5's relative position bias, per stack
        tensor = case.build().get_parameter(entry.parameter)
        removed += (HEADS - report.layers_after[blocks[0]]["heads"]) * tensor.numel() // tensor.shape[entry.dim]
    assert report.after.parameters == sum(p.numel() for p in model.parameters()) == before - removed
    assert report.flops_ratio > 1.0


@pytest.mark.parametrize("ranking", ["uniform", "global"])
@cases
def test_save_and_load_three_ways(case: Seq2SeqCase, ranking: str, tmp_path: Path) -> None:
    """hf_prune's loader, trust_remote_code without hf_prune, and plain from_pretrained where the config can say it:
    every block of a stack the same, and no attribute with two values (Whisper: neurons only, its encoder_ffn_dim
    and decoder_ffn_dim; T5: everything, its heads being tied)."""
    items, inputs = [], _inputs(case)
    for name, targets in (("all", HALF), ("neurons", {"heads": 0.0, "cross_heads": 0.0, "neurons": 0.5})):
        model = case.build()
        report = hf_prune.prune(model, **QUICK, **targets, ranking=ranking)
        directory = tmp_path / f"{name}-{ranking}"
        hf_prune.save_pretrained(model, directory)
        loaded = hf_prune.from_pretrained(directory).eval()
        assert type(loaded).__name__ == type(case.build()).__name__
        assert ModelStructure(loaded).shapes() == ModelStructure(model).shapes()
        torch.testing.assert_close(_logits(loaded, inputs), _logits(model, inputs), atol=ATOL, rtol=0)
        vanilla = ranking == "uniform" and (name == "neurons" or case.vanilla_heads)
        assert report.vanilla_loadable == vanilla, report.not_vanilla_because
        torch.save({"inputs": inputs, "logits": _logits(model, inputs)}, f"{directory}.pt")
        items.append({"dir": str(directory), "auto": case.auto, "vanilla": vanilla})
    _assert_loads_without_hf_prune(items)


def test_whisper_vanilla_checkpoint_states_each_stack_width(tmp_path: Path) -> None:
    model = _whisper()
    hf_prune.prune(model, **QUICK, heads=0.0, cross_heads=0.0, neurons=0.5)
    hf_prune.save_pretrained(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["encoder_ffn_dim"], config["decoder_ffn_dim"]) == (48, 40)


def test_a_head_pruned_whisper_checkpoint_says_how_to_load_it(tmp_path: Path) -> None:
    """Whisper derives the head size from d_model / heads and its config class takes no per-layer values, so a
    head-pruned checkpoint records its structure; config.json points the Auto classes at the shipped loader."""
    model = _whisper()
    report = hf_prune.prune(model, **QUICK, **HALF)
    assert "head size" in report.not_vanilla_because
    model.save_pretrained(tmp_path)  # the plain transformers route (what Trainer.save_model does)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["WhisperForConditionalGeneration"]
    assert "AutoModelForSpeechSeq2Seq" in config["auto_map"] and (tmp_path / "modeling_pruned.py").is_file()
    assert config["hf_prune"]["layers"] == report.layers_after


def test_t5_refuses_protected_layers_with_its_tied_heads() -> None:
    with pytest.raises(ValueError, match="protected"):
        hf_prune.prune(_t5(), **QUICK, **HALF, protected_layers=[1])


@cases
def test_cli_prunes_a_checkpoint_and_the_card_has_one_table_per_stack(case: Seq2SeqCase, tmp_path: Path) -> None:
    from hf_prune.cli import main

    case.build().save_pretrained(tmp_path / "dense")
    output = tmp_path / "pruned"
    argv = ["prune", str(tmp_path / "dense"), "--heads", "0.5", "--cross-heads", "0.5", "--neurons", "0.25"]
    with pytest.warns(UserWarning, match="calibration"):  # no data for these: magnitude, and the warning says so
        assert main([*argv, "--output", str(output)]) == 0
    report = json.loads((output / "pruning_report.json").read_text())
    encoder, decoder = case.blocks
    assert [(a["heads"], a["cross_heads"]) for a in report["layers_after"]] == [(2, 0)] * encoder + [(2, 2)] * decoder
    card = (output / "README.md").read_text()
    assert "**Encoder**" in card and "**Decoder**" in card and f"| decoder {decoder - 1} |" in card
    assert card.count("Cross-attention heads kept") == 1  # the decoder's table only
    assert f"{case.auto}.from_pretrained" in card
    inputs = _inputs(case)
    torch.save({"inputs": inputs, "logits": _logits(hf_prune.from_pretrained(output).eval(), inputs)}, f"{output}.pt")
    _assert_loads_without_hf_prune([{"dir": str(output), "auto": case.auto, "vanilla": report["vanilla_loadable"]}])


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, case: Seq2SeqCase) -> None:
        self.case = case

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        source = {k: v[0] for k, v in self.case.source(1, 100 + index).items()}
        labels = torch.randint(3, 96, (6,), generator=torch.Generator().manual_seed(index))
        return {**source, "labels": labels}


@pytest.mark.parametrize("compact", [False, True], ids=["masked", "compacted"])
@cases
def test_trainer_run_prunes_both_stacks_and_cross_attention(case: Seq2SeqCase, compact: bool, tmp_path: Path) -> None:
    model = case.build()
    config = hf_prune.PruningConfig(
        **HALF, importance="taylor", end=0.75, update_every=3, neuron_multiple=8, compact=compact
    )
    callback = hf_prune.PruningCallback(config)
    trainer = T.Trainer(
        model=model, args=_args(tmp_path / "run", max_steps=12), train_dataset=_Pairs(case), callbacks=[callback]
    )
    trainer.train()
    assert _counts([s.counts for s in ModelStructure(model).shapes()]) == _expected_after(case)
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    loaded = hf_prune.from_pretrained(tmp_path / "pruned").eval()
    inputs = _inputs(case)
    torch.testing.assert_close(_logits(loaded, inputs), _logits(model.eval(), inputs), atol=ATOL, rtol=0)


def test_recipe_errors_name_the_stack_and_the_fix() -> None:
    data = shipped_recipes()["whisper"].to_dict()
    data["stacks"][0]["overrides"]["layers"] = ["x"]
    with pytest.raises(RecipeError, match=r"stack 'encoder'.*cannot be overridden"):
        Recipe.from_dict(data)
    data = shipped_recipes()["whisper"].to_dict()
    data["layers"] = ["encoder.layers"]
    with pytest.raises(RecipeError, match="`layers` or `stacks`"):
        Recipe.from_dict(data)
    data = shipped_recipes()["whisper"].to_dict()
    data["stacks"][1]["overrides"]["mlp"] = {"up": "fc1", "gate_up": "fc1"}
    with pytest.raises(RecipeError, match=r"stack 'decoder'.*exactly one of `up` or `gate_up`"):
        Recipe.from_dict(data)
    with pytest.raises(ValueError, match="has no cross_heads to remove"):
        bert = T.BertModel(T.BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2))
        hf_prune.prune(bert, cross_heads=0.5)


def test_calibrated_taylor_prunes_without_reconstruction_and_refuses_asking_for_it() -> None:
    """Reconstruction refits blocks in one chain, which an encoder-decoder is not: off by default with calibration
    data, and refused by name when asked for; so is depth pruning."""
    inputs = _inputs(WHISPER)
    batches = [{"input_features": inputs["input_features"], "labels": inputs["decoder_input_ids"]}]
    report = hf_prune.prune(_whisper(), **HALF, importance="taylor", calibration=batches)
    assert "reconstruction" not in report.extra and report.layers_after[2]["cross_heads"] == 2
    with pytest.raises(ValueError, match="several block lists"):
        hf_prune.prune(_whisper(), **HALF, importance="taylor", calibration=batches, reconstruct=True)
    with pytest.raises(RecipeError, match="several block lists"):
        hf_prune.prune(_whisper(), layers=0.25, calibration=batches)


@pytest.mark.parametrize(
    ("cls", "config_cls"), [(T.T5ForConditionalGeneration, T.T5Config), (T.MT5ForConditionalGeneration, T.MT5Config)]
)
def test_a_gated_t5_is_read_with_the_gated_recipe_and_loads_vanilla_when_uniform(
    cls: type, config_cls: type, tmp_path: Path
) -> None:
    """flan-t5 and T5 v1.1 share model_type 't5' with the ReLU T5 but gate their FFN (wi_0, wi_1): recipe 'auto'
    takes the first shipped recipe for the model type whose modules the model has."""
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=96, d_model=HIDDEN, d_kv=HEAD_DIM, d_ff=96, num_layers=2, num_heads=HEADS,
        relative_attention_num_buckets=8, decoder_start_token_id=0, feed_forward_proj="gated-gelu",
    )  # fmt: skip
    model = cls(config).eval()
    assert ModelStructure(model).recipe.name == "t5_gated"
    inputs = {**_token_ids(2, 1), "decoder_input_ids": torch.randint(3, 96, (2, 5))}
    report = hf_prune.prune(model, **QUICK, **HALF)
    assert report.vanilla_loadable and report.recipe == "t5_gated"
    hf_prune.save_pretrained(model, tmp_path)
    vanilla = cls.from_pretrained(tmp_path).eval()
    assert vanilla.config.d_ff == 48 and vanilla.config.num_heads == 2
    torch.testing.assert_close(_logits(vanilla, inputs), _logits(model, inputs), atol=ATOL, rtol=0)


def test_a_latency_target_is_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match="several block lists"):
        hf_prune.prune(_whisper(), latency=0.5, importance="magnitude")


@cases
def test_a_flops_target_is_met_across_both_stacks(case: Seq2SeqCase) -> None:
    """A cost target chooses heads and neurons in both stacks; cross-attention heads go by their own fraction and
    count towards it."""
    report = hf_prune.prune(case.build(), flops=0.3, cross_heads=0.25, **QUICK, ranking="global")
    removed = 1 - report.after.block_flops_per_token / report.before.block_flops_per_token
    assert abs(removed - 0.3) <= 0.02, removed
    assert all(a["cross_heads"] == 3 for a in report.layers_after[case.blocks[0] :])
    encoder = case.blocks[0]
    assert sum(a["neurons"] for a in report.layers_after[:encoder]) < encoder * case.neurons[0]


def test_push_to_hub_then_load_as_the_card_says(local_hub: object) -> None:
    """A pruned Whisper goes to the (local) Hub, with a card whose loading code works as written."""
    model = _whisper()
    report = hf_prune.prune(model, **QUICK, **HALF)
    inputs = _inputs(WHISPER)
    push_to_hub(model, "test-user/tiny-whisper-pruned", report=report)
    card = ModelCard.load(Path(snapshot_download("test-user/tiny-whisper-pruned")) / "README.md")
    assert card.data.pipeline_tag == "automatic-speech-recognition"
    assert "**Encoder**" in card.text and "Cross-attention heads kept" in card.text
    code = re.findall(r"```python\n(.*?)```", card.text.split("## How to load it")[1], re.S)
    assert any("AutoModelForSpeechSeq2Seq.from_pretrained" in snippet for snippet in code)
    namespace: dict[str, object] = {}
    exec(code[0], namespace)  # the card's own code, verbatim: hf_prune.from_pretrained
    torch.testing.assert_close(_logits(namespace["model"].eval(), inputs), _logits(model, inputs), atol=ATOL, rtol=0)


def test_t5_ties_heads_within_each_stack_not_across_them() -> None:
    """Each stack's relative position bias ties its blocks' heads; the encoder and the decoder choose their own (by
    magnitude: each block's q/k/v rows and o columns, normalised per block, summed over its stack's blocks)."""
    model = _t5()
    structure = ModelStructure(copy.deepcopy(model))
    report = hf_prune.prune(model, heads=0.5, neurons=0.0, cross_heads=0.0, importance="magnitude", reconstruct=False)

    def top2(blocks: range) -> list[int]:
        normalised = [_head_magnitudes(structure, i) / _head_magnitudes(structure, i).sum() for i in blocks]
        return sorted(sum(normalised).argsort(descending=True)[:2].tolist())

    encoder, decoder = top2(range(2)), top2(range(2, 4))
    assert [kept["keep_heads"] for kept in report.kept] == [encoder, encoder, decoder, decoder]
    assert encoder != decoder, "this seed should make the stacks choose differently (a test of the per-stack tie)"
    pruned_bias = model.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    dense_bias = _t5().decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    torch.testing.assert_close(pruned_bias, dense_bias[:, decoder])
