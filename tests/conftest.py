"""Shared pytest fixtures."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator

import pytest
from pytest import MonkeyPatch, TempPathFactory

from .hub_server import LocalHub


@pytest.fixture
def local_hub(tmp_path_factory: TempPathFactory, monkeypatch: MonkeyPatch) -> Iterator[LocalHub]:
    """Start a `LocalHub` and point the real `huggingface_hub` client (and transformers) at it for one test.

    Every Hub call made without an explicit `endpoint=` / `token=` goes to the local server, authenticated as
    `hf_test_token`, with caches and the token file under a fresh temporary `HF_HOME`. Example::

        def test_push(local_hub):
            HfApi().create_repo("user/model")
            HfApi().upload_folder(repo_id="user/model", folder_path=folder)
            assert local_hub.files("user/model")["config.json"] == b"..."

    Setting the environment variables is not enough once `huggingface_hub` is imported, which is why the
    module attributes are patched as well:
    - `huggingface_hub.constants` reads `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_DISABLE_XET`, `HF_HUB_OFFLINE`...
      once, at import time; the client then reads `constants.X` at call time, so patching those works.
    - `HUGGINGFACE_CO_URL_TEMPLATE` (used by `hf_hub_url`, hence every download) embeds the endpoint.
    - Top-level functions (`huggingface_hub.create_repo`, `upload_folder`...) are bound methods of an
      `HfApi()` created at import time, whose `endpoint` is then fixed; transformers caches its own `HfApi`.
    - A few modules copied a constant by name (`from ..constants import X`): patch those copies directly.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    # By module path: `huggingface_hub.utils.tqdm` is shadowed by the `tqdm` class that package re-exports.
    modules = ("hf_api", "utils._cache_manager", "utils.tqdm")
    hf_api, cache_manager, hf_tqdm = (importlib.import_module(f"huggingface_hub.{name}") for name in modules)

    hf_home = tmp_path_factory.mktemp("hf_home")
    with LocalHub() as hub:
        # For subprocesses and for any code that reads the environment at call time.
        for name, value in {
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(hf_home),
            "HF_TOKEN": "hf_test_token",  # implicit token of every call; also shadows a real token file
            "HF_HUB_DISABLE_XET": "1",  # LocalHub speaks plain LFS only
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }.items():
            monkeypatch.setenv(name, value)
        for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HF_OIDC_RESOURCE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_CO_STAGING"):
            monkeypatch.delenv(name, raising=False)  # would take precedence over the settings above

        for name, value in {
            "ENDPOINT": hub.endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_TELEMETRY": True,
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(hf_home / "hub"),
            "HUGGINGFACE_HUB_CACHE": str(hf_home / "hub"),
            "HF_ASSETS_CACHE": str(hf_home / "assets"),
            "HF_XET_CACHE": str(hf_home / "xet"),
            "HF_TOKEN_PATH": str(hf_home / "token"),
            "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
            # The client fetches `{ENDPOINT}/api/agent-harnesses` once per process and caches it in this file.
            "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        }.items():
            monkeypatch.setattr(constants, name, value)
        monkeypatch.setattr(cache_manager, "HF_HUB_CACHE", str(hf_home / "hub"))
        monkeypatch.setattr(hf_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", True)  # keep test output readable
        monkeypatch.setattr(hf_api.api, "endpoint", hub.endpoint)
        if (transformers_hub := sys.modules.get("transformers.utils.hub")) is not None:
            monkeypatch.setattr(transformers_hub, "_hf_api", None, raising=False)  # re-created on next use
        yield hub
        if (transformers_hub := sys.modules.get("transformers.utils.hub")) is not None:
            transformers_hub._hf_api = None  # if first created during the test, it points at this server
    close_session()  # drop pooled connections to the stopped server
