"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU).

Every rank records, at each mask update, the scores it planned from (after the cross-rank reduction) and the
masks it chose, the evaluations the callback kept, and how many files the callback wrote; rank 0 saves the final
model. Fisher scores come from each rank's own batches, so without the
reduction the ranks would disagree.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import transformers as T
from datasets import Dataset

import hf_prune
from hf_prune import callback as callback_module

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.architectures import CASES_BY_NAME


def main(output: Path) -> None:
    model = CASES_BY_NAME["llama"].build()
    ids = torch.randint(3, 96, (128, 12), generator=torch.Generator().manual_seed(0))
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    held_out = Dataset.from_dict({"input_ids": ids[:32].tolist(), "labels": ids[:32].tolist()})
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
        logging_steps=4,
        eval_on_start=True,
        eval_strategy="steps",
        eval_steps=100,  # none during the run: the callback asks for the final one
    )
    config = hf_prune.PruningConfig(
        heads=0.5, neurons=0.5, importance="fisher", ranking="global", end=0.75, update_every=3, neuron_multiple=1
    )
    callback = hf_prune.PruningCallback(config)
    records = record_updates(
        callback,
        lambda local, reduced: {
            "local_heads": [s.tolist() for s in local.heads],
            "heads": [s.tolist() for s in reduced.heads],
            "neurons": [s.tolist() for s in reduced.neurons],
        },
    )
    writes: list[str] = []
    write = callback_module.atomic_write_text

    def counting_write(path: Path, text: str) -> None:
        writes.append(Path(path).name)
        write(path, text)

    callback_module.atomic_write_text = counting_write
    trainer = T.Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=held_out, callbacks=[callback])
    trainer.train()
    trainer.evaluate()  # after train(): the report is updated, by the main process only
    rank = trainer.args.process_index
    (output / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "world_size": trainer.args.world_size,
                "records": records,
                "kept": callback.report.kept,
                "eval": callback.report.extra.get("eval"),
                "writes": writes,
            }
        )
    )
    trainer.save_model(str(output / "final"))
    # Leave together, with the process group shut down: a rank whose interpreter exited with gloo's threads still
    # running (the other rank still saving) was killed by "terminate called without an active exception".
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def record_updates(
    callback: hf_prune.PruningCallback,
    describe: Callable[[hf_prune.importance.Scores, hf_prune.importance.Scores], dict],
) -> list[dict]:
    """The list to which every mask update of ``callback`` appends ``describe(local scores, reduced scores)``, with
    the update's step and the masks it chose (the cross-rank reduction and the update are wrapped)."""
    records: list[dict] = []
    reduce = callback_module._reduce_scores

    def recording_reduce(scores: hf_prune.importance.Scores) -> hf_prune.importance.Scores:
        reduced = reduce(scores)
        records.append(describe(scores, reduced))
        return reduced

    callback_module._reduce_scores = recording_reduce
    original_update = callback._update

    def update(step: int) -> None:
        original_update(step)
        if records and "masks" not in records[-1]:
            records[-1]["step"] = step
            records[-1]["masks"] = callback.masks.state_dict()

    callback._update = update
    return records


if __name__ == "__main__":
    main(Path(sys.argv[1]))
