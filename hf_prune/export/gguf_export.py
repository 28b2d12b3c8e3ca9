"""GGUF files for llama.cpp, from Llama-family and MoE checkpoints: uniform layouts in the family's own llama.cpp
architecture, non-uniform ones in one that reads per-layer head counts and FFN widths (``deci``).

What llama.cpp calls each architecture is recipe data (the recipe's ``gguf:`` section); tensor names come from
the ``gguf`` package's own maps. What a llama.cpp architecture's graph hard-codes (``LLAMA_CPP_GRAPHS``) is
llama.cpp's, the same for every recipe that names the architecture.
"""

from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..kinds.experts import Experts
from ..recipe import GGUFSpec, RecipeError, recipe_for_model_type, shipped_recipes
from ..structure import LayerShape, ModelStructure
from ..surgery import CONFIG_KEY
from .common import ExportError, atomic_output, check_choice
from .gguf_vocab import add_vocab

PLAIN_OUTTYPES = ("f32", "f16", "q8_0")
# llama.cpp's own quantizer (through llama-cpp-python) makes these: k-quants need its importance-free mixes.
LLAMA_CPP_OUTTYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
OUTTYPES = PLAIN_OUTTYPES + LLAMA_CPP_OUTTYPES
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class LlamaCppGraph:
    """What a llama.cpp architecture's graph assumes rather than reads from the file, which a checkpoint must match
    (read in its ``src/models/<arch>.cpp``, llama.cpp as vendored by llama-cpp-python 0.3.36)."""

    # MoE: the ``norm_w`` its graph passes to build_moe_ffn, whether the top-k router weights are renormalised to
    # sum to 1 (no GGUF key changes it); None: the graph was not checked for experts, so they are refused.
    renormalises_top_k: bool | None = None
    # Q, attn_q_norm and attn_k_norm are sized hidden_size (olmoe): one RMS over all heads' queries, and over the
    # keys only when there are as many KV heads as query heads.
    full_width_qk_norm: bool = False
    # output.weight is required, without llama.cpp's fallback to token_embd (olmoe): written for tied embeddings too.
    output_required: bool = False
    # Q and attn_output are sized hidden_size whatever head_count says (qwen2, qwen2moe; olmoe refuses other
    # widths, above): a checkpoint with fewer query heads is written with hidden_size / head size of them, the
    # missing ones zero heads (_pad_query_heads), which add nothing to the output.
    q_sized_hidden: bool = False


LLAMA_CPP_GRAPHS = {
    "llama": LlamaCppGraph(renormalises_top_k=True),  # Mixtral
    "qwen2": LlamaCppGraph(q_sized_hidden=True),
    "qwen2moe": LlamaCppGraph(renormalises_top_k=False, output_required=True, q_sized_hidden=True),
    "qwen3moe": LlamaCppGraph(renormalises_top_k=True),
    "olmoe": LlamaCppGraph(renormalises_top_k=False, full_width_qk_norm=True, output_required=True),
}
# Config values that change the forward and that no GGUF key written here states, with what they do.
UNWRITTEN_CONFIG = {"clip_qkv": "clamps its queries, keys and values (olmoe's graph reads no clamp)"}
# Tensors transformers holds as [1, n] matrices and llama.cpp reads as vectors {n} (written f32, as vectors are).
VECTOR_TENSORS = ("FFN_GATE_INP_SHEXP",)  # qwen2moe's shared-expert gate, Linear(hidden, 1)


@dataclass(frozen=True)
class GGUFLayout:
    """What a GGUF export of a model writes: the llama.cpp architecture and the per-layer counts."""

    arch: str
    permute_qk: bool
    per_layer: bool
    shapes: tuple[LayerShape, ...]
    head_dim: int
    # Query heads written where the graph sizes Q by hidden_size (q_sized_hidden), zero heads included; 0: as kept.
    query_slots: int = 0

    @property
    def graph(self) -> LlamaCppGraph:
        return LLAMA_CPP_GRAPHS.get(self.arch, LlamaCppGraph())


def gguf_spec(config: Any, recorded: GGUFSpec | None = None) -> GGUFSpec:
    """The recipe's llama.cpp description for a (text) config: the shipped recipe's for its model type (llama.cpp
    support moves faster than checkpoints), else ``recorded``; an :class:`ExportError` if neither has one."""
    model_type = getattr(config, "model_type", None)
    try:
        recipe = recipe_for_model_type(model_type) if model_type else None
    except RecipeError:
        recipe = None
    spec = (recipe.gguf if recipe else None) or recorded
    if spec is None:
        supported = sorted(name for name, r in shipped_recipes().items() if r.gguf is not None)
        which = f"recipe '{recipe.name}'" if recipe else "its recipe"
        raise ExportError(
            f"model type '{model_type}': {which} has no `gguf:` section, so hf_prune knows no llama.cpp architecture "
            f"for it (GGUF export covers the decoder recipes {', '.join(supported)}). Export it as ONNX instead "
            "(--format onnx), or add a `gguf:` section naming the llama.cpp architecture to the recipe."
        )
    return spec


def preflight(folder: Path, outtype: str) -> None:
    """Checks made before any weight is read: the outtype, its quantizer, and a llama.cpp architecture."""
    import transformers

    check_choice("GGUF outtype", outtype, OUTTYPES)
    if outtype in LLAMA_CPP_OUTTYPES:
        _llama_cpp()
    config = transformers.AutoConfig.from_pretrained(folder).get_text_config()
    spec = gguf_spec(config)
    removed = (getattr(config, CONFIG_KEY, None) or {}).get("removed_sublayers")
    _check_removed_sublayers(spec, removed, int(config.num_hidden_layers))
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    check_choice("RoPE type for GGUF export (config rope_parameters.rope_type)", rope_type, ROPE_TYPES)


def _check_removed_sublayers(spec: GGUFSpec, removed: dict[str, list[int]] | None, blocks: int) -> None:
    """Refuse removed sublayers that llama.cpp cannot run, before any weight is written.

    Limits of llama.cpp's ``deci`` found by running it (llama-cpp-python 0.3.36) and reading its graph: the head
    size is read only where block 0 has heads (block 0 without attention gives every attention tensor a size of 0);
    a block without FFN leaves the graph before adding its attention output to the residual (exact only when the
    block has no attention either); and a last block without FFN skips the final row selection (decoding aborts in
    ``llm_graph_input_out_ids``).
    """
    if not removed:
        return
    which = "; ".join(f"{part} of blocks {gone}" for part, gone in removed.items())
    attention_free, ffn_free = set(removed.get("attention", [])), set(removed.get("mlp", []))
    why = None
    if not (spec.per_layer_arch and spec.per_layer_skips):
        why = "no llama.cpp architecture named for this family runs a block without attention or without FFN"
    elif 0 in attention_free:
        why = "llama.cpp reads the head size only where block 0 has attention heads"
    elif ffn_free - attention_free:
        why = (
            f"llama.cpp drops the attention output of a block without FFN (blocks {sorted(ffn_free - attention_free)} "
            "keep their attention)"
        )
    elif blocks - 1 in ffn_free:
        why = "llama.cpp's per-layer graph fails when the last block has no FFN"
    if why:
        raise ExportError(
            f"this checkpoint has blocks without a sublayer ({which} removed), and {why}. Export it as ONNX "
            "(--format onnx), or remove whole blocks (layers=) for llama.cpp."
        )


def plan_layout(structure: ModelStructure) -> GGUFLayout:
    """The llama.cpp architecture for this model's layout, or an :class:`ExportError` saying what is missing.

    Removed sublayers go to the per-layer architecture (``deci``): a block with 0 heads runs without attention and
    one with FFN width 0 without FFN, as Nemotron-NAS's no-op blocks do; their tensors (and norms) are not written.
    """
    spec = gguf_spec(structure.config, structure.recipe.gguf)
    _check_removed_sublayers(spec, structure.removed_sublayers, structure.num_layers)
    _check_unwritten_config(structure)
    shapes = tuple(structure.shapes())
    uniform = len(set(shapes)) == 1 and not structure.removed_sublayers
    if uniform:
        layout = GGUFLayout(spec.arch, spec.permute_qk, False, shapes, structure.head_dim)
        _check_graph(structure, layout)
        if layout.graph.q_sized_hidden:
            layout = replace(layout, query_slots=_query_slots(structure, layout))
        return layout
    if spec.per_layer_arch is None:
        why = spec.per_layer_missing or "no llama.cpp architecture is named for per-layer counts"
        raise ExportError(
            f"this {structure.recipe.name} checkpoint keeps different head or neuron counts per layer, and {why}. "
            "Prune it with the same counts in every layer (ranking='per_layer', no protected layers) for GGUF, or "
            "export it as ONNX (--format onnx), whose graphs hold any layout."
        )
    return GGUFLayout(spec.per_layer_arch, spec.per_layer_permute_qk, True, shapes, structure.head_dim)


def _check_unwritten_config(structure: ModelStructure) -> None:
    """Refuse a config value that changes the forward where the file can state none (``UNWRITTEN_CONFIG``, and
    sliding-window layers: no architecture written here reads a window)."""
    config = structure.config
    for attribute, what in UNWRITTEN_CONFIG.items():
        value = getattr(config, attribute, None)
        if value is not None:
            raise ExportError(
                f"config {attribute}={value!r}: the model {what}, and the GGUF file cannot say so, so llama.cpp's "
                "outputs would differ. Export it as ONNX (--format onnx)."
            )
    layer_types = list(getattr(config, "layer_types", None) or [])
    window = getattr(config, "sliding_window", None)
    if "sliding_attention" in layer_types and window and window < int(config.max_position_embeddings):
        sliding = [i for i, kind in enumerate(layer_types) if kind == "sliding_attention"]
        raise ExportError(
            f"config layer_types: blocks {sliding} attend to the last {window} positions only (sliding_window), "
            "and the llama.cpp architectures written here run full attention in every block, so llama.cpp's "
            "outputs would differ beyond that length. Export it as ONNX (--format onnx)."
        )


def _check_graph(structure: ModelStructure, layout: GGUFLayout) -> None:
    """Refuse a checkpoint whose forward the architecture's graph cannot reproduce (``LlamaCppGraph``)."""
    graph, counts = layout.graph, layout.shapes[0].counts
    if counts.get("experts"):
        _check_routing(structure, layout.arch, graph)
    config = structure.config
    if graph.full_width_qk_norm:
        heads, kv_heads, hidden = counts["heads"], counts["kv_heads"], int(config.hidden_size)
        if heads * layout.head_dim != hidden or kv_heads != heads:
            raise ExportError(
                f"llama.cpp's '{layout.arch}' sizes Q and the q/k RMSNorm weights by hidden_size ({hidden}), but "
                f"this checkpoint has {heads} query heads and {kv_heads} KV heads of {layout.head_dim} (config "
                "num_key_value_heads must equal num_attention_heads, and heads x head size hidden_size). Export it "
                "as ONNX (--format onnx)."
            )


def _query_slots(structure: ModelStructure, layout: GGUFLayout) -> int:
    """The query heads llama.cpp runs where its graph sizes Q and attn_output by hidden_size: hidden_size / head
    size, each KV group's share of them (``slots / kv_heads``) at least the query heads the group keeps."""
    counts, hidden = layout.shapes[0].counts, int(structure.config.hidden_size)
    heads, kv_heads = counts["heads"], counts["kv_heads"]
    slots, rest = divmod(hidden, layout.head_dim)
    if rest or heads > slots or slots % kv_heads:
        raise ExportError(
            f"llama.cpp's '{layout.arch}' sizes Q and attn_output by hidden_size ({hidden}), and this checkpoint's "
            f"{heads} query heads of {layout.head_dim} in {kv_heads} KV groups do not fit it: llama.cpp runs "
            "hidden_size / head size query heads (fewer are written with zero heads), so hidden_size must hold the "
            "query heads and be a multiple of the head size times the KV heads. Export it as ONNX (--format onnx)."
        )
    return slots


def _pad_query_heads(tensor: torch.Tensor, axis: int, layout: GGUFLayout, shape: LayerShape) -> torch.Tensor:
    """Q's rows (weight and bias, ``axis`` 0) or attn_output's columns (``axis`` 1) with zero heads up to
    ``layout.query_slots``, each KV group's kept heads first in its share of the slots: llama.cpp reads query head i
    against KV head i // (slots / kv_heads), as transformers reads head i against i // (heads / kv_heads).

    A zero head adds nothing: its query is zero (its bias too), so it weighs every position alike, and what it
    returns meets zero columns of attn_output.
    """
    heads, kv_heads = shape["heads"], shape["kv_heads"]
    if layout.query_slots <= heads:
        return tensor
    rows = tensor.movedim(axis, 0)
    groups = rows.reshape(kv_heads, heads // kv_heads, layout.head_dim, *rows.shape[1:])
    zeros = groups.new_zeros(kv_heads, (layout.query_slots - heads) // kv_heads, *groups.shape[2:])
    padded = torch.cat([groups, zeros], dim=1).reshape(layout.query_slots * layout.head_dim, *rows.shape[1:])
    return padded.movedim(0, axis)


def _check_routing(structure: ModelStructure, arch: str, graph: LlamaCppGraph) -> None:
    """The model's top-k renormalisation is the one the architecture's graph hard-codes."""
    if graph.renormalises_top_k is None:
        raise ExportError(
            f"hf_prune has not checked how llama.cpp's '{arch}' routes tokens to experts, so it exports no MoE "
            "model to it. Export it as ONNX (--format onnx)."
        )
    experts = next(kind for kind in structure.kinds if isinstance(kind, Experts))
    normalizes = experts.normalizes(structure)
    if normalizes != graph.renormalises_top_k:
        spec = structure.recipe.experts
        assert spec is not None
        rule = spec.normalize_top_k
        setting = f"config {rule}={normalizes}" if isinstance(rule, str) else f"recipe '{structure.recipe.name}'"
        weights = f"top-{experts.top_k(structure)} router weights"
        model = f"renormalises its {weights} to sum to 1" if normalizes else f"uses its {weights} as they are"
        runtime = "always renormalises them" if graph.renormalises_top_k else "never renormalises them"
        raise ExportError(
            f"{setting}: the model {model}, but llama.cpp's '{arch}' {runtime} (its graph does not read a key for "
            "it), so llama.cpp's outputs would differ. Export it as ONNX (--format onnx)."
        )


def _rope(config: Any, head_dim: int) -> tuple[float, dict[str, Any], np.ndarray | None]:
    """``(base, scaling keys, rope_freqs tensor or None)`` from the config's RoPE parameters."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", "default")
    base = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    check_choice("RoPE type for GGUF export (config rope_parameters.rope_type)", rope_type, ROPE_TYPES)
    if rope_type == "linear":
        return base, {"type": "linear", "factor": float(params["factor"])}, None
    if rope_type == "llama3":
        # Llama 3.1+: wavelengths beyond the original context are stretched by `factor`, short ones kept, with a
        # smooth ramp between; llama.cpp reads the per-frequency divisors from a `rope_freqs` tensor.
        factor = float(params["factor"])
        low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
        original = float(params.get("original_max_position_embeddings", 8192))
        freqs = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        divisors = []
        for freq in freqs:
            wavelength = 2 * math.pi / freq
            if wavelength < original / high:
                divisors.append(1.0)
            elif wavelength > original / low:
                divisors.append(factor)
            else:
                smooth = (original / wavelength - low) / (high - low)
                divisors.append(1.0 / ((1 - smooth) / factor + smooth))
        return base, {}, np.asarray(divisors, dtype=np.float32)
    return base, {}, None


def _ffn_width(shape: LayerShape) -> int:
    """What llama.cpp's ``feed_forward_length`` holds for a block: its MLP's neurons (in Qwen2-MoE, the shared
    expert's), or each expert's width in an MoE block without a dense MLP (which runs its experts at that width)."""
    counts = shape.counts
    if "neurons" in counts:
        return counts["neurons"]
    if "expert_neurons" in counts and counts["experts"]:
        return _expert_width(shape)
    raise ExportError("this checkpoint's blocks state no FFN width (no MLP neurons or expert widths) for llama.cpp.")


def _expert_width(shape: LayerShape) -> int:
    """Each routed expert's neurons in an MoE block (the same in every expert: surgery keeps them so)."""
    return shape["expert_neurons"] // shape["experts"]


def _permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's rows from transformers' rotate-halves layout to llama.cpp's consecutive pairs."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _tensor_type(array: np.ndarray, outtype: str) -> Any:
    """The GGML type of one tensor: vectors stay f32; matrices take the outtype where their rows fit its blocks."""
    import gguf

    if array.ndim < 2 or outtype == "f32":
        return gguf.GGMLQuantizationType.F32
    if outtype == "q8_0":
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
        if array.shape[-1] % block == 0:
            return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16  # also q8_0's fallback for rows that are no multiple of 32


def _add_tensor(writer: Any, name: str, array: np.ndarray, outtype: str) -> None:
    import gguf

    qtype = _tensor_type(array, outtype)
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, array.astype(np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, array.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(array.astype(np.float32), qtype), raw_dtype=qtype)


def _split_fused_experts(hf_name: str, tensor: torch.Tensor, structure: ModelStructure) -> dict[str, torch.Tensor]:
    """A fused ``[gate | up]`` expert parameter (transformers 5's ``gate_up_proj``, [experts, 2 x width, hidden]) as
    its two halves under the unfused names that gguf's tensor maps know (``gate_proj``, ``up_proj``); llama.cpp's
    MoE architectures read separate ``ffn_gate_exps`` and ``ffn_up_exps``. Any other tensor is returned as is."""
    spec = structure.recipe.experts
    owner, _, name = hf_name.rpartition(".")
    if spec is None or name not in spec.fused_neurons or not owner.endswith(spec.experts):
        return {hf_name: tensor}
    gate, up = tensor.chunk(2, dim=spec.neuron_axes[name])
    return {f"{owner}.gate_proj": gate, f"{owner}.up_proj": up}


def _tensors(model: Any, layout: GGUFLayout, structure: ModelStructure) -> dict[str, torch.Tensor]:
    """The model's tensors under their GGUF names, Q/K permuted where the architecture wants it."""
    import gguf

    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == layout.arch), None)
    if arch is None:
        raise ExportError(f"the gguf package knows no llama.cpp architecture '{layout.arch}'; upgrade gguf.")
    names = gguf.TensorNameMap(arch, len(layout.shapes))
    vectors = {getattr(gguf.MODEL_TENSOR, name) for name in VECTOR_TENSORS}
    att = structure.recipe.attention
    tied = bool(getattr(structure.config, "tie_word_embeddings", False)) and not layout.graph.output_required
    head = model.get_output_embeddings()
    head_name = next(name for name, module in model.named_modules() if module is head) + ".weight"
    out: dict[str, torch.Tensor] = {}
    state = {}
    for hf_name, tensor in model.state_dict().items():
        state.update(_split_fused_experts(hf_name, tensor, structure))
    for hf_name, tensor in state.items():
        if tied and hf_name == head_name:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        found = names.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise ExportError(
                f"tensor '{hf_name}' has no name in llama.cpp's '{layout.arch}' architecture (gguf's tensor map); "
                "this checkpoint holds something the architecture cannot represent."
            )
        kind, gguf_name = found
        if not hf_name.endswith((".weight", ".bias")):
            gguf_name += ".weight"  # a bare parameter (an experts module's 3-D weights) is a weight to llama.cpp
        tensor = tensor.detach().to(torch.float32)
        if kind in vectors:
            tensor = tensor.reshape(-1)
        if layout.permute_qk:
            for role, count in ((att.q, "heads"), (att.k, "kv_heads")):
                marker = f".{role}."
                if marker in hf_name:
                    index = int(hf_name.split(f".{structure.recipe.layers[0]}.")[1].split(".")[0])
                    tensor = _permute(tensor, getattr(layout.shapes[index], count))
        if layout.query_slots:  # uniform layouts only: every block's shape is shapes[0]
            if f".{att.q}." in hf_name:
                tensor = _pad_query_heads(tensor, 0, layout, layout.shapes[0])
            elif f".{att.o}.weight" in hf_name:
                tensor = _pad_query_heads(tensor, 1, layout, layout.shapes[0])
        out[gguf_name] = tensor
    return out


def _write_plain(
    model: Any, structure: ModelStructure, layout: GGUFLayout, folder: Path, path: Path, outtype: str
) -> None:
    """Write a GGUF file with the ``gguf`` package alone (f32, f16, q8_0)."""
    import gguf

    config = structure.config
    shapes = layout.shapes
    writer = gguf.GGUFWriter(path, layout.arch)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(folder.name)
        writer.add_file_type(
            {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}.get(
                outtype, gguf.LlamaFileType.MOSTLY_Q8_0
            )
        )
        if outtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(int(config.max_position_embeddings))
        writer.add_embedding_length(int(config.hidden_size))
        writer.add_block_count(len(shapes))
        heads, kv_heads = ([s[k] for s in shapes] for k in ("heads", "kv_heads"))
        neurons = [_ffn_width(s) for s in shapes]
        # llama.cpp reads each of these as one number or as an array of one per layer (get_key_or_arr).
        writer.add_head_count(heads if layout.per_layer else layout.query_slots or heads[0])
        writer.add_head_count_kv(kv_heads if layout.per_layer else kv_heads[0])
        writer.add_feed_forward_length(neurons if layout.per_layer else neurons[0])
        if "experts" in shapes[0].counts:  # one count for all layers: plan_layout refused anything else
            spec = structure.recipe.experts
            assert spec is not None
            writer.add_expert_count(shapes[0]["experts"])
            writer.add_expert_used_count(int(getattr(config, spec.top_k_attribute)))
            # Each expert's width: 'llama' and 'olmoe' read feed_forward_length, 'qwen3moe' and 'qwen2moe' this key.
            writer.add_expert_feed_forward_length(_expert_width(shapes[0]))
            if "neurons" in shapes[0].counts:  # a dense MLP next to the routed experts: Qwen2-MoE's shared expert
                writer.add_expert_shared_feed_forward_length(shapes[0]["neurons"])
        writer.add_key_length(layout.head_dim)
        writer.add_value_length(layout.head_dim)
        writer.add_rope_dimension_count(layout.head_dim)
        base, scaling, rope_freqs = _rope(config, layout.head_dim)
        writer.add_rope_freq_base(base)
        if scaling:
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(scaling["factor"])
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(int(config.vocab_size))
        writer.add_string("hf_prune.layout", "per_layer" if layout.per_layer else "uniform")
        add_vocab(writer, folder, int(config.vocab_size))
        if rope_freqs is not None:
            writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freqs)
        for name, tensor in _tensors(model, layout, structure).items():
            _add_tensor(writer, name, tensor.numpy(), outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise ExportError(
            f"outtypes {', '.join(LLAMA_CPP_OUTTYPES)} are made by llama.cpp's quantizer, which needs "
            "llama-cpp-python: pip install 'hf-prune[llama-cpp]' (it builds llama.cpp). f32, f16 and q8_0 need only "
            "the export extra."
        ) from None
    return llama_cpp


def _llama_cpp_quantize(source: Path, target: Path, outtype: str) -> None:
    """Quantize a GGUF file with llama.cpp's own quantizer (through llama-cpp-python)."""
    llama_cpp = _llama_cpp()
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{outtype.upper()}", None)
    if ftype is None:
        raise ExportError(f"this llama-cpp-python has no quantization type '{outtype}'.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if code != 0:
        raise ExportError(f"llama.cpp's quantizer failed (code {code}) making '{outtype}' from '{source}'.")


def write_gguf(model: Any, folder: Path, output: Path, outtype: str) -> dict[str, Any]:
    """Write ``model`` (loaded from checkpoint ``folder``) as a GGUF file at ``output``; returns what was written."""
    check_choice("GGUF outtype", outtype, OUTTYPES)
    structure = ModelStructure(model)
    layout = plan_layout(structure)
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise ExportError(
            f"the checkpoint holds a {type(model).__name__}, without a language-model head; llama.cpp runs causal "
            "LMs: save the model as *ForCausalLM."
        )
    with atomic_output(output) as staging:
        if outtype in PLAIN_OUTTYPES:
            _write_plain(model, structure, layout, folder, staging, outtype)
        else:
            source = staging.with_name(staging.name + ".f32")  # removed with the staged file by atomic_output
            _write_plain(model, structure, layout, folder, source, "f32")
            _llama_cpp_quantize(source, staging, outtype)
    return {
        "arch": layout.arch,
        "layout": "per_layer" if layout.per_layer else "uniform",
        "outtype": outtype,
    }
