"""MoE experts, end to end: the CLI flag and the recipe default, checkpoints that load three ways (vanilla where
every block keeps the same experts, hf_prune and trust_remote_code without hf_prune otherwise), and gradual pruning
in a Trainer run. The masking, removal, criteria and errors are in tests/test_experts.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as T

import hf_prune
from hf_prune.structure import ModelStructure

from .architectures import MOE_CASES, MOE_CASES_BY_NAME, MoECase
from .cli_run import run_cli
from .moe import ATOL, QUICK, moe_ids, moe_targets, prune_with_masked_twin
from .test_architectures import _assert_loads_without_hf_prune
from .test_callback import _args


def test_the_recipe_default_and_the_cli_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = MOE_CASES_BY_NAME["mixtral"]
    case.build().save_pretrained(tmp_path / "dense")
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "dense")
    assert code == 0 and "prunable: 8 heads, 4 KV heads, 12 experts" in out
    output = tmp_path / "pruned"
    code, out, err = run_cli(
        capsys, "prune", tmp_path / "dense", "--experts", "0.34", "--importance", "random", "--no-reconstruct",
        "--output", output,
    )  # fmt: skip
    assert code == 0, err
    assert "experts" in out.splitlines()[4] and "4/6" in out  # the summary's table has an experts column
    report = json.loads((output / "pruning_report.json").read_text())
    assert report["config"]["experts"] == 0.34
    assert report["layers_before"] == [{"heads": 4, "kv_heads": 2, "experts": 6, "expert_neurons": 240}] * 2
    assert report["layers_after"] == [{"heads": 4, "kv_heads": 2, "experts": 4, "expert_neurons": 160}] * 2
    card = (output / "README.md").read_text()
    assert "8 of 12 MoE experts" in card and "Experts kept" in card
    assert "Every layer keeps the same number of heads, experts and neurons inside experts" in card
    assert "![Kept attention heads, MoE experts and neurons inside MoE experts per layer]" in card
    loaded = T.AutoModelForCausalLM.from_pretrained(output)
    assert loaded.config.num_local_experts == 4

    # Without a target, the recipe's default: a quarter of each block's experts (1.5 of 6, ties keep more), no heads.
    default = hf_prune.prune(case.build(), **QUICK)
    assert [a["experts"] for a in default.layers_after] == [5, 5]
    assert [a["heads"] for a in default.layers_after] == [4, 4]


# ---------------------------------------------------------------------------------------------------------
# Checkpoints: vanilla where uniform, hf_prune and trust_remote_code (without hf_prune) otherwise.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", MOE_CASES, ids=lambda c: c.name)
def test_uniform_pruning_loads_with_plain_from_pretrained(case: MoECase, tmp_path: Path) -> None:
    model, _, report = prune_with_masked_twin(case, **moe_targets(case))
    assert report.vanilla_loadable
    hf_prune.save_pretrained(model, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config[case.count_attribute] == 4 and "auto_map" not in config and "per_layer_config" not in config
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert type(loaded).__module__.startswith("transformers.models.")
    ids = moe_ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=ATOL, rtol=0)


def test_non_uniform_pruning_loads_through_hf_prune_and_without_it(tmp_path: Path) -> None:
    ids, directories = moe_ids(), []  # items for the loader without hf_prune
    for case in MOE_CASES:
        model, _, report = prune_with_masked_twin(case, **moe_targets(case), protected_layers=[0])
        assert not report.vanilla_loadable
        assert [a["experts"] for a in report.layers_after] == [6, 4]
        directory = tmp_path / case.name
        hf_prune.save_pretrained(model, directory)
        with torch.no_grad():
            logits = model(ids).logits
        torch.save({"inputs": {"input_ids": ids}, "logits": logits}, f"{directory}.pt")
        directories.append({"dir": str(directory), "auto": "AutoModelForCausalLM", "vanilla": False})

        loaded = hf_prune.from_pretrained(directory).eval()
        assert [s.counts for s in ModelStructure(loaded).shapes()] == report.layers_after
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, logits, atol=ATOL, rtol=0)

    _assert_loads_without_hf_prune(directories)


# ---------------------------------------------------------------------------------------------------------
# Gradual pruning while training.
# ---------------------------------------------------------------------------------------------------------


def test_a_trainer_run_with_the_callback_ends_with_fewer_experts_and_loads(tmp_path: Path) -> None:
    from datasets import Dataset

    ids = torch.randint(3, 96, (32, 12), generator=torch.Generator().manual_seed(0))
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    model = MOE_CASES_BY_NAME["mixtral"].build()
    callback = hf_prune.PruningCallback(experts=0.34, heads=0.0, importance="taylor", end=0.75, update_every=2)
    args = _args(tmp_path / "run", max_steps=8, logging_steps=2)
    trainer = T.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])
    trainer.train()

    assert [s.counts for s in ModelStructure(model).shapes()] == [
        {"heads": 4, "kv_heads": 2, "experts": 4, "expert_neurons": 160}
    ] * 2
    logged = [h for h in trainer.state.log_history if "pruning/experts_kept" in h]
    assert logged and logged[-1]["pruning/experts_kept"] == pytest.approx(4 / 6)
    assert logged[-1]["pruning/heads_kept"] == 1.0
    report = json.loads((tmp_path / "run" / "pruning_report.json").read_text())
    assert report["layers_after"] == [{"heads": 4, "kv_heads": 2, "experts": 4, "expert_neurons": 160}] * 2

    trainer.save_model(str(tmp_path / "saved"))
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert loaded.config.num_local_experts == 4
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(moe_ids()).logits, model(moe_ids()).logits, atol=ATOL, rtol=0)
