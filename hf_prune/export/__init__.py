"""Deployment export: pruned (or plain) checkpoints as GGUF files for llama.cpp and ONNX graphs for ONNX Runtime.

One module per job: :mod:`.common` (checks and atomic writes), :mod:`.gguf_export` and :mod:`.gguf_vocab`
(llama.cpp), :mod:`.onnx_export` (ONNX Runtime), :mod:`.record` (what the model card says about exports).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from .common import FORMATS, ExportError, check_checkpoint, check_choice, check_output, load_checkpoint

__all__ = ["FORMATS", "ExportError", "export_checkpoint"]


def export_checkpoint(
    directory: str | os.PathLike[str],
    output: str | os.PathLike[str],
    format: str,
    outtype: str | None = None,
    overwrite: bool = False,
    record: bool = True,
) -> dict[str, Any]:
    """Export the checkpoint in ``directory`` for a serving runtime; returns what was written.

    Args:
        directory: a checkpoint folder (pruned by hf_prune, any layout, or plain transformers).
        output: the file to write (``model.gguf``, ``model.onnx``); written through a temporary file in its folder
            and renamed at the end, so a failed export leaves nothing behind.
        format: ``"gguf"`` (llama.cpp; Llama-family and MoE decoders) or ``"onnx"`` (ONNX Runtime; encoders and
            decoders).
        outtype: GGUF: ``f32``, ``f16`` (default), ``q8_0``, or a llama.cpp quantization (``q4_k_m``...) when
            llama-cpp-python is installed. ONNX: ``f32`` only (checked against PyTorch after export).
        overwrite: replace an existing ``output``.
        record: note the export in ``directory/exports.json`` and in its model card (``README.md``), if it has one.

    Raises:
        ExportError: not a checkpoint folder, an unknown format or outtype, or an architecture the runtime cannot
            represent (the message says what is missing). Nothing is written then.
        FileExistsError: ``output`` exists and ``overwrite`` is false.
    """
    check_choice("export format", format, FORMATS)
    folder = check_checkpoint(directory)
    if format == "gguf":
        from .gguf_export import preflight, write_gguf

        outtype = outtype or "f16"
        preflight(folder, outtype)
        target = check_output(output, overwrite, ".gguf")
        model = load_checkpoint(folder)
        info = write_gguf(model, folder, target, outtype)
    else:
        from .onnx_export import OUTTYPES, write_onnx

        outtype = check_choice("ONNX outtype", outtype or "f32", OUTTYPES)
        target = check_output(output, overwrite, ".onnx")
        model = load_checkpoint(folder)
        info = write_onnx(model, target)
    info = {"format": format, "file": str(Path(target).resolve()), **info}
    if record:
        from .record import record_export

        try:
            record_export(folder, info)
        except OSError as err:  # a read-only checkpoint folder: the export itself is done and valid
            warnings.warn(f"the export was written, but not recorded in '{folder}': {err}", UserWarning, stacklevel=2)
    return info
