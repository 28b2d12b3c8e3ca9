"""Verify before the write: after surgery, the pruned model must compute what the masked model computed.

Masking a head or a neuron (zeroing its input to ``o`` / ``down``) and removing it are the same function by
construction, for everything the recipe describes. When they disagree, or the pruned model does not run at
all, the recipe misses something about the architecture: a per-head tensor outside the blocks, or a module
attribute that the forward pass reads. That is caught here, on one small input, before anything is written.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .recipe import RecipeError

PROBE_TOKENS = 8

LIKELY_CAUSES = (
    "Likely causes: a per-head tensor outside the blocks that every layer reads (such as a relative attention "
    "bias with one column per head): declare it in the recipe under `attention.shared_head_tensors`; or a module "
    "attribute or config value that the forward pass reads and the recipe does not update (`module_attributes`, "
    "`module_config`). Nothing was written; the model in memory is pruned but broken: reload it."
)


class PrunedModelError(RecipeError):
    """The pruned model fails, or disagrees with the masked model it must equal."""


def probe_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """A small, seeded input on the model's device: one sequence of ``PROBE_TOKENS`` token ids, one random image
    for a vision model (``main_input_name == "pixel_values"``), or one random log-mel spectrogram for a speech
    encoder (``"input_features"``: Whisper's ``num_mel_bins`` x ``2 * max_source_positions`` frames); an
    encoder-decoder model also gets decoder token ids."""
    generator = torch.Generator().manual_seed(0)
    parameter = next(model.parameters())
    config = model.config
    name = getattr(model, "main_input_name", "input_ids")
    bins, positions = getattr(config, "num_mel_bins", None), getattr(config, "max_source_positions", None)
    if name == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = tuple(size) if isinstance(size, list | tuple) else (size, size)
        pixels = torch.randn(1, getattr(config, "num_channels", 3), *size, generator=generator)
        inputs = {"pixel_values": pixels.to(device=parameter.device, dtype=parameter.dtype)}
    elif name == "input_features" and bins and positions:
        features = torch.randn(1, int(bins), 2 * int(positions), generator=generator)  # two frames per position
        inputs = {"input_features": features.to(device=parameter.device, dtype=parameter.dtype)}
    else:
        ids = _token_ids(model, PROBE_TOKENS, generator)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(config, "is_encoder_decoder", False):
        start = torch.tensor([[getattr(config, "decoder_start_token_id", None) or 0]], device=parameter.device)
        inputs["decoder_input_ids"] = torch.cat([start, _token_ids(model, PROBE_TOKENS - 1, generator)], dim=1)
    return inputs


def _token_ids(model: nn.Module, length: int, generator: torch.Generator) -> torch.Tensor:
    """``length`` seeded token ids from the model's (text) vocabulary, on its device."""
    vocab = int(getattr(model.config.get_text_config(), "vocab_size", None) or 2)
    return torch.randint(0, vocab, (1, length), generator=generator).to(next(model.parameters()).device)


def run_probe(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's first output (logits, or the last hidden state of a base model) in eval mode, as float32."""
    was_training = model.training
    model.eval()
    try:
        kwargs: dict[str, Any] = dict(inputs)
        if getattr(model.config, "use_cache", None) is not None:
            kwargs["use_cache"] = False
        with torch.no_grad():
            output = model(**kwargs)
    finally:
        model.train(was_training)
    return output[0].detach().float().cpu()  # a ModelOutput indexes its fields that are set, like a tuple


def masked_reference(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The masked model's output on ``inputs`` (run it with the masks attached), or ``None`` with a warning when
    the unpruned model cannot run on a token-id probe (the pruned one is then not verified)."""
    try:
        return run_probe(model, inputs)
    except Exception as err:  # any failure here only means that this model cannot be probed
        warnings.warn(
            f"the pruned model could not be verified: the masked model does not run on a probe of token ids "
            f"({type(err).__name__}: {err}).",
            UserWarning,
            stacklevel=3,
        )
        return None


# Measured masked-vs-pruned distances (relative L2 of the logits, 25% of heads and neurons removed, CPU):
# SmolLM2-135M (30 blocks) 1.3e-5 in float32, 9.4e-3 in float16, 3.9e-2 in bfloat16; MiniLM-L6 7e-7, 9e-4, 5e-3.
# The limits leave a margin of 4-80x over those. A wrong model is usually off by far more, or fails to run; in
# bfloat16 a small error (distance below 0.15) can pass unseen.
TOLERANCES = {torch.float16: 0.05, torch.bfloat16: 0.15}
FLOAT32_TOLERANCE = 1e-3


def tolerance(parameter: torch.Tensor) -> float:
    """Largest relative distance between masked and pruned outputs that is rounding, not a wrong model: both
    compute the same sums in another order, so half precision (and float32 matmuls run in TF32 on a GPU, with a
    half's mantissa) drift further than float32 does."""
    if parameter.dtype in TOLERANCES:
        return TOLERANCES[parameter.dtype]
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    if parameter.device.type == "cuda" and tf32:
        return TOLERANCES[torch.float16]
    return FLOAT32_TOLERANCE


def check_pruned(model: nn.Module, inputs: dict[str, torch.Tensor], reference: torch.Tensor, recipe: str) -> None:
    """Raise :class:`PrunedModelError` unless the pruned ``model`` runs on ``inputs`` and reproduces the masked
    model's ``reference`` output (within rounding)."""
    try:
        output = run_probe(model, inputs)
    except Exception as err:  # whatever breaks, the pruned model must not be saved
        raise PrunedModelError(
            f"the model pruned with recipe '{recipe}' fails on a small input ({type(err).__name__}: {err}), while the "
            f"masked model ran. {LIKELY_CAUSES}"
        ) from err
    if output.shape != reference.shape:
        raise PrunedModelError(
            f"the model pruned with recipe '{recipe}' returns shape {tuple(output.shape)}, the masked model "
            f"{tuple(reference.shape)}. {LIKELY_CAUSES}"
        )
    finite = torch.isfinite(reference)
    if not torch.isfinite(output[finite]).all():
        raise PrunedModelError(
            f"the model pruned with recipe '{recipe}' returns inf/NaN where the masked model does not. {LIKELY_CAUSES}"
        )
    distance = float((output[finite] - reference[finite]).norm() / reference[finite].norm().clamp_min(1e-12))
    limit = tolerance(next(model.parameters()))
    if distance > limit:
        raise PrunedModelError(
            f"the model pruned with recipe '{recipe}' disagrees with the masked model: relative distance "
            f"{distance:.2e} on a small input (rounding stays below {limit:.0e}). {LIKELY_CAUSES}"
        )
