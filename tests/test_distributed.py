"""Two-process CPU training (torchrun, gloo): every rank masks the same groups and the saved model matches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

import hf_prune
from hf_prune.importance import Scores
from hf_prune.packed import unpack_mask
from hf_prune.prune import plan_for
from hf_prune.structure import ModelStructure

from .architectures import CASES_BY_NAME

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
DEPTH_WORKER = Path(__file__).resolve().parent / "distributed_depth_worker.py"
FSDP_WORKER = Path(__file__).resolve().parent / "distributed_fsdp_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(worker: Path, output: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(worker),
        str(output),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(worker.parent.parent)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-4000:]


def test_two_processes_agree_on_every_mask_and_save_the_planned_model(tmp_path: Path) -> None:
    _torchrun(WORKER, tmp_path)

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    first, second = ranks[0]["records"], ranks[1]["records"]
    assert len(first) == len(second) >= 3
    assert any(a["local_heads"] != b["local_heads"] for a, b in zip(first, second, strict=True)), (
        "each rank should see different batches, so local scores differ"
    )
    for a, b in zip(first, second, strict=True):
        assert a["step"] == b["step"]
        assert a["masks"] == b["masks"], f"ranks disagree at step {a['step']}"
    assert ranks[0]["kept"] == ranks[1]["kept"]

    # The last plan is what a single process would choose from the same (reduced) scores.
    last = first[-1]
    structure = ModelStructure(CASES_BY_NAME["llama"].build())
    previous = first[-2]["masks"]
    plans = plan_for(
        structure,
        Scores([torch.tensor(h) for h in last["heads"]], [torch.tensor(n) for n in last["neurons"]]),
        hf_prune.PruningConfig(
            heads=0.5, neurons=0.5, importance="fisher", ranking="global", end=0.75, update_every=3, neuron_multiple=1
        ),
        progress=1.0,
        masked={kind: [~unpack_mask(m) for m in previous[kind]] for kind in ("heads", "neurons")},
    )
    assert [p.keep_heads for p in plans] == [k["keep_heads"] for k in ranks[0]["kept"]]
    assert [p.keep_neurons for p in plans] == [k["keep_neurons"] for k in ranks[0]["kept"]]

    saved = hf_prune.from_pretrained(tmp_path / "final")
    assert [s.heads for s in ModelStructure(saved).shapes()] == [len(k["keep_heads"]) for k in ranks[0]["kept"]]
    assert [s.neurons for s in ModelStructure(saved).shapes()] == [len(k["keep_neurons"]) for k in ranks[0]["kept"]]
    assert len(list(tmp_path.glob("pruning_report.json"))) == 1

    # The Trainer's evaluations reach every rank's report alike; only the main process writes the file.
    evaluations = [r["eval"] for r in ranks]
    assert evaluations[0] == evaluations[1] and evaluations[0]["steps"] == {"before": 0, "after": 16}
    assert evaluations[0]["before"]["loss"] > 0 and evaluations[0]["after"]["loss"] > 0
    saved_eval = json.loads((tmp_path / "pruning_report.json").read_text())["extra"]["eval"]
    assert saved_eval == evaluations[0]
    assert ranks[0]["writes"] == ["pruning_report.json"] * 2 and ranks[1]["writes"] == []


def test_two_processes_skip_the_same_blocks_from_summed_block_influence(tmp_path: Path) -> None:
    _torchrun(DEPTH_WORKER, tmp_path)
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(first["records"]) == len(second["records"]) >= 3
    assert any(a["local"] != b["local"] for a, b in zip(first["records"], second["records"], strict=True)), (
        "each rank sees different batches, so its own sums differ"
    )
    for a, b in zip(first["records"], second["records"], strict=True):
        assert a["step"] == b["step"] and a["skipped"] == b["skipped"], f"ranks disagree at step {a['step']}"
        assert a["summed"] == b["summed"]
        assert a["summed"] == [x + y for x, y in zip(a["local"], b["local"], strict=True)]
    assert first["removed"] == second["removed"] == first["records"][-1]["skipped"] and len(first["removed"]) == 1
    assert first["kept"] == second["kept"]
    saved = hf_prune.from_pretrained(tmp_path / "final")
    assert ModelStructure(saved).num_layers == 2 and saved.config.num_hidden_layers == 2


def test_fsdp2_scores_from_shards_masks_and_final_model_match_a_single_process(tmp_path: Path) -> None:
    """Every weight a DTensor shard (fully_shard on each block and the root): scores summed on the shards equal
    the plain model's, both ranks mask alike, and the end of training leaves a plain pruned model that saves."""
    from tests.distributed_fsdp_worker import CONFIG, PROBE

    _torchrun(FSDP_WORKER, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    for rank in ranks:
        scores = rank["scores"]
        assert scores["weights_sharded"]
        for criterion in ("taylor", "magnitude"):
            for kind, plain in scores["plain"][criterion].items():
                for got, expected in zip(scores["sharded"][criterion][kind], plain, strict=True):
                    assert torch.allclose(torch.tensor(got), torch.tensor(expected), rtol=1e-4, atol=1e-8), (
                        f"{criterion} {kind} scores from shards differ from the plain model's"
                    )
        assert all(rank["sharded_during_training"]) and len(rank["sharded_during_training"]) == 16
        assert not rank["sharded_after"] and rank["class"] == "LlamaForCausalLM"
        assert rank["accelerate_state_matches"], "the full state dict accelerate saves under FSDP2 differs"

        assert "under FSDP2" in rank["refusal"] and "compact=True" in rank["refusal"]

    first, second = ranks[0]["records"], ranks[1]["records"]
    assert len(first) == len(second) >= 3
    for a, b in zip(first, second, strict=True):
        assert a["step"] == b["step"] and a["masks"] == b["masks"], f"ranks disagree at step {a['step']}"
    assert ranks[0]["kept"] == ranks[1]["kept"] and ranks[0]["logits"] == ranks[1]["logits"]

    structure = ModelStructure(CASES_BY_NAME["llama"].build())
    plans = plan_for(
        structure,
        Scores([torch.tensor(h) for h in first[-1]["heads"]], [torch.tensor(n) for n in first[-1]["neurons"]]),
        hf_prune.PruningConfig(**CONFIG),
        progress=1.0,
        masked={kind: [~unpack_mask(m) for m in first[-2]["masks"][kind]] for kind in ("heads", "neurons")},
    )
    assert [p.keep_heads for p in plans] == [k["keep_heads"] for k in ranks[0]["kept"]]
    assert [p.keep_neurons for p in plans] == [k["keep_neurons"] for k in ranks[0]["kept"]]

    saved = hf_prune.from_pretrained(tmp_path / "final")
    assert [s.heads for s in ModelStructure(saved).shapes()] == [len(p.keep_heads) for p in plans]
    assert [s.neurons for s in ModelStructure(saved).shapes()] == [len(p.keep_neurons) for p in plans]
    with torch.no_grad():
        logits = saved(input_ids=PROBE).logits
    assert torch.allclose(logits, torch.tensor(ranks[0]["logits"]), atol=1e-5)
