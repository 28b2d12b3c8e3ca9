"""Which transformers class a checkpoint is loaded as: the one whose weights it holds.

``config.architectures`` names the class that wrote ``config.json``, which is not always the class of the
weights next to it: a sentence-transformers MPNet folder says ``MPNetForMaskedLM`` and holds ``MPNetModel``'s
weights (its pooler, no LM head). Loading the named class would add a randomly initialised head, drop the pooler
and count the head's FLOPs. Here every candidate class (the named architectures, then each ``AutoModel*`` class
for the config's type) is built on the meta device, and transformers' own key matching (prefixes, renamed keys,
tied weights) says what it would leave uninitialised and what in the checkpoint it would not use. No weight is
read: a probe costs the checkpoint's header and a model skeleton.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import transformers
from transformers.utils import logging

from .modeling_pruned import auto_model_classes, pruned_class

logger = logging.get_logger(__name__)

# Loading arguments that say where the checkpoint is; the rest (dtype, device_map...) do not change its keys.
HUB_KWARGS = ("revision", "token", "cache_dir", "subfolder", "local_files_only", "trust_remote_code")
# Auto classes tried first, in this order, when the checkpoint's architectures do not hold its weights: the base
# model, then the common task heads (a tie between two classes that both hold every weight goes to the first).
_PREFERRED = (
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForMaskedLM",
)
_SHOWN = 6  # key names quoted in a message


class ModelClassError(ValueError):
    """A model class that does not exist, does not fit the checkpoint's config, or no class that holds its weights."""


@dataclass(frozen=True)
class ClassChoice:
    """A transformers class and how the checkpoint's weights fit it."""

    cls: type
    missing: tuple[str, ...] = ()  # weights of the class absent from the checkpoint: they would be randomly initialised
    unused: tuple[str, ...] = ()  # tensors of the checkpoint that the class does not load: they would be dropped
    mismatched: tuple[str, ...] = ()  # weights whose shapes differ between the class and the checkpoint

    @property
    def complete(self) -> bool:
        """Every weight of the class comes from the checkpoint, in its shape."""
        return not self.missing and not self.mismatched

    def describe(self) -> str:
        parts = [
            f"{what} {_names(keys)}"
            for what, keys in (
                ("would randomly initialise", self.missing),
                ("would leave unused", self.unused),
                ("has other shapes for", self.mismatched),
            )
            if keys
        ]
        return f"{self.cls.__name__} " + ("; ".join(parts) if parts else "holds exactly the checkpoint's weights")


def _names(keys: tuple[str, ...]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"{len(keys)} weight(s) ({shown}{', ...' if len(keys) > _SHOWN else ''})"


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' load report and progress bar while probing: a probe's report is not the user's load."""
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _auto_names(config: Any) -> list[str]:
    names = list(auto_model_classes(config))
    return [n for n in _PREFERRED if n in names] + [n for n in names if n not in _PREFERRED]


def resolve_model_class(config: Any, model_class: type | str) -> type:
    """The concrete transformers class that ``model_class`` names for ``config``.

    Args:
        config: the checkpoint's config.
        model_class: an Auto class or its name (``AutoModel``, ``"AutoModelForSequenceClassification"``), or a
            concrete transformers class or class name (``"BertForSequenceClassification"``).
    """
    model_type = getattr(config, "model_type", "?")
    fitting = ", ".join(_auto_names(config)) or "none"
    if isinstance(model_class, str):
        found = getattr(transformers, model_class, None) if model_class.isidentifier() else None
        if not isinstance(found, type):
            raise ModelClassError(
                f"unknown model class '{model_class}': pass an Auto class or a transformers model class name. "
                f"For this {model_type} checkpoint the Auto classes are: {fitting}."
            )
        model_class = found
    if hasattr(model_class, "_model_mapping"):
        classes = auto_model_classes(config)
        if model_class.__name__ not in classes:
            raise ModelClassError(
                f"{model_class.__name__} has no class for {model_type} checkpoints; the Auto classes that do: "
                f"{fitting}."
            )
        return classes[model_class.__name__]
    config_class = getattr(model_class, "config_class", None)
    if not isinstance(config_class, type) or not isinstance(config, config_class):
        expected = getattr(config_class, "model_type", None) or getattr(config_class, "__name__", "no")
        raise ModelClassError(
            f"{model_class.__name__} is built from {expected} configs, but this checkpoint is {model_type}. Pass a "
            f"class for {model_type}, or an Auto class ({fitting})."
        )
    return model_class


def candidate_classes(config: Any) -> list[type]:
    """The classes a checkpoint may hold: its ``architectures`` (those transformers has), then the Auto classes'."""
    named = [getattr(transformers, name, None) for name in getattr(config, "architectures", None) or []]
    classes = auto_model_classes(config)
    ordered = [c for c in named if isinstance(c, type)] + [classes[name] for name in _auto_names(config)]
    return list(dict.fromkeys(ordered))


def probe(path: str | os.PathLike[str], cls: type, config: Any, **hub_kwargs: Any) -> ClassChoice:
    """How the checkpoint at ``path`` fits ``cls``: built on the meta device, so no weight is read."""
    with _quiet_loading():
        _, info = pruned_class(cls).from_pretrained(
            path,
            config=copy.deepcopy(config),
            device_map="meta",
            # transformers >= 5.25 kernelizes by default whenever `kernels` is installed, which refuses the meta
            # device; a probe runs no forward, so it needs no kernels.
            use_kernels=False,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            **{k: v for k, v in hub_kwargs.items() if k in HUB_KWARGS},
        )
    mismatched = tuple(sorted(_shape_text(m) for m in info.get("mismatched_keys", ())))
    return ClassChoice(
        cls=cls,
        missing=tuple(sorted(info.get("missing_keys", ()))),
        unused=tuple(sorted(info.get("unexpected_keys", ()))),
        mismatched=mismatched,
    )


def _shape_text(mismatch: Any) -> str:
    """``key (checkpoint [16, 32], model [32, 32])`` from transformers' ``(key, checkpoint shape, model shape)``."""
    if isinstance(mismatch, tuple) and len(mismatch) == 3:
        key, stored, built = mismatch
        return f"{key} (checkpoint {list(stored)}, model {list(built)})"
    return str(mismatch)


def choose_model_class(
    path: str | os.PathLike[str], config: Any, model_class: type | str | None = None, **hub_kwargs: Any
) -> ClassChoice:
    """The class to load the checkpoint at ``path`` with.

    Without ``model_class``: the first candidate (see :func:`candidate_classes`) that holds every weight and uses
    every tensor of the checkpoint; else, of those that hold every weight, the one that leaves the fewest tensors
    unused (with a warning naming them). A checkpoint that no class holds completely is refused. With
    ``model_class``: that class, with a warning if it would randomly initialise weights or drop tensors.

    Raises:
        ModelClassError: an unknown class, one that does not fit the config or the checkpoint's shapes, or no
            class that holds every weight of the checkpoint.
    """
    if model_class is not None:
        choice = probe(path, resolve_model_class(config, model_class), config, **hub_kwargs)
        if choice.mismatched:
            raise ModelClassError(f"the checkpoint does not fit the class asked for: {choice.describe()}.")
        if choice.missing:
            warnings.warn(
                f"{choice.describe()}: those weights start random (train them before use), and the FLOPs and "
                "parameters reported include them.",
                UserWarning,
                stacklevel=3,
            )
        elif choice.unused:
            _warn_unused(choice)
        return choice

    candidates = candidate_classes(config)
    if not candidates:
        raise ModelClassError(
            f"the checkpoint's config.json names no transformers architecture, and no Auto class covers model type "
            f"'{getattr(config, 'model_type', None)}'; pass model_class= (CLI: --model-class)."
        )
    probes = []
    for cls in candidates:
        try:
            choice = probe(path, cls, config, **hub_kwargs)
        except (ValueError, TypeError, RuntimeError, AttributeError, KeyError, NotImplementedError) as err:
            logger.info("%s cannot be built from this checkpoint: %s", cls.__name__, err)
            continue
        if choice.complete and not choice.unused:
            return choice
        probes.append(choice)
    complete = [c for c in probes if c.complete]
    if not complete:
        tried = "\n".join(f"  - {c.describe()}" for c in probes)
        raise ModelClassError(
            "no transformers class holds every weight of this checkpoint, so any of them would start with random "
            f"weights:\n{tried}\nPass the class you want with model_class= (CLI: --model-class NAME) to accept that."
        )
    choice = min(complete, key=lambda c: len(c.unused))
    _warn_unused(choice)
    return choice


def _warn_unused(choice: ClassChoice) -> None:
    warnings.warn(
        f"{choice.describe()}: they are not part of the loaded model and will not be saved with it. Pass another "
        "class with model_class= (CLI: --model-class) to keep them.",
        UserWarning,
        stacklevel=4,
    )
