"""PruningTrainer: ``transformers.Trainer`` plus pruning and recovery by distillation from the unpruned model.

``Trainer``'s ``compute_loss_func`` never sees the inputs, so the teacher cannot be run there; a small
subclass that overrides ``compute_loss`` is the least surprising place (CoFi, Xia et al. 2022, distils the
same way: logits with a temperature, optionally hidden states layer by layer).

    trainer = PruningTrainer(model=model, args=args, train_dataset=ds,          # was: Trainer(...)
                             pruning=PruningConfig(flops=0.4), distillation=DistillationConfig())

With an ``eval_dataset`` it also measures what pruning cost: it evaluates the dense model when training starts and
the final model at the last step, and the report, the card and the push guard get both figures.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from .callback import PruningCallback
from .config import PruningConfig
from .hub import check_quality


@dataclass
class DistillationConfig:
    """Knowledge distillation from the unpruned model during pruning."""

    alpha: float = field(default=0.5, metadata={"help": "weight of the distillation loss; the task loss gets 1-alpha"})
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature of the logit distillation"})
    hidden_weight: float = field(
        default=0.0, metadata={"help": "weight of the layer-by-layer hidden-state MSE (0 disables it)"}
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {self.alpha!r}.")
        if self.temperature <= 0:
            raise ValueError(f"distillation temperature must be positive, got {self.temperature!r}.")
        if self.hidden_weight < 0:
            raise ValueError(f"hidden_weight must be >= 0, got {self.hidden_weight!r}.")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T^2 * KL(teacher || student)`` on temperature-softened logits, averaged over positions in ``mask``."""
    vocab = student_logits.shape[-1]
    student = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    per_position = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
    if mask is not None and mask.numel() == per_position.numel():
        weights = mask.reshape(-1).to(per_position.dtype)
        return (per_position * weights).sum() / weights.sum().clamp_min(1.0) * temperature**2
    return per_position.mean() * temperature**2


class PruningTrainer(Trainer):
    """A ``Trainer`` that prunes with :class:`PruningCallback` and can distil from the unpruned model.

    Args:
        pruning: a :class:`PruningConfig` or a ready :class:`PruningCallback`. The callback is put first in the
            callback list so that its log values reach TensorBoard, W&B and the progress bar.
        distillation: a :class:`DistillationConfig` (or ``True`` for the defaults) to distil from ``teacher``.
        teacher: the teacher model; by default a frozen copy of ``model`` as it is when the trainer is built.
        *args, **kwargs: everything ``transformers.Trainer`` takes.

    With an ``eval_dataset``, :meth:`train` evaluates the dense model first (as ``eval_on_start=True`` does; not
    when resuming, whose checkpoint holds that figure) and the model at the last step, so the report and card state
    the quality before and after pruning; :meth:`push_to_hub` refuses a model whose quality collapsed.
    """

    def __init__(
        self,
        *args: Any,
        pruning: PruningConfig | PruningCallback | None = None,
        distillation: DistillationConfig | bool | None = None,
        teacher: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        model = kwargs.get("model", args[0] if args else None)
        if distillation and teacher is None:
            teacher = copy.deepcopy(model)  # before any mask hook is attached: the dense model
        super().__init__(*args, **kwargs)
        if pruning is not None:
            callback = pruning if isinstance(pruning, PruningCallback) else PruningCallback(pruning)
            self.callback_handler.callbacks.insert(0, callback)
        self.distillation = DistillationConfig() if distillation is True else (distillation or None)
        self.teacher = None
        if self.distillation is not None:
            self.teacher = teacher.to(self.args.device).eval()
            for parameter in self.teacher.parameters():
                parameter.requires_grad_(False)

    @property
    def pruning_callback(self) -> PruningCallback | None:
        """The live :class:`PruningCallback` of this trainer (``None`` without one).

        Looked up rather than kept: with ``restore_callback_states_from_checkpoint=True`` Trainer replaces each
        stateful callback by a new instance built from the checkpoint, and only that one prunes and reports.
        """
        return next((c for c in self.callback_handler.callbacks if isinstance(c, PruningCallback)), None)

    def _load_callback_state(self) -> None:
        # Trainer appends the rebuilt callbacks at the end of the list: put the pruning callback first again, so
        # that its log values still reach the reporting integrations.
        super()._load_callback_state()
        callback = self.pruning_callback
        if callback is not None and self.callback_handler.callbacks[0] is not callback:
            self.callback_handler.callbacks.remove(callback)
            self.callback_handler.callbacks.insert(0, callback)
        if callback is not None:
            callback.final_evaluation = self.eval_dataset is not None

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; with an ``eval_dataset``, the dense model is evaluated at the start (unless resuming)
        and the final one at the last step, for the report's before/after figures."""
        callback = self.pruning_callback
        evaluates = callback is not None and self.eval_dataset is not None
        if callback is not None:
            callback.final_evaluation = evaluates
        dense_first = evaluates and not self.args.eval_on_start and not resume_from_checkpoint
        if dense_first:
            self.args.eval_on_start = True  # Trainer evaluates right after on_train_begin, before any update
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            if dense_first:
                self.args.eval_on_start = False

    def push_to_hub(self, *args: Any, force: bool = False, **kwargs: Any) -> Any:
        """``Trainer.push_to_hub``, refused (before anything is sent) when the measured quality collapsed, unless
        ``force=True``."""
        callback = self.pruning_callback
        check_quality(callback.report if callback is not None else None, force)
        return super().push_to_hub(*args, **kwargs)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """After pruning, the card is hf_prune's (what was removed, what it cost and gained, how to load it)."""
        report = self.pruning_callback.report if self.pruning_callback is not None else None
        if report is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            from .card import write_card

            model = self.model
            write_card(self.args.output_dir, report, config=model.config, model_class_name=type(model).__name__)
        return None

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if self.teacher is None or self.distillation is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        config = self.distillation
        hidden = config.hidden_weight > 0
        student_inputs = {**inputs, "output_hidden_states": True} if hidden else inputs
        task_loss, outputs = super().compute_loss(model, student_inputs, True, num_items_in_batch)
        teacher_inputs = {k: v for k, v in student_inputs.items() if k != "labels"}
        with torch.no_grad():
            teacher_outputs = self.teacher(**teacher_inputs)
        mask = inputs.get("attention_mask")
        loss = (1.0 - config.alpha) * task_loss + config.alpha * distillation_loss(
            outputs.logits, teacher_outputs.logits, config.temperature, mask
        )
        if hidden:
            pairs = zip(outputs.hidden_states, teacher_outputs.hidden_states, strict=True)
            loss = loss + config.hidden_weight * torch.stack([F.mse_loss(s, t) for s, t in pairs]).mean()
        return (loss, outputs) if return_outputs else loss
