"""What a checkpoint folder says about its exports: ``exports.json`` next to the weights, and the model card's
"Exported for deployment" section (replaced in place, so the rest of the card stays as it was)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..card import CARD_NAME, with_exports_section
from ..modeling_pruned import atomic_write_text

EXPORTS_NAME = "exports.json"


def read_exports(folder: str | Path) -> list[dict[str, Any]]:
    """The exports recorded in a checkpoint folder (``[]`` when none)."""
    path = Path(folder) / EXPORTS_NAME
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return list(data.get("exports", [])) if isinstance(data, dict) else []


def record_export(folder: Path, info: dict[str, Any]) -> None:
    """Add one export to ``folder/exports.json`` (one entry per format and outtype; the newest wins) and to the
    folder's model card, if it has one. Only the file's name is kept: a card never names a local path."""
    entry = {
        **{k: v for k, v in info.items() if k != "file"},
        "file": Path(info["file"]).name,
        "hf_prune_version": __version__,
    }
    kept = [
        e for e in read_exports(folder) if (e.get("format"), e.get("outtype")) != (entry["format"], entry["outtype"])
    ]
    exports = [*kept, entry]
    atomic_write_text(folder / EXPORTS_NAME, json.dumps({"exports": exports}, indent=2) + "\n")
    card = folder / CARD_NAME
    if card.is_file():
        atomic_write_text(card, with_exports_section(card.read_text(encoding="utf-8"), exports))
