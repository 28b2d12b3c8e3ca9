"""ONNX graphs for ONNX Runtime, exported with ``torch.onnx.export(dynamo=True)`` from the loaded model itself.

A graph fixes each layer's shapes, so any pruned layout exports, per-layer ones included. The batch and sequence
axes stay dynamic. After export the graph runs in ONNX Runtime at two shapes and must match PyTorch.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .common import ExportError, atomic_output

logger = logging.get_logger(__name__)

OUTTYPES = ("f32",)
TOLERANCE = 1e-4  # fp32 logits, ONNX Runtime against PyTorch
OPSET = 18
# (batch, sequence) of the traced example and of the second check: different sizes prove the axes are dynamic.
_SHAPES = ((2, 8), (3, 5))


class _Logits(nn.Module):
    """The model as a function of named int64 tensors to one output tensor (logits, or hidden states for a base
    model), without a KV cache."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = dict(zip(self.input_names, inputs, strict=True))
        if "use_cache" in inspect.signature(self.model.forward).parameters:
            kwargs["use_cache"] = False
        output = self.model(**kwargs, return_dict=True)
        return output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state


def input_names(model: nn.Module) -> tuple[str, ...]:
    """The inputs the graph takes: ids and mask, plus token types where the model has more than one."""
    names = ["input_ids", "attention_mask"]
    params = inspect.signature(model.forward).parameters
    if "token_type_ids" in params and int(getattr(model.config, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    missing = [n for n in names if n not in params]
    if missing:
        raise ExportError(f"{type(model).__name__}.forward takes no {', '.join(missing)}; ONNX export feeds them.")
    return tuple(names)


def _example(model: nn.Module, names: tuple[str, ...], batch: int, seq: int, seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    vocab = int(model.config.get_text_config().vocab_size)
    ids = torch.randint(0, vocab, (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq // 2 :] = 0  # right padding in one row: the mask is part of what is checked
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(tensors[n] for n in names)


def max_abs_diff(path: Path, wrapper: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """Largest absolute difference between ONNX Runtime's and PyTorch's outputs on ``inputs``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    (got,) = session.run(None, feeds)
    with torch.no_grad():
        expected = wrapper(*inputs)
    diff = (torch.from_numpy(got) - expected).abs()
    mask = inputs[1].bool()
    if diff.shape[:2] == mask.shape:  # per-token outputs: padded positions are computed but never read
        diff = diff[mask]
    return float(diff.max())


def write_onnx(model: nn.Module, output: Path) -> dict[str, Any]:
    """Export ``model`` to ``output`` as an ONNX graph and check it against PyTorch; returns what was written.

    Raises:
        ExportError: the exporter failed, or ONNX Runtime's outputs differ from PyTorch's by more than 1e-4.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"ONNX export needs onnx, onnxscript and onnxruntime: pip install 'hf-prune[export]' ({err})."
        ) from None
    names = input_names(model)
    wrapper = _Logits(model.eval(), names).eval()
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=1)
    dynamic = tuple({0: batch, 1: seq} for _ in names)
    example = _example(model, names, *_SHAPES[0], seed=0)
    with atomic_output(output) as staging:
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # The exporter's own notices (dims sharing a constraint, a torch-internal deprecation): not the user's.
                warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
                warnings.filterwarnings("ignore", message=".*treespec, LeafSpec", category=FutureWarning)
                program = torch.onnx.export(
                    wrapper,
                    example,
                    dynamo=True,
                    dynamic_shapes=(dynamic,),
                    input_names=list(names),
                    output_names=["logits"],
                    opset_version=OPSET,
                    verbose=False,
                )
        except Exception as err:  # the exporter raises many kinds; all mean the same to the user
            raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {err}") from err
        program.save(str(staging), external_data=False)
        diffs = [
            max_abs_diff(staging, wrapper, _example(model, names, b, s, seed=i)) for i, (b, s) in enumerate(_SHAPES)
        ]
        worst = max(diffs)
        if not worst <= TOLERANCE:
            raise ExportError(
                f"the ONNX graph's outputs differ from PyTorch's by up to {worst:.3g} (tolerance {TOLERANCE:g} in "
                "float32); the export is wrong and was not written."
            )
    logger.info("ONNX export checked against PyTorch: max abs diff %.3g", worst)
    return {"outtype": "f32", "opset": OPSET, "inputs": list(names), "max_abs_diff": worst, "checked_shapes": _SHAPES}
