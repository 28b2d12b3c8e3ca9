"""TrainingArguments(push_to_hub=True) with the callback uploads the compact model and hf_prune's card."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T
from huggingface_hub import ModelCard, snapshot_download

import hf_prune
from hf_prune.structure import ModelStructure

from .architectures import CASES_BY_NAME
from .hub_server import LocalHub
from .test_callback import _args, _config, _dataset

REPO = "user/tiny-llama-pruned"


def _push_args(output: Path) -> T.TrainingArguments:
    return _args(output, push_to_hub=True, hub_model_id=REPO, hub_strategy="end")


def test_callback_pushes_the_compact_model_and_its_card(local_hub: LocalHub, tmp_path: Path) -> None:
    model = CASES_BY_NAME["llama"].build()
    dense_size = sum(p.numel() for p in model.parameters())
    callback = hf_prune.PruningCallback(_config(protected_layers=[0]))  # layers differ: loader code needed
    trainer = T.Trainer(model=model, args=_push_args(tmp_path / "run"), train_dataset=_dataset(), callbacks=[callback])
    trainer.train()

    files = local_hub.files(REPO)
    assert {"config.json", "model.safetensors", "README.md", "pruning_structure.png", "pruning_report.json"} <= set(
        files
    )
    assert {"modeling_pruned.py", "surgery.py"} <= set(files)
    config = json.loads(files["config.json"])
    assert "per_layer_config" in config and "auto_map" in config
    card = ModelCard(files["README.md"].decode())
    assert "hf-prune" in card.data.tags and "structured-pruning" in card.data.tags
    assert "trust_remote_code=True" in card.text

    local = snapshot_download(REPO, cache_dir=tmp_path / "cache")
    loaded = hf_prune.from_pretrained(local)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters()) < dense_size
    assert ModelStructure(loaded).shapes() == ModelStructure(model).shapes()
    inputs = torch.randint(3, 96, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(inputs).logits, model.eval()(inputs).logits, atol=1e-5, rtol=0)


def test_pruning_trainer_push_keeps_the_pruning_card(local_hub: LocalHub, tmp_path: Path) -> None:
    """Trainer.push_to_hub() writes its own generic card; PruningTrainer writes hf_prune's instead."""
    model = CASES_BY_NAME["llama"].build()
    trainer = hf_prune.PruningTrainer(
        model=model, args=_push_args(tmp_path / "run"), train_dataset=_dataset(), pruning=_config()
    )
    trainer.train()
    trainer.push_to_hub()
    card = ModelCard(local_hub.files(REPO)["README.md"].decode())
    assert "hf-prune" in card.data.tags
    assert "What was removed" in card.text
