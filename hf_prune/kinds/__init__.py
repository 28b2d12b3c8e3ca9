"""Kinds of prunable structure: one module per kind, registered with :func:`register_kind`.

The rest of hf_prune iterates over :func:`kinds_for` a recipe instead of naming heads and neurons. Adding a kind is a
module here (a :class:`UnitKind` subclass and one ``register_kind`` call), its recipe fields and a test row.
"""

# Registration order is the order of every table: query heads, KV heads, cross-attention heads, neurons, experts,
# neurons inside experts.
from . import attention, cross_attention, expert_neurons, experts, mlp  # noqa: F401  (register the shipped kinds)
from .base import UnitKind, UnitParameter, get_kind, kinds_for, own_fraction_kinds, register_kind, registered_kinds

__all__ = [
    "UnitKind",
    "UnitParameter",
    "get_kind",
    "kinds_for",
    "own_fraction_kinds",
    "register_kind",
    "registered_kinds",
]
