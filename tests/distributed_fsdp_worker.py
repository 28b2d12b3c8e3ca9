"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU), with the model sharded by FSDP2
(``fully_shard`` on every decoder layer and on the root; every weight a DTensor shard).

1. Scores from shards: one forward/backward of the sharded model, each rank on its own batch; FSDP2 averages the
   gradients, which is the gradient of the mean loss over both batches. Taylor and magnitude scores read from the
   shards are recorded next to the same scores of a plain copy of the model run on both batches at once.
2. A Trainer run with the callback (Taylor), which records each update's reduced scores and masks, the model's
   logits at the end (gathered and pruned in place by the callback) and its parameter types; rank 0 saves it.

accelerate applies FSDP2 only on GPUs (on CPU it falls back to DDP, which cannot wrap DTensors), so the worker shards
the model itself and keeps accelerate from wrapping it again: what the Trainer runs is what accelerate's FSDP2
path hands it, a ``fully_shard``-ed model.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import transformers as T
from datasets import Dataset
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

import hf_prune
from hf_prune.importance import MagnitudeImportance, TaylorImportance
from hf_prune.sharding import is_sharded
from hf_prune.structure import ModelStructure

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.architectures import CASES_BY_NAME
from tests.distributed_worker import record_updates

CONFIG = {
    "heads": 0.5,
    "neurons": 0.5,
    "importance": "taylor",
    "ranking": "global",
    "end": 0.75,
    "update_every": 3,
    "neuron_multiple": 1,
}
PROBE = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(7))


def shard(model: torch.nn.Module) -> torch.nn.Module:
    for layer in model.model.layers:
        fully_shard(layer)
    return fully_shard(model)


def _lists(scores: hf_prune.importance.Scores) -> dict[str, list[list[float]]]:
    return {kind: [t.tolist() for t in tensors] for kind, tensors in scores.items()}


def scores_from_shards(rank: int) -> dict:
    """Taylor and magnitude scores of the sharded model and of a plain copy given the same gradient."""
    batches = [torch.randint(3, 96, (4, 12), generator=torch.Generator().manual_seed(100 + r)) for r in (0, 1)]
    plain = CASES_BY_NAME["llama"].build()
    sharded = shard(copy.deepcopy(plain))
    sharded(input_ids=batches[rank], labels=batches[rank]).loss.backward()
    both = torch.cat(batches)
    plain(input_ids=both, labels=both).loss.backward()
    recorded = {}
    for name, model in (("sharded", sharded), ("plain", plain)):
        structure = ModelStructure(model)
        taylor = TaylorImportance(beta=None)
        taylor.accumulate(structure)
        recorded[name] = {
            "taylor": _lists(taylor.scores(structure)),
            "magnitude": _lists(MagnitudeImportance().scores(structure)),
        }
    recorded["weights_sharded"] = is_sharded(sharded)
    return recorded


def train(output: Path) -> dict:
    model = shard(CASES_BY_NAME["llama"].build())
    ids = torch.randint(3, 96, (128, 12), generator=torch.Generator().manual_seed(0))
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = T.TrainingArguments(
        output_dir=str(output),
        max_steps=16,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        ddp_backend="gloo",
        seed=0,
        disable_tqdm=True,
    )
    callback = hf_prune.PruningCallback(hf_prune.PruningConfig(**CONFIG))
    records = record_updates(callback, lambda local, reduced: _lists(reduced))
    trainer = T.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])
    prepare_model = trainer.accelerator.prepare_model
    trainer.accelerator.prepare_model = lambda m, *a, **k: m if is_sharded(m) else prepare_model(m, *a, **k)
    sharded_during_training = []
    trainer.add_callback(_Probe(sharded_during_training))
    trainer.train()
    final = trainer.model
    with torch.no_grad():
        logits = final.eval()(input_ids=PROBE).logits
    # What accelerate's FSDP2 path saves (Accelerator.get_state_dict): the full state dict, on rank 0, on the CPU.
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
    full_state = get_model_state_dict(final, options=options)
    plain_state = final.state_dict()
    main = trainer.args.process_index == 0  # the other ranks get an empty dict (cpu_offload: rank 0 only)
    accelerate_state_matches = not main or (
        set(full_state) == set(plain_state) and all(torch.equal(full_state[k], plain_state[k]) for k in plain_state)
    )
    trainer.save_model(str(output / "final"))
    return {
        "accelerate_state_matches": accelerate_state_matches,
        "records": records,
        "kept": callback.report.kept,
        "sharded_during_training": sharded_during_training,
        "sharded_after": is_sharded(final),
        "class": type(final).__name__,
        "logits": logits.tolist(),
    }


def refusal() -> str:
    """What the callback says when asked to compact a sharded model."""
    model = shard(CASES_BY_NAME["llama"].build())
    try:
        hf_prune.PruningCallback(heads=0.5, compact=True)._check_sharding(model, model)
    except ValueError as error:
        return str(error)
    return ""


class _Probe(T.TrainerCallback):
    """Records, at every step, whether the Trainer's model still holds DTensor shards."""

    def __init__(self, seen: list[bool]) -> None:
        self.seen = seen

    def on_step_end(self, args: object, state: object, control: object, model: object = None, **kwargs: object) -> None:
        self.seen.append(is_sharded(model))


def main(output: Path) -> None:
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    result = {"world_size": torch.distributed.get_world_size(), "scores": scores_from_shards(rank)}
    result["refusal"] = refusal()
    result.update(train(output))
    (output / f"rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
