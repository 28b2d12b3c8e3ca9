"""Does bias compensation at each mask update help the gradual path? (Measured: no; see README, "Pruning while
fine-tuning".) The variant lives here, not in hf_prune, because it did not help.

    python benchmarks/gradual_compensation.py --compensation bias -- --epochs 0.3 --flops 0.4 --results FILE ...

runs ``examples/prune_minilm_sentiment.py`` with the arguments after ``--``, with PruningCallback patched so that at
each mask update the units it masks hand their mean contribution (the mean input of the output projection over the
training passes since the previous update, padding excluded) to the output projection's bias: FLAP's bias
compensation (An et al. 2024) applied at every update of the schedule. ``--compensation off`` runs the same script
unpatched; ``--compensation dense`` only fine-tunes and caches the dense model. ``gradual_compensation.sh`` runs the
measured points.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import torch

import hf_prune
from hf_prune import callback

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "prune_minilm_sentiment.py"
_begin, _update = callback.PruningCallback.on_train_begin, callback.PruningCallback._update


def on_train_begin(self, args, state, control, model=None, **kwargs):
    """The callback's set-up, then hooks that sum each mask module's input rows over training passes."""
    _begin(self, args, state, control, model=model, **kwargs)
    structure, self._sums, self._rows, self._real = self.structure, {}, {}, {}

    def note_padding(module, positional, keywords):
        mask = keywords.get("attention_mask")
        self._real["rows"] = None if mask is None else mask.reshape(-1).bool()

    structure.model.register_forward_pre_hook(note_padding, with_kwargs=True)
    for index in range(structure.num_layers):
        for kind in structure.leaders:

            def hook(module, inputs, key=(kind.name, index)):
                if not torch.is_grad_enabled():
                    return  # evaluation passes do not count
                z = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
                rows = self._real.get("rows")
                if rows is not None and rows.numel() == z.shape[0]:
                    z = z[rows]
                self._sums[key] = self._sums.get(key, 0) + z.double().sum(0)
                self._rows[key] = self._rows.get(key, 0) + z.shape[0]

            kind.mask_module(structure, index).register_forward_pre_hook(hook)


def update_with_compensation(self, step):
    """The callback's update, then the fold of every newly masked unit's mean contribution into the bias."""
    before = {kind: [m.clone() for m in masks] for kind, masks in self.masks.masks.items()}
    _update(self, step)
    if self._pending:
        return
    structure, folded = self.structure, 0
    for kind in structure.leaders:
        width = kind.unit_width(structure)
        for index in range(structure.num_layers):
            newly, key = before[kind.name][index] & ~self.masks.masks[kind.name][index], (kind.name, index)
            if newly.any() and key in self._sums:
                columns = newly.repeat_interleave(width)
                mean = self._sums[key] / self._rows[key]
                module = kind.mask_module(structure, index)  # MiniLM's output projections have biases
                with torch.no_grad():
                    module.bias += (module.weight.double()[:, columns] @ mean[columns]).to(module.bias.dtype)
                folded += int(newly.sum())
    print(f"step {step}: folded the mean of {folded} newly masked units into biases", flush=True)
    self._sums.clear()
    self._rows.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compensation", choices=["off", "bias", "dense"], required=True)
    args, example_args = parser.parse_known_args()
    if example_args[:1] == ["--"]:
        example_args = example_args[1:]
    if args.compensation == "bias":
        callback.PruningCallback.on_train_begin = on_train_begin
        callback.PruningCallback._update = update_with_compensation
    elif args.compensation == "dense":

        def stop(*_args, **_kwargs):
            raise SystemExit("dense model fine-tuned and saved")

        hf_prune.PruningTrainer.train = stop
    sys.argv = [str(EXAMPLE), *example_args]
    runpy.run_path(str(EXAMPLE), run_name="__main__")


if __name__ == "__main__":
    main()
