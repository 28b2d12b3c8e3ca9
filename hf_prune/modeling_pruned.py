"""Model classes for pruned checkpoints whose config cannot describe them on its own.

``PrunedLlamaForCausalLM`` (any ``Pruned`` + transformers class name) is the transformers class with one
change: after building the dense skeleton from the config's global values, it shrinks every block to the
per-layer structure recorded in ``config.json``. ``from_pretrained`` then loads the compact weights into it.

hf_prune copies this file and ``surgery.py`` next to the weights and points ``auto_map`` at them, so
``AutoModel*.from_pretrained(path, trust_remote_code=True)`` works without hf_prune installed. Keep the
imports to torch, transformers, the standard library and ``.surgery``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import transformers

from .surgery import CONFIG_KEY, global_config_access, restore_structure

PREFIX = "Pruned"
_CLASSES: dict[type, type] = {}
LOADER_FILES = ("modeling_pruned.py", "surgery.py")


def pruned_class(base: type) -> type:
    """The structure-restoring subclass of a transformers model class (created once per class)."""
    if getattr(base, "_hf_prune_base", None) is not None:
        return base
    if base not in _CLASSES:

        def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
            with global_config_access(config.get_text_config()):
                base.__init__(self, config, *args, **kwargs)
            restore_structure(self)

        def initialize_weights(self: Any, *args: Any, **kwargs: Any) -> Any:
            # Weight init may rebuild buffers from the config (rotary embeddings of configs without head_dim).
            with global_config_access(self.config.get_text_config()):
                return base.initialize_weights(self, *args, **kwargs)

        def save_pretrained(self: Any, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
            # Some configs validate global head counts on save (Gemma 3); the global values are the dense ones.
            with global_config_access(self.config.get_text_config()):
                result = base.save_pretrained(self, save_directory, *args, **kwargs)
            write_loader_files(self, save_directory)
            return result

        # The class keeps the base's name so that `architectures` in config.json stays the vanilla one.
        cls = type(
            base.__name__,
            (base,),
            {
                "__init__": __init__,
                "initialize_weights": initialize_weights,
                "save_pretrained": save_pretrained,
                "__module__": __name__,
                "__qualname__": base.__qualname__,
                "_hf_prune_base": base,
            },
        )
        _CLASSES[base] = cls
    return _CLASSES[base]


def __getattr__(name: str) -> type:
    """``PrunedLlamaForCausalLM`` -> the pruned subclass of ``transformers.LlamaForCausalLM`` (for auto_map)."""
    if name.startswith(PREFIX) and hasattr(transformers, name[len(PREFIX) :]):
        return pruned_class(getattr(transformers, name[len(PREFIX) :]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def auto_model_classes(config: Any) -> dict[str, type]:
    """Every ``AutoModel*`` class that maps this config's type, by name, with the model class it builds."""
    from transformers.models.auto import modeling_auto

    classes = {}
    for name in sorted(dir(modeling_auto)):
        auto_cls = getattr(modeling_auto, name)
        mapping = getattr(auto_cls, "_model_mapping", None)
        if not name.startswith("AutoModel") or mapping is None:
            continue
        try:
            model_cls = mapping[type(config)]
        except (KeyError, ValueError, AttributeError, ImportError):
            continue
        classes[name] = model_cls[0] if isinstance(model_cls, list | tuple) else model_cls
    return classes


def auto_map(config: Any) -> dict[str, str]:
    """``auto_map`` entries that route every applicable ``AutoModel*`` class to the pruned classes."""
    module = Path(LOADER_FILES[0]).stem
    return {name: f"{module}.{PREFIX}{cls.__name__}" for name, cls in auto_model_classes(config).items()}


def write_loader_files(model: Any, save_directory: str | os.PathLike[str]) -> None:
    """Copy the loader code next to the weights and point ``config.json``'s ``auto_map`` at it."""
    directory = Path(save_directory)
    here = Path(__file__).resolve().parent
    for name in LOADER_FILES:
        shutil.copyfile(here / name, directory / name)
    config_path = directory / "config.json"
    data = json.loads(config_path.read_text(encoding="utf-8"))
    if CONFIG_KEY not in data and CONFIG_KEY not in data.get("text_config", {}):
        return
    # Written by the save above (it ran under global_config_access): plain transformers must not inherit it,
    # or it would build a dense-shaped model instead of failing clearly on the per-layer attributes.
    data.pop("allow_global_per_layer_attribute_access", None)
    data.get("text_config", {}).pop("allow_global_per_layer_attribute_access", None)
    data["auto_map"] = {**data.get("auto_map", {}), **auto_map(model.config)}
    atomic_write_text(config_path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
