"""Wall-clock latency of a forward pass: warm-up, then the median of repeated runs."""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Latency:
    """Median forward latency and where it was measured."""

    median_ms: float
    runs_ms: list[float]
    batch_size: int
    seq_len: int
    device: str
    dtype: str
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_name(device: torch.device) -> str:
    """A human-readable name of the device (GPU model or CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _result(runs: list[float], batch_size: int, seq_len: int, parameter: torch.Tensor) -> Latency:
    return Latency(
        median_ms=statistics.median(runs),
        runs_ms=runs,
        batch_size=batch_size,
        seq_len=seq_len,
        device=device_name(parameter.device),
        dtype=str(parameter.dtype).replace("torch.", ""),
        threads=torch.get_num_threads(),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(
    model: nn.Module, batch_size: int = 8, seq_len: int = 128, repeats: int = 10, warmup: int = 3, seed: int = 0
) -> Latency:
    """Median latency of ``model(input_ids)`` on random token ids (batch x seq_len), without a KV cache."""
    model.eval()
    parameter = next(model.parameters())
    device = parameter.device
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator).to(device)
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if getattr(model.config, "use_cache", None) is not None:
        kwargs["use_cache"] = False
    runs = []
    for i in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        model(**kwargs)
        _sync(device)
        if i >= warmup:
            runs.append((time.perf_counter() - start) * 1000)
    return _result(runs, batch_size, seq_len, parameter)


def compare_latency(
    dense: nn.Module, pruned: nn.Module, batch_size: int = 8, seq_len: int = 128, repeats: int = 10
) -> tuple[Latency, Latency]:
    """Latency of two models measured in alternating rounds after a shared warm-up.

    Alternating keeps slow drifts of the machine (clock frequency, other load, allocator warm-up) from
    favouring whichever model happens to be timed second.
    """
    measure_latency(dense, batch_size, seq_len, repeats=1, warmup=2)
    measure_latency(pruned, batch_size, seq_len, repeats=1, warmup=2)
    runs: tuple[list[Latency], list[Latency]] = ([], [])
    for _ in range(max(1, repeats // 2)):
        for model, bucket in ((dense, runs[0]), (pruned, runs[1])):
            bucket.append(measure_latency(model, batch_size, seq_len, repeats=2, warmup=0))

    def merge(parts: list[Latency]) -> Latency:
        all_runs = [r for part in parts for r in part.runs_ms]
        return Latency(**{**parts[0].to_dict(), "median_ms": statistics.median(all_runs), "runs_ms": all_runs})

    return merge(runs[0]), merge(runs[1])


@torch.inference_mode()
def measure_decode_latency(
    model: nn.Module, batch_size: int = 8, context: int = 128, new_tokens: int = 16, repeats: int = 3, seed: int = 0
) -> Latency:
    """Median time of one decoding step with the KV cache, after a prefill of ``context`` tokens.

    Each repeat prefills, then times ``new_tokens`` single-token forward passes; the median over all steps is
    reported (``seq_len`` in the result is the context length).
    """
    model.eval()
    parameter = next(model.parameters())
    device = parameter.device
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (batch_size, context), generator=generator).to(device)
    steps: list[float] = []
    for _ in range(repeats + 1):  # the first round warms up
        output = model(input_ids=prompt, use_cache=True)
        cache, token = output.cache, output.logits[:, -1:].argmax(-1)
        round_steps = []
        for _ in range(new_tokens):
            _sync(device)
            start = time.perf_counter()
            output = model(input_ids=token, cache=cache, use_cache=True)
            _sync(device)
            round_steps.append((time.perf_counter() - start) * 1000)
            cache, token = output.cache, output.logits[:, -1:].argmax(-1)
        steps += round_steps
    return _result(steps[new_tokens:], batch_size, context, parameter)
