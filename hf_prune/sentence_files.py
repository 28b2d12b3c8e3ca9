"""sentence-transformers pipelines: the files that make a checkpoint folder a ``SentenceTransformer``.

A sentence-transformers model is a transformers checkpoint plus ``modules.json`` (the pipeline: Transformer,
Pooling, Normalize...), ``sentence_bert_config.json`` (maximum length, lower-casing),
``config_sentence_transformers.json`` and one folder per further module (``1_Pooling/config.json``, ``2_Dense/``...).
hf_prune prunes the transformer only and keeps the hidden size, so these files are carried over unchanged, after
checking that the pooling's ``word_embedding_dimension`` is the model's hidden size.

A pruned model whose config cannot describe it (layers that differ, BERT-style head sizes) loads through the loader
code saved next to it: ``SentenceTransformer(path, trust_remote_code=True)``, which sentence-transformers passes on
to ``AutoModel.from_pretrained``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError

MODULES_FILE = "modules.json"
ROOT_FILES = (MODULES_FILE, "sentence_bert_config.json", "config_sentence_transformers.json")
# Pooling config keys that give the token-embedding width (the old name, and sentence-transformers 6's).
_WIDTH_KEYS = ("word_embedding_dimension", "embedding_dimension")


class SentenceTransformersError(ValueError):
    """A sentence-transformers folder that hf_prune cannot carry over to the pruned model as it is."""


def _local_folder(source: str | os.PathLike[str], revision: str | None, token: str | None) -> Path | None:
    """The folder holding the source's sentence-transformers files, or None when it is no such pipeline."""
    local = Path(source).expanduser()
    if local.is_dir():
        return local if (local / MODULES_FILE).is_file() else None
    try:
        modules = hf_hub_download(str(source), MODULES_FILE, revision=revision, token=token)
    except EntryNotFoundError:
        return None
    paths = [m.get("path", "") for m in json.loads(Path(modules).read_text(encoding="utf-8"))]
    patterns = [*ROOT_FILES, *(f"{p}/**" for p in paths if p)]
    return Path(snapshot_download(str(source), revision=revision, token=token, allow_patterns=patterns))


def _check_modules(modules: list[dict[str, Any]], folder: Path, hidden_size: int | None) -> None:
    for module in modules:
        kind, path = str(module.get("type", "")), module.get("path", "")
        if kind.endswith("Transformer") and path:
            raise SentenceTransformersError(
                f"the transformer of this sentence-transformers pipeline is in the subfolder '{path}/', not next to "
                f"{MODULES_FILE}; prune that folder ('{folder / path}') instead."
            )
        config_path = folder / path / "config.json"
        if not kind.endswith("Pooling") or not config_path.is_file() or hidden_size is None:
            continue
        pooling = json.loads(config_path.read_text(encoding="utf-8"))
        width = next((pooling[k] for k in _WIDTH_KEYS if k in pooling), None)
        if width is not None and width != hidden_size:
            raise SentenceTransformersError(
                f"'{path}/config.json' pools token embeddings of width {width}, but the model's hidden size is "
                f"{hidden_size}: the pipeline does not fit this model. Fix word_embedding_dimension in that file."
            )


def sentence_transformers_files(
    source: str | os.PathLike[str], hidden_size: int | None, revision: str | None = None, token: str | None = None
) -> dict[str, bytes]:
    """The sentence-transformers files of a local folder or Hub repo, as ``{relative path: content}``.

    Returns ``{}`` when ``source`` is no sentence-transformers pipeline (it has no ``modules.json``). The transformer
    module's own files (weights, config, tokenizer) are not included: the pruned model writes its own.

    Args:
        source: the checkpoint that was pruned, a folder or a Hub id.
        hidden_size: the pruned model's hidden size, which each pooling module must read (``None``: not checked).
        revision, token: for a Hub id.

    Raises:
        SentenceTransformersError: a pooling width that is not the hidden size, or a transformer in a subfolder.
    """
    folder = _local_folder(source, revision, token)
    if folder is None:
        return {}
    modules = json.loads((folder / MODULES_FILE).read_text(encoding="utf-8"))
    _check_modules(modules, folder, hidden_size)
    files = {name: (folder / name).read_bytes() for name in ROOT_FILES if (folder / name).is_file()}
    for module in modules:
        path = module.get("path", "")
        if not path or not (folder / path).is_dir():
            continue  # modules without a folder (Normalize often has none) need no file
        for file in sorted((folder / path).rglob("*")):
            relative = file.relative_to(folder)
            if file.is_file() and not any(part.startswith(".") for part in relative.parts):
                files[relative.as_posix()] = file.read_bytes()
    return files
