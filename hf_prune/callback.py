"""PruningCallback: gradual structured pruning inside any ``transformers.Trainer`` run.

During training it scores heads and neurons, masks the least important ones as the schedule advances (masked
groups stay masked), and at the end removes them physically, so ``trainer.save_model()`` writes the small
model. Its state (masks, accumulated scores) survives ``resume_from_checkpoint`` through the Trainer state.

A criterion that accumulates statistics (taylor, fisher, activation) has none before the first optimizer
step: an update due then (``begin=0``, notably the single update of ``schedule="one_shot"``) is deferred to
the end of the first step that has statistics, and applied there with the schedule's progress at that step.

With ``layers=``, whole blocks go too: Block Influence (``1 - cos`` between a block's input and output) is summed
over the training forward passes, the least influential blocks are skipped (their output is their input) as the
schedule advances, and removed at the end with everything else (:class:`hf_prune.depth.BlockSkips`).

With ``compact=True``, the masked units are removed from the live model at every update, and the optimizer's
state is sliced to match (:mod:`hf_prune.compaction`): the rest of the run computes only what is kept. Masks, plans
and the report keep the original numbering of units.

When the run evaluates, the callback keeps the Trainer's eval metrics of the dense model (the last evaluation
before the first pruning update) and of the pruned one (the last after the final update) for the report and card
(:class:`hf_prune.evaluation.TrainerEvaluations`).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

from .calibration import is_causal_lm
from .checkpoint import layout_refusal, not_vanilla_because, record_structure
from .compaction import (
    LiveUnits,
    OriginalLayout,
    check_optimizer_class,
    check_optimizer_state,
    match_checkpoint_shapes,
    recorded_slices,
    slice_optimizer,
)
from .config import PruningConfig
from .depth import BlockSkips, blocks_to_remove, check_depth_recipe, remove_blocks
from .evaluation import TrainerEvaluations
from .flops import Cost, measure_cost, unit_costs
from .importance import Importance, Scores, get_importance
from .latency_table import LatencyTable, measure_latency_table
from .masks import MaskSet
from .modeling_pruned import atomic_write_text
from .prune import (
    PruningReport,
    apply_plan,
    kept_entries,
    latency_entry,
    layers_entries,
    plan_for,
    resolve_fixed,
    resolve_targets,
    stack_block_names,
)
from .sharding import gather_fsdp2, is_sharded
from .structure import LayerShape, ModelStructure

logger = logging.get_logger(__name__)

REPORT_NAME = "pruning_report.json"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model under DDP/FSDP/compile wrappers."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(*parts: torch.Tensor) -> list[torch.Tensor]:
    """``parts`` summed over processes (unchanged in a single process), in one collective."""
    if not _distributed():
        return list(parts)
    flat = torch.cat([p.double().flatten() for p in parts])
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flat = flat.to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    chunks = flat.cpu().split([p.numel() for p in parts])
    return [chunk.view_as(p).to(p.dtype) for chunk, p in zip(chunks, parts, strict=True)]


def _reduce_scores(scores: Scores) -> Scores:
    """Average scores over processes so that every rank masks the same groups."""
    if not _distributed():
        return scores
    kinds = list(scores)
    parts = [p.float() for kind in kinds for p in scores[kind]]
    chunks = iter([c / dist.get_world_size() for c in _all_reduce_sum(*parts)])
    return Scores({kind: [next(chunks) for _ in scores[kind]] for kind in kinds})


def _shared_table(table: LatencyTable) -> LatencyTable:
    """The latency table averaged over processes: every rank must plan on the same costs to mask the same units."""
    if not _distributed():
        return table
    kinds = list(table.curves)
    values = torch.tensor([table.dense_ms, *(ms for kind in kinds for _, ms in table.curves[kind])])
    (summed,) = _all_reduce_sum(values)
    mean = iter((summed / dist.get_world_size()).tolist())
    dense = next(mean)
    curves = {kind: [(units, next(mean)) for units, _ in table.curves[kind]] for kind in kinds}
    return dataclasses.replace(table, dense_ms=dense, curves=curves)


def _gradient_scales(optimizer: Any) -> tuple[float, float]:
    """``(loss scale, scale left on the parameters' gradients)`` of the fp16 ``GradScaler`` behind the Trainer's
    optimizer (accelerate's ``AcceleratedOptimizer.scaler``); ``(1, 1)`` without one. The parameters' gradients
    are free of it once the scaler unscaled them for this step (gradient clipping does)."""
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return 1.0, 1.0
    scale = float(scaler.get_scale())
    inner = optimizer
    while getattr(inner, "scaler", None) is scaler and hasattr(inner, "optimizer"):
        inner = inner.optimizer  # the torch optimizer, which the scaler tracks
    # GradScaler has no public "already unscaled?" query; its per-optimizer stage is what step() itself reads.
    stage = getattr(scaler, "_per_optimizer_states", {}).get(id(inner), {}).get("stage")
    return scale, 1.0 if getattr(stage, "name", None) == "UNSCALED" else scale


class PruningCallback(TrainerCallback, ExportableState):
    """Prune attention heads and MLP neurons gradually during ``Trainer.train()``.

    Example::

        config = hf_prune.PruningConfig(flops=0.4, importance="taylor", schedule="cubic", end=0.7)
        trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[hf_prune.PruningCallback(config)])
        trainer.train()
        trainer.save_model()  # the physically pruned model

    Args:
        config: a :class:`PruningConfig` (or its dict form); keyword ``overrides`` replace fields.

    Attributes:
        evaluations: the Trainer's eval metrics of the dense and of the pruned model, for the report and card.
        final_evaluation: request an evaluation at the last training step, so that the report has the final
            model's figures (set by :class:`PruningTrainer` when it has an ``eval_dataset``; with
            ``eval_strategy="steps"`` the callback requests it anyway).
    """

    def __init__(self, config: PruningConfig | dict[str, Any] | None = None, **overrides: Any) -> None:
        if isinstance(config, dict):
            config = PruningConfig.from_dict(config)
        self.config = (config or PruningConfig()).replace(**overrides)
        if self.config.layers and self.config.cost_target is not None:
            raise ValueError(
                "PruningCallback takes layers= with heads=/neurons= fractions; a flops/params target that counts "
                "removed blocks is one-shot only for now (hf_prune.prune(model, layers=..., params=...)). Give "
                "fractions, or drop layers=."
            )
        if self.config.layers and self.config.layer_importance != "block_influence":
            raise ValueError(
                "during training, blocks are scored by Block Influence, from the training forward passes themselves; "
                f"layer_importance='{self.config.layer_importance}' needs passes of its own over calibration data. Use "
                "it one-shot (hf_prune.prune), or leave layer_importance='block_influence' here."
            )
        if self.config.attention_layers or self.config.mlp_layers:
            raise ValueError(
                "attention_layers= / mlp_layers= remove sublayers one-shot (hf_prune.prune, hf-prune prune), after "
                "heads and neurons; PruningCallback does not remove them during training. Prune the fine-tuned model "
                "one-shot, or remove whole blocks here (layers=)."
            )
        if self.config.reconstruct:
            raise ValueError(
                "reconstruct=True is for one-shot pruning (hf_prune.prune): during fine-tuning, training recovers the "
                "removed units on its own, and folding their mean into the biases at each update did not help "
                "(README, 'Reconstruction on the gradual path'). Leave reconstruct unset here."
            )
        if self.config.compact and self.config.layers:
            raise ValueError(
                "compact=True removes heads, neurons and experts during training; with layers= the skipped blocks are "
                "removed at the end only. Drop layers=, or set compact=False."
            )
        #: importance="auto": Taylor, the best gradual criterion measured, unless the weights are frozen (LoRA)
        self._auto_importance = self.config.importance == "auto"
        if self._auto_importance:
            self.config = self.config.replace(importance="taylor")
        importance = get_importance(self.config.importance)  # fail fast on an unknown name
        del importance
        self.structure: ModelStructure | None = None
        self.masks: MaskSet | None = None
        self.importance: Importance | None = None
        self.report: PruningReport | None = None
        self.blocks: BlockSkips | None = None  # with layers=: the skipped blocks and their Block Influence
        self.live: LiveUnits | None = None  # with compact=True: the original units the live model still has
        self._latency: LatencyTable | None = None  # with latency=: the measured table the allocator meets
        self._optimizer: Any = None
        self._resume: dict[str, Any] | None = None  # set by Trainer when restoring callback states
        self._max_steps: int | None = None
        self._progress = 0.0
        self._last_update = -1
        self._pending = False  # an update was due but had no statistics yet: apply it at the next step end
        self.evaluations = TrainerEvaluations()
        self.final_evaluation = False
        self._after_dense_evaluation = False

    # -- ExportableState: what a checkpoint needs to resume exactly where this run was -----------------

    def state(self) -> dict[str, Any]:
        return {"args": {"config": self.config.to_dict()}, "attributes": {"_resume": self._snapshot()}}

    def _snapshot(self) -> dict[str, Any] | None:
        if self.masks is None or self.importance is None:
            return self._resume
        return {
            "masks": self.masks.state_dict(),
            "importance": self.importance.state_dict(),
            "progress": self._progress,
            "last_update": self._last_update,
            "pending": self._pending,
            "eval": self.evaluations.state_dict(),
            "depth": None if self.blocks is None else self.blocks.state_dict(),
            # The model as it was built: compaction shrinks the live one, and a resumed run starts from that.
            "before_shapes": [dict(s.counts) for s in self._before_shapes],
            "before_cost": dataclasses.asdict(self._before_cost),
            "live": None if self.live is None else self.live.state_dict(),
            "latency": None if self._latency is None else self._latency.to_dict(),
        }

    def _restore(self, snapshot: dict[str, Any]) -> None:
        assert self.masks is not None and self.importance is not None
        self.masks.load_state_dict(snapshot["masks"])
        self.importance.load_state_dict(snapshot["importance"])
        self._progress = float(snapshot.get("progress", 0.0))
        self._last_update = int(snapshot.get("last_update", -1))
        self._pending = bool(snapshot.get("pending", False))
        self.evaluations.load_state_dict(snapshot.get("eval"))
        if self.blocks is not None and snapshot.get("depth"):
            self.blocks.load_state_dict(snapshot["depth"])
        if self.live is not None and snapshot.get("live"):
            self.live.load_state_dict(snapshot["live"])
        logger.info("restored pruning state from the checkpoint (progress %.2f)", self._progress)

    @staticmethod
    def _snapshot_in(state: TrainerState) -> dict[str, Any] | None:
        stored = (state.stateful_callbacks or {}).get(PruningCallback.__name__)
        if isinstance(stored, list):
            stored = stored[0] if stored else None
        if not isinstance(stored, dict):
            return None
        return stored.get("attributes", {}).get("_resume")

    # -- set-up --------------------------------------------------------------------------------------------

    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        if self.config.compact and model is not None:
            self._shrink_on_load(_unwrap(model))

    def _shrink_on_load(self, model: torch.nn.Module) -> None:
        """A checkpoint written after a compaction holds smaller blocks than a freshly built model: shrink the model
        to its shapes when ``Trainer`` loads it to resume (before the optimizer, built on the model, loads its own)."""
        if getattr(model, "_hf_prune_shrinks_on_load", False):
            return
        recipe = self.config.recipe

        def hook(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any) -> None:
            if match_checkpoint_shapes(ModelStructure(module, recipe), state_dict, prefix):
                logger.info("shrank the model to the compacted checkpoint's blocks before loading it")

        model.register_load_state_dict_pre_hook(hook)
        model._hf_prune_shrinks_on_load = True

    def _check_sharding(self, wrapped: torch.nn.Module, model: torch.nn.Module) -> None:
        """Refuse, before the first step, sharding whose weights cannot be read: FSDP1's flat parameters, ZeRO-3's
        placeholders. FSDP2 shards (DTensor) are read shard-wise (:mod:`hf_prune.sharding`)."""
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp._flat_param import FlatParameter  # the one way to recognise FSDP1's weights

        parameters = list(model.parameters())
        fsdp1 = isinstance(wrapped, FullyShardedDataParallel) or any(
            isinstance(m, FullyShardedDataParallel) for m in model.modules()
        )
        if fsdp1 or any(isinstance(p, FlatParameter) for p in parameters):
            raise ValueError(
                "PruningCallback under FSDP1 is not supported: it flattens every block's weights into one "
                "FlatParameter, from which no head or neuron can be read. Use FSDP2 (accelerate: fsdp_version: 2; "
                "TrainingArguments(fsdp_config={'fsdp_version': 2}); or torch's fully_shard), or DDP."
            )
        if any(hasattr(p, "ds_numel") and p.numel() != p.ds_numel for p in parameters):
            raise ValueError(
                "PruningCallback under DeepSpeed ZeRO-3 is not supported: ZeRO-3 replaces every weight by an empty "
                "placeholder, from which no head or neuron can be read. Use ZeRO stage 1 or 2, DDP, or FSDP2."
            )
        if is_sharded(model):
            unsupported = [
                ("compact=True", self.config.compact),
                ("latency=", self.config.latency is not None),
                ("layers=", bool(self.config.layers)),
            ]
            names = [name for name, used in unsupported if used]
            if names:
                raise ValueError(
                    f"under FSDP2 PruningCallback masks heads, neurons and experts and removes them at the end; "
                    f"{' and '.join(names)} would change or time sharded blocks during training, which it does not "
                    "do yet. Drop them (compact=False), or train under DDP."
                )

    def _check_compaction(self, args: TrainingArguments, optimizer: Any) -> None:
        """Refuse, before training, what compaction cannot do yet, naming the alternative."""
        # FSDP and ZeRO-3 never get here (_check_sharding refuses them).
        where = "several processes (DDP)" if _distributed() else "DeepSpeed" if args.deepspeed else None
        if where:
            raise ValueError(
                f"compact=True runs in a single process for now; this run uses {where}, whose wrappers hold the "
                "parameters it would replace. Set compact=False: masking works there, and the end of training "
                "removes the masked units all the same."
            )
        if args.load_best_model_at_end:
            raise ValueError(
                "compact=True with load_best_model_at_end: an earlier checkpoint can be larger than the compacted "
                "model and cannot be loaded back into it. Set load_best_model_at_end=False, or compact=False."
            )
        check_optimizer_class(optimizer)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        if model is None:
            raise ValueError("PruningCallback needs the Trainer's model; use it with transformers.Trainer.")
        wrapped, model = model, _unwrap(model)
        self._check_sharding(wrapped, model)
        if self.config.compact:
            self._check_compaction(args, kwargs.get("optimizer"))
            self._shrink_on_load(model)  # a later resume in this process
        self._optimizer = kwargs.get("optimizer")
        self.structure = ModelStructure(model, self.config.recipe)
        self._check_adapters(args, model)
        snapshot = self._resume or (self._snapshot_in(state) if state.global_step > 0 else None)
        heads, neurons, self._protected = resolve_targets(self.config, self.structure)
        fixed = resolve_fixed(self.config, self.structure)
        cost_target = self.config.cost_target is not None
        if not cost_target and heads == 0 and neurons == 0 and not any(fixed.values()) and not self.config.layers:
            raise ValueError(
                "PruningCallback has a target of 0: nothing would be pruned. Set heads/neurons/experts/expert_neurons "
                "(fractions in (0, 1)), layers, or a flops/params target."
            )
        if self.config.layers:
            check_depth_recipe(self.structure)
            blocks_to_remove(self.config.layers, self.structure.num_layers, self._protected)  # refuses too many
            self.blocks = BlockSkips(self.structure.layers)
        self._max_steps = state.max_steps if state.max_steps and state.max_steps > 0 else None
        self.schedule = self.config.to_schedule()
        self.schedule.steps(self._max_steps)  # validates the schedule against the length of training
        if snapshot and snapshot.get("before_shapes"):  # the model as it was built, which compaction may have shrunk
            self._before_shapes = [LayerShape(counts) for counts in snapshot["before_shapes"]]
            self._before_cost = Cost(**snapshot["before_cost"])
        else:
            self._before_shapes = self.structure.shapes()
            self._before_cost = measure_cost(self.structure, self.config.flops_seq_len)
        self._flops_costs = unit_costs(self.structure, "flops", self.config.flops_seq_len)
        self.layout = OriginalLayout(self.structure, self._before_shapes)
        self.live = LiveUnits(self._before_shapes) if self.config.compact else None
        self.masks = MaskSet(self.structure, self._before_shapes, self.live)
        self.importance = get_importance(self.config.importance, **self._importance_kwargs())

        self._latency = None
        if snapshot and snapshot.get("latency"):  # measured once, on the model as it was built
            self._latency = LatencyTable(**snapshot["latency"])
        elif self.config.latency is not None:
            table = measure_latency_table(self.structure, self.config.latency_batch_size, self.config.latency_seq_len)
            self._latency = _shared_table(table)
        if snapshot:
            self._restore(snapshot)
            if self.live is not None and self.live.compacted:
                self._check_resumed_shapes()
        self._attach_observers()
        if self.blocks is not None:
            self.blocks.attach()
        if not snapshot and self.schedule.is_update_step(state.global_step, self._max_steps):
            if args.eval_on_start:  # Trainer evaluates next, before any step: let it measure the dense model first
                self._after_dense_evaluation = True
            else:
                self._update(state.global_step)

    def _attach_observers(self) -> None:
        """The masks' hooks, then the criterion's (hooks run in the order they were registered). A criterion that
        multiplies a kind's mask-module input anyway (fisher's gates) applies that kind's masks in the same
        multiply."""
        assert self.masks is not None and self.importance is not None and self.structure is not None
        folded = set(self.importance.applies_masks(self.structure))
        self.masks.attach(kinds=[kind.name for kind in self.structure.leaders if kind.name not in folded])
        if folded:
            self.importance.attach(self.structure, masks=self.masks)
        else:  # a criterion registered by a user may still define attach(structure) alone
            self.importance.attach(self.structure)

    def _check_resumed_shapes(self) -> None:
        """A resumed compacted run: the model must have been shrunk to the checkpoint's blocks when it loaded."""
        assert self.structure is not None and self.live is not None
        expected = [
            {kind: len(per[i]) for kind, per in self.live.ids.items()} for i in range(self.structure.num_layers)
        ]
        if [dict(s.counts) for s in self.structure.shapes()] != expected:
            raise ValueError(
                "this checkpoint was compacted during training, but the model was not shrunk to it when it loaded. "
                "Pass the PruningCallback to Trainer(callbacks=[...]) when the Trainer is built (it shrinks the model "
                "as the checkpoint loads), not with add_callback later."
            )
        record_structure(self.structure, layout_refusal(self.structure, expected))  # the config says what it is

    def _check_adapters(self, args: TrainingArguments, model: torch.nn.Module) -> None:
        """A peft model (LoRA) trains adapters on frozen weights: no weight gradients for Taylor to read, and only the
        adapters go into checkpoints. Choose what works, or refuse what cannot, before the first step."""
        assert self.structure is not None
        frozen = not any(
            self.structure.module(i, role).weight.requires_grad
            for i in range(self.structure.num_layers)
            for role in self.structure.roles()
            if self.structure.present(i, role)
        )
        if frozen and getattr(get_importance(self.config.importance), "reads_weight_gradients_only", False):
            if not self._auto_importance:
                raise ValueError(
                    f"importance='{self.config.importance}' reads the gradients of the pruned projections' weights, "
                    "and every one of them is frozen (LoRA keeps the base weights fixed). Use importance='fisher' "
                    "(mask gradients, which LoRA training computes) or 'activation', or leave importance='auto'."
                )
            logger.info("the pruned weights are frozen (adapters train): importance 'auto' is Fisher here")
            self.config = self.config.replace(importance="fisher")
        if self.structure.model is model:
            return
        if self.config.compact:
            raise ValueError(
                "compact=True with a peft model: Trainer checkpoints hold only the adapters, which a resumed run could "
                "not match to full-size base weights. Set compact=False (masking; the end of training removes the "
                "masked units from base weights and adapters alike)."
            )
        if args.push_to_hub:
            raise ValueError(
                "push_to_hub with a peft model would upload adapters for a base model nobody has. After training, "
                "merge them (model.merge_and_unload()) and push the compact model: hf_prune.push_to_hub(folder, ...)."
            )

    def _importance_kwargs(self) -> dict[str, Any]:
        criterion = get_importance(self.config.importance)
        return {"beta": self.config.ema_beta} if criterion.accumulates else {}

    # -- during training -----------------------------------------------------------------------------------

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.importance is None or not self.importance.accumulates:
            return
        if self._pending or state.global_step < self._last_schedule_step():
            self.importance.set_loss_scale(*_gradient_scales(kwargs.get("optimizer")))
            self.importance.accumulate(self.structure)

    def _last_schedule_step(self) -> int:
        """The step of the schedule's last update; after it the structure is frozen and nothing needs scores."""
        begin, end = self.schedule.steps(self._max_steps)
        return begin if self.schedule.kind == "one_shot" else end

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._pending or self.schedule.is_update_step(state.global_step, self._max_steps):
            self._update(state.global_step)
        last_step = bool(state.max_steps) and state.global_step >= state.max_steps
        if last_step and (self.final_evaluation or args.eval_strategy == "steps"):
            control.should_evaluate = True  # the final model's figures, for the report

    def _target(self) -> float:
        config = self.config
        if config.cost_target is not None:
            return config.cost_target[1]
        assert self.structure is not None
        heads, neurons, _ = resolve_targets(config, self.structure)
        return max(heads, neurons, *resolve_fixed(config, self.structure).values(), config.layers or 0.0)

    def _update(self, step: int) -> None:
        assert self.structure is not None and self.masks is not None and self.importance is not None
        if self.importance.accumulates and getattr(self.importance, "updates", 0) == 0:
            if not self._pending:
                logger.info(
                    "importance '%s' has no statistics yet at step %d: the update waits for the first step that "
                    "has them",
                    self.importance.name,
                    step,
                )
            self._pending = True
            return
        self._pending = False
        progress = self.schedule.progress(step, self._max_steps, self._target())
        scores = _reduce_scores(self.importance.scores(self.structure))
        if self.live is not None:  # the live model's units, in the original numbering plans use
            live = self.live
            scores = Scores({k: [live.original(k, i, v) for i, v in enumerate(vs)] for k, vs in scores.items()})
        width = self.config
        if self.blocks is not None:
            sums, tokens = _all_reduce_sum(*self.blocks.totals())
            count = blocks_to_remove(progress * (self.config.layers or 0.0), self.structure.num_layers, self._protected)
            self.blocks.skip_more(count, sums / tokens.clamp_min(1.0), self._protected)
            # Skipped blocks go whole at the end: width budgets (global ranking) are spent on the others. A tensor
            # shared by every block's heads forbids protecting some: then the skipped blocks lose heads too.
            if self.blocks.skipped and not self.structure.shared_head_tensors():
                width = width.replace(protected_layers=sorted({*self._protected, *self.blocks.skipped}))
        plans = plan_for(
            self.layout,
            scores,
            width,
            progress,
            masked={kind: [~m for m in masks] for kind, masks in self.masks.masks.items()},
            before=self._before_cost,
            latency=self._latency,
        )
        self.masks.set_from_plan(plans)
        self._progress, self._last_update = progress, step
        if self.live is not None:
            self._compact()

    def _compact(self) -> None:
        """Remove the masked units that the live model still has, and slice the optimizer's state to match."""
        assert self.structure is not None and self.masks is not None and self.importance is not None
        assert self.live is not None
        plans = self.live.live_plans(self.masks.to_plan())
        shapes = self.structure.shapes()
        if all(plan.counts() == dict(shape.counts) for plan, shape in zip(plans, shapes, strict=True)):
            return
        check_optimizer_state(self._optimizer)  # before any surgery
        self.masks.detach()  # apply_plan masks the model itself to check that the compact one computes the same
        self.importance.detach()  # its hooks hold the old widths
        with recorded_slices() as slices:
            apply_plan(self.structure, plans)
        slice_optimizer(self._optimizer, slices)
        self.importance.keep_units(
            {
                kind.name: [torch.as_tensor(p.keep[kind.name], dtype=torch.long) for p in plans]
                for kind in self.structure.leaders
            }
        )
        self.live.keep(plans)
        self._attach_observers()
        logger.info("compacted the model: %s", json.dumps(self.metrics()))

    # -- visibility ----------------------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """The callback's state as log values: progress, fractions of heads/neurons/block FLOPs kept."""
        if self.masks is None:
            return {}
        before = self._before_shapes
        kept = [plan.counts() for plan in self.masks.to_plan()]
        removed = sum(self._flops_costs.removed(b.counts, k) for b, k in zip(before, kept, strict=True))
        values: dict[str, float] = {"pruning/progress": round(self._progress, 4)}
        for kind in self.structure.leaders:  # pruning/heads_kept, pruning/neurons_kept...
            values[f"pruning/{kind.name}_kept"] = sum(k[kind.name] for k in kept) / sum(b[kind.name] for b in before)
        values["pruning/block_flops_kept"] = 1.0 - removed / self._before_cost.block_flops_per_token
        if self.blocks is not None:
            values["pruning/blocks_kept"] = 1.0 - len(self.blocks.skipped) / len(before)
        return values

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        values = self.metrics()
        if logs is not None:
            logs.update(values)  # later callbacks (progress bar, and TensorBoard/W&B if this one runs first)
        if state.log_history:
            state.log_history[-1].update(values)  # trainer_state.json

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.report is not None or self._progress >= 1.0:  # the final structure (masked or removed)
            stage: str | None = "after"
        else:
            skips = self.blocks is not None and bool(self.blocks.skipped)
            stage = "before" if self.masks is None or (self.masks.dense and not skips) else None  # else partly pruned
        model = kwargs.get("model")
        dataset = getattr(kwargs.get("eval_dataloader"), "dataset", None)
        causal = model is not None and is_causal_lm(_unwrap(model))
        self.evaluations.record(metrics or {}, state.global_step, stage, dataset, causal)
        if self._after_dense_evaluation:  # the update due at step 0, which eval_on_start's evaluation waited for
            self._after_dense_evaluation = False
            self._update(state.global_step)
        if self.report is not None:  # evaluated after train(): the saved report gets the figures too
            self.report.extra["eval"] = self.evaluations.entry()
            self._write_report(args, state)

    def _write_report(self, args: TrainingArguments, state: TrainerState) -> None:
        if state.is_world_process_zero and self.report is not None:
            output = Path(args.output_dir)
            output.mkdir(parents=True, exist_ok=True)
            atomic_write_text(output / REPORT_NAME, self.report.to_json())

    # -- the end: remove for good --------------------------------------------------------------------------

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        if self.structure is None or self.masks is None or self.importance is None:
            return
        if self._progress < 1.0:
            warnings.warn(
                f"training ended at {self._progress:.0%} of the pruning schedule: the model is pruned less than the "
                "target. Make the schedule end before training does.",
                stacklevel=2,
            )
        self.masks.detach()
        self.importance.detach()
        if is_sharded(self.structure.model):  # FSDP2: whole weights on every process, then surgery as in one
            gather_fsdp2(self.structure.model)
            self.structure = ModelStructure(self.structure.model, self.config.recipe)
        plans = self.masks.to_plan()
        # Surgery works in the live model's numbering; the report keeps the original one.
        live_plans = plans if self.live is None else self.live.live_plans(plans)
        removed: list[int] = []
        if self.blocks is not None:
            self.blocks.detach()
            removed = list(self.blocks.skipped)
            depth_scores = self.blocks.scores()
            if removed:
                remove_blocks(self.structure, removed)
                self.structure = ModelStructure(self.structure.model, self.config.recipe)
                plans = [plan for i, plan in enumerate(plans) if i not in removed]
                live_plans = plans
        vanilla = apply_plan(self.structure, live_plans)
        self.report = PruningReport(
            model_type=self.structure.config.model_type,
            recipe=self.structure.recipe.name,
            config=self.config.to_dict(),
            head_dim=self.structure.head_dim,
            layers_before=[dict(s.counts) for s in self._before_shapes],
            layers_after=layers_entries(self.structure, removed),
            before=self._before_cost,
            after=measure_cost(self.structure, self.config.flops_seq_len),
            vanilla_loadable=vanilla,
            kept=kept_entries(self.structure, plans, removed),
            not_vanilla_because=not_vanilla_because(self.structure.config),
            block_names=stack_block_names(self.structure),
            removed_layers=removed,
            extra={
                "schedule": {
                    "kind": self.config.schedule,
                    "begin": self.config.begin,
                    "end": self.config.end,
                    "update_every": self.config.update_every,
                    "max_steps": self._max_steps,
                    "progress_reached": self._progress,
                },
                "importance": self.config.importance,
                "training_steps": state.global_step,
            },
        )
        if self.blocks is not None:
            scores = [round(float(v), 6) for v in depth_scores]
            self.report.extra["depth"] = {"criterion": "block_influence", "removed_layers": removed, "scores": scores}
        if (evaluations := self.evaluations.entry()) is not None:
            self.report.extra["eval"] = evaluations
        if self._latency is not None and self.config.latency is not None:
            was_training = self.structure.model.training
            before = [dict(s.counts) for s in self._before_shapes]
            self.report.extra["latency"] = latency_entry(self._latency, self.config.latency, before, self.structure)
            self.structure.model.train(was_training)
        self.structure.model.hf_prune_report = self.report
        self._write_report(args, state)
        if state.is_world_process_zero and args.push_to_hub:
            self._push(args, kwargs.get("processing_class"))
        logger.info("pruning finished: %s", json.dumps(self.metrics()))

    def _push(self, args: TrainingArguments, processing_class: Any) -> None:
        """``TrainingArguments(push_to_hub=True)``: upload the compact model and its card, not the masked one."""
        from .card import write_card
        from .hub import push_to_hub

        assert self.structure is not None and self.report is not None
        model, output = self.structure.model, Path(args.output_dir)
        model.save_pretrained(output)
        if processing_class is not None:
            processing_class.save_pretrained(output)
        write_card(output, self.report, config=model.config, model_class_name=type(model).__name__)
        repo_id = args.hub_model_id or output.name
        push_to_hub(
            output,
            repo_id,
            private=args.hub_private_repo,
            revision=args.hub_revision,
            token=args.hub_token,
            commit_message="Pruned with hf_prune",
        )
