"""Pushing a pruned checkpoint to the Hugging Face Hub in one commit, with its model card.

Everything that can be checked locally or read-only (repo id, token, checkpoint files) is checked before the first
request that writes. The upload is one ``HfApi.upload_folder`` call, i.e. one commit: it either lands whole or not
at all, and pushing the same files again never adds a second commit. The local folder is never modified: files
are staged (as links) in a temporary folder, where the card gets the repo id it is pushed to.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi, ModelCard
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from torch import nn
from transformers.utils import logging

from .card import CARD_NAME, REPO_PLACEHOLDER, TAGS, card_files
from .checkpoint import save_pretrained
from .evaluation import QualityCollapseError, check_collapse
from .export.record import read_exports
from .prune import PruningReport

logger = logging.get_logger(__name__)

REPORT_NAME = "pruning_report.json"
TOKEN_HELP = "token missing or invalid: run `hf auth login` or pass token=… (CLI: --token)"


class HubPushError(OSError):
    """A push to the Hub failed; the message says what is on the Hub now and whether retrying is safe."""


def check_repo_id(repo_id: str) -> None:
    """Raise ``ValueError`` unless ``repo_id`` is a valid Hub repo id (checked locally, with huggingface_hub's rule)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(
            f"invalid repo id {repo_id!r}: {err} Expected 'namespace/name', e.g. 'me/llama-pruned'."
        ) from err


def check_token(token: str | None = None) -> str:
    """Check that ``token`` (default: the logged-in one) is valid and may write; returns the user name.

    Only ``whoami`` is called, which reads and never writes.
    """
    api = HfApi(token=token)
    try:
        info = api.whoami()
    except LocalTokenNotFoundError as err:
        raise PermissionError(TOKEN_HELP) from err
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code == 401:
            raise PermissionError(f"{TOKEN_HELP} (the Hub at {api.endpoint} said: {err})") from err
        raise HubPushError(f"could not check the token with the Hub at {api.endpoint}: {err}") from err
    except Exception as err:  # connection refused, DNS, timeout...
        raise HubPushError(f"could not reach the Hub at {api.endpoint} to check the token: {err}") from err
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PermissionError(f"{TOKEN_HELP} (this token is read-only; pushing needs a token with write access)")
    return str(info.get("name"))


def check_checkpoint(folder: Path) -> None:
    """Raise ``FileNotFoundError`` unless ``folder`` holds a saved checkpoint (``config.json`` and safetensors)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"'{folder}' is not a directory; save the model first (hf_prune.save_pretrained).")
    missing = [pattern for pattern in ("config.json", "*.safetensors") if not any(folder.glob(pattern))]
    if missing:
        raise FileNotFoundError(
            f"'{folder}' does not look like a saved checkpoint: no {' and no '.join(missing)}. Save the model with "
            "hf_prune.save_pretrained (or `hf-prune prune -o DIR`) and push that folder."
        )


def _stage(folder: Path, staging: Path) -> None:
    """Link every file of ``folder`` into ``staging`` (copies where links are impossible). Left out: hidden and
    temporary files (an interrupted atomic write) and Trainer checkpoints (``checkpoint-*/``) of an output dir."""
    for root, dirs, files in os.walk(folder):
        top = Path(root) == folder
        dirs[:] = [d for d in dirs if not d.startswith(".") and not (top and d.startswith("checkpoint-"))]
        target = staging / Path(root).relative_to(folder)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            if name.startswith(".") or name.endswith(".tmp"):
                continue
            source = Path(root, name).resolve()
            try:
                os.symlink(source, target / name)
            except OSError:
                shutil.copy2(source, target / name)


def _card(staging: Path, folder: Path, repo_id: str, report: PruningReport | None, card_args: dict[str, Any]) -> None:
    """Put the card to push into ``staging``.

    It is built from ``report`` (by default the folder's ``pruning_report.json``) when a report or card arguments
    are given, or when the folder has no card; otherwise the folder's own card is pushed, with the ``<repo_id>``
    placeholder of an hf_prune card filled in. Files in ``staging`` are links: they are replaced, never written.
    """
    card_path = staging / CARD_NAME
    if report is None and (card_args or not card_path.exists()) and (staging / REPORT_NAME).is_file():
        report = PruningReport.from_dict(json.loads((staging / REPORT_NAME).read_text(encoding="utf-8")))
    if report is not None:
        config = json.loads((staging / "config.json").read_text(encoding="utf-8"))
        card_args.setdefault("model_class_name", next(iter(config.get("architectures") or []), None))
        card_args.setdefault("exports", read_exports(staging))  # a rebuilt card keeps its "Exported for" section
        for name, content in card_files(report, repo_id=repo_id, **card_args).items():
            (staging / name).unlink(missing_ok=True)
            (staging / name).write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return
    if card_args:
        raise ValueError(
            f"{', '.join(sorted(card_args))} describe the model card, but '{folder}' has no {REPORT_NAME} to build "
            "it from: pass report=..."
        )
    if not card_path.exists():
        logger.warning("'%s' has no model card (README.md) and no %s: pushing it without a card.", folder, REPORT_NAME)
        return
    text = card_path.read_text(encoding="utf-8")
    if REPO_PLACEHOLDER in text and set(TAGS) <= set(ModelCard(text, ignore_metadata_errors=True).data.tags or []):
        card_path.unlink()
        card_path.write_text(text.replace(REPO_PLACEHOLDER, repo_id), encoding="utf-8")


def _create_repo(api: HfApi, repo_id: str, private: bool | None) -> str:
    """Create the repo if needed; refuse to push into an existing public repo when ``private=True`` was asked."""
    if private:
        try:
            public = not api.model_info(repo_id).private
        except RepositoryNotFoundError:
            public = False
        if public:
            raise HubPushError(
                f"'{repo_id}' already exists and is public; private=True does not change an existing repo's "
                "visibility. Make it private on the Hub first, or push without private=True. Nothing was pushed."
            )
    return api.create_repo(repo_id, private=private, exist_ok=True).repo_id


def _head(api: HfApi, repo_id: str, revision: str | None) -> str:
    return str(api.model_info(repo_id, revision=revision or "main").sha)


def _failure(api: HfApi, repo_id: str, revision: str | None, create_pr: bool, head: str, err: Exception) -> str:
    """What a failed upload left on the Hub, checked where it can be."""
    ref = revision or "main"
    lines = [f"pushing to '{repo_id}' failed: {type(err).__name__}: {err}".rstrip()]
    untouched = "Your local folder is untouched"
    if create_pr:  # a pull request does not move the branch head: only the Hub's own refusal is conclusive
        if isinstance(err, HfHubHTTPError):
            lines.append(f"The Hub refused the commit: no pull request was opened. {untouched}; retrying is safe.")
        else:
            lines.append(f"Check the pull requests of '{repo_id}' before retrying (one may have opened). {untouched}.")
        return "\n".join(lines)
    try:
        now = _head(api, repo_id, revision)
    except Exception as check_err:
        lines.append(f"hf_prune could not check what was committed ({check_err}): look at '{repo_id}' before retrying.")
        return "\n".join(lines)
    if now == head:
        lines.append(
            f"Nothing was committed: '{repo_id}' ({ref}) is unchanged. {untouched}. Retrying is safe: files already "
            "uploaded are reused and a push makes a single commit."
        )
    else:
        lines.append(f"'{repo_id}' ({ref}) moved during the push (now at {now[:12]}): check it before retrying.")
    return "\n".join(lines)


def _saved_report(folder: Path | None) -> PruningReport | None:
    path = None if folder is None else folder / REPORT_NAME
    return PruningReport.from_dict(json.loads(path.read_text(encoding="utf-8"))) if path and path.is_file() else None


def check_quality(report: PruningReport | None, force: bool = False) -> None:
    """The push guard: raise :class:`QualityCollapseError` for a model whose measured quality collapsed (its
    ``report.extra["eval"]``, see :func:`hf_prune.evaluation.check_collapse`), unless ``force``."""
    evaluation = None if report is None else report.extra.get("eval")
    reason = check_collapse(evaluation) if isinstance(evaluation, dict) else None
    if reason and not force:
        raise QualityCollapseError(
            f"refusing to push: the pruned model's quality collapsed ({reason}). Prune less or with calibration "
            "data, or push anyway with force=True (CLI: --force; a saved folder: `hf-prune push DIR REPO_ID "
            "--force`). Nothing was sent to the Hub."
        )
    if reason:
        logger.warning("pushing a model whose quality collapsed (%s), as forced", reason)


def push_to_hub(
    folder_or_model: str | os.PathLike[str] | nn.Module,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    tokenizer: Any = None,
    report: PruningReport | None = None,
    force: bool = False,
    **card_args: Any,
) -> CommitInfo:
    """Push a pruned checkpoint (a saved folder, or a model) to the Hub in a single commit, with its model card.

    Example::

        hf_prune.save_pretrained(model, "out", extra_files={"pruning_report.json": report.to_json()})
        hf_prune.write_card("out", report)
        info = hf_prune.push_to_hub("out", "me/llama-pruned-30")
        print(info.commit_url)

    Args:
        folder_or_model: a folder saved by :func:`hf_prune.save_pretrained` (weights, config, tokenizer, card,
            picture, ``pruning_report.json``, loader code: everything in it is pushed, except hidden files and
            Trainer ``checkpoint-*/`` folders), or a model, which is saved to a temporary folder first (then
            ``report`` is required, for the card).
        repo_id: ``namespace/name``; the repo is created if needed (``private`` applies then).
        revision: an existing branch to push to (default ``main``). ``create_pr`` opens a pull request instead.
        token: a Hub token with write access; by default the logged-in one (``hf auth login``, ``HF_TOKEN``).
        tokenizer: saved with a model (for a folder, save it into the folder instead).
        report: build the card from this report. By default the folder's ``README.md`` is pushed as it is (with
            the repo id in its loading code), or built from its ``pruning_report.json`` if it has no card.
        force: push even when the report's evaluation measured a collapse (see
            :func:`hf_prune.evaluation.check_collapse`); by default such a push is refused before anything is sent.
        **card_args: arguments of :func:`hf_prune.build_model_card` (``base_model``, ``license``,
            ``eval_results``...); with them the card is built, from ``report`` or ``pruning_report.json``.

    Returns:
        The commit's :class:`~huggingface_hub.CommitInfo` (``commit_url``, ``oid``, ``pr_url``).

    Raises:
        ValueError: a bad repo id or arguments, or (:class:`~hf_prune.evaluation.QualityCollapseError`) a measured
            collapse without ``force``; nothing was sent.
        FileNotFoundError: the folder is not a saved checkpoint; nothing was sent to the Hub.
        PermissionError: the token is missing, invalid or read-only; nothing was written to the Hub.
        HubPushError: the upload failed; the message says whether anything was committed and if retrying is safe.
    """
    check_repo_id(repo_id)
    is_model = isinstance(folder_or_model, nn.Module)
    folder = None if is_model else Path(folder_or_model)
    if folder is None and report is None:
        raise ValueError("pushing a model needs its PruningReport (report=...), for the model card.")
    if folder is not None:
        check_checkpoint(folder)
        if tokenizer is not None:
            raise ValueError("tokenizer= applies when pushing a model; save the tokenizer into the folder instead.")
    check_quality(report if report is not None else _saved_report(folder), force)
    check_token(token)
    api = HfApi(token=token)

    with tempfile.TemporaryDirectory(prefix="hf_prune_push_") as tmp:
        staging = Path(tmp) / "checkpoint"
        if folder is None:
            card_args.setdefault("config", folder_or_model.config)
            card_args.setdefault("model_class_name", type(folder_or_model).__name__)
            files = {REPORT_NAME: report.to_json(), **card_files(report, repo_id=repo_id, **card_args)}
            save_pretrained(folder_or_model, staging, tokenizer=tokenizer, extra_files=files)
        else:
            _stage(folder.resolve(), staging)
            _card(staging, folder, repo_id, report, card_args)

        try:
            repo_id = _create_repo(api, repo_id, private)
            head = _head(api, repo_id, revision)
        except RevisionNotFoundError as err:
            raise HubPushError(
                f"branch '{revision}' does not exist in '{repo_id}'; create it first (HfApi().create_branch) or "
                "push to main. Nothing was committed."
            ) from err
        except HfHubHTTPError as err:
            raise HubPushError(f"could not create or read '{repo_id}': {err}. Nothing was committed.") from err
        logger.info("pushing %s to %s", folder or "the model", repo_id)
        try:
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                commit_message=commit_message or "Upload pruned model (hf_prune)",
                revision=revision,
                create_pr=create_pr,
            )
        except Exception as err:
            raise HubPushError(_failure(api, repo_id, revision, create_pr, head, err)) from err
    return info
