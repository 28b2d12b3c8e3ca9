"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU), with layers=: every rank
records, at each update, its own Block Influence sums, the summed ones it chose from and the blocks it skips;
rank 0 saves the final model."""

from __future__ import annotations

import json
import sys
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
    config = hf_prune.PruningConfig(
        layers=0.34, heads=0.5, neurons=0.0, importance="fisher", ranking="global", end=0.75, update_every=3
    )
    callback = hf_prune.PruningCallback(config)
    records: list[dict] = []
    reduce = callback_module._all_reduce_sum

    def recording_reduce(*parts: torch.Tensor) -> list[torch.Tensor]:
        reduced = reduce(*parts)
        if len(parts) == 2:  # the depth sums and token counts (width scores go through _reduce_scores)
            records.append({"local": parts[0].tolist(), "summed": reduced[0].tolist()})
        return reduced

    callback_module._all_reduce_sum = recording_reduce
    original_update = callback._update

    def update(step: int) -> None:
        original_update(step)
        if records and "skipped" not in records[-1]:
            records[-1] |= {"step": step, "skipped": list(callback.blocks.skipped)}

    callback._update = update
    trainer = T.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])
    trainer.train()
    rank = trainer.args.process_index
    report = callback.report
    (output / f"rank{rank}.json").write_text(
        json.dumps({"records": records, "removed": report.removed_layers, "kept": report.kept})
    )
    trainer.save_model(str(output / "final"))
    # Leave together, with the process group shut down: a rank whose interpreter exited with gloo's threads still
    # running (the other rank still saving) was killed by "terminate called without an active exception".
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
