"""The real `huggingface_hub` client against `LocalHub` (see `hub_server.py` and the `local_hub` fixture)."""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import _http

from .hub_server import HubError, LocalHub

REPO = "test-user/tiny-model"


def _safetensors(values: list[float]) -> bytes:
    """A valid single-tensor .safetensors file: binary (NUL bytes in its header length), so it goes to LFS."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, 4 * len(values)]}})
    return struct.pack("<Q", len(header)) + header.encode() + struct.pack(f"<{len(values)}f", *values)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A model folder as `save_pretrained` would write it: weights, config and model card."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "model.safetensors").write_bytes(_safetensors([0.5, -1.0, 2.0, 3.5]))
    (path / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 4}))
    (path / "README.md").write_text("---\nlicense: mit\n---\n# Tiny model\n")
    return path


@pytest.fixture
def api(local_hub: LocalHub) -> HfApi:
    """A client configured only through the `local_hub` fixture: no explicit endpoint or token."""
    huggingface_hub.create_repo(REPO)  # the module-level function: its `HfApi` predates the fixture
    return HfApi()


class _NoSleepTime:
    """Replaces the `time` module of the client's retry loop: records backoff sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> _NoSleepTime:
    """`http_backoff` retries a dropped upload 5 times, sleeping 1+2+4+8+8 s: skip the sleeps."""
    fake = _NoSleepTime()
    monkeypatch.setattr(_http, "time", fake)
    return fake


def _requests(hub: LocalHub, method: str, marker: str) -> list[str]:
    return [path for verb, path in hub.requests if verb == method and marker in path]


def test_upload_folder_then_snapshot_download_round_trip(
    local_hub: LocalHub, api: HfApi, folder: Path, tmp_path: Path
) -> None:
    info = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="Upload tiny model")

    commits = local_hub.commits(REPO)
    assert [c.message for c in commits] == ["initial commit", "Upload tiny model"]  # a single upload commit
    assert commits[-1].oid == info.oid and info.commit_url.startswith(local_hub.endpoint)
    assert commits[-1].lfs_paths == {"model.safetensors"}  # binary: LFS; config and card: inline
    assert len(_requests(local_hub, "PUT", "/lfs-storage/")) == 1
    assert len(_requests(local_hub, "POST", "/lfs/objects/verify")) == 1
    stored = local_hub.files(REPO)
    assert {name: stored[name] for name in ("model.safetensors", "config.json", "README.md")} == {
        p.name: p.read_bytes() for p in folder.iterdir()
    }

    cache = tmp_path / "cache"
    snapshot = Path(snapshot_download(REPO, cache_dir=cache))
    assert snapshot.name == info.oid
    assert sorted(p.name for p in snapshot.iterdir()) == [
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    for path in folder.iterdir():
        assert (snapshot / path.name).read_bytes() == path.read_bytes()
    # The LFS blob is cached under its sha256, i.e. the client used X-Linked-Etag rather than ETag.
    weights_sha256 = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert (cache / "models--test-user--tiny-model" / "blobs" / weights_sha256).is_file()

    single = hf_hub_download(REPO, "config.json", cache_dir=tmp_path / "other-cache")
    assert Path(single).read_bytes() == (folder / "config.json").read_bytes()


def test_create_repo_twice_needs_exist_ok(local_hub: LocalHub, api: HfApi) -> None:
    with pytest.raises(HfHubHTTPError) as failure:
        api.create_repo(REPO)
    assert failure.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO  # what `push_to_hub` calls
    assert len(local_hub.commits(REPO)) == 1


def test_reupload_of_unchanged_folder_adds_no_commit(local_hub: LocalHub, api: HfApi, folder: Path) -> None:
    first = api.upload_folder(repo_id=REPO, folder_path=folder)
    again = api.upload_folder(repo_id=REPO, folder_path=folder)

    # The client compares the preupload `oid`s with its local files and skips the empty commit.
    assert again.oid == first.oid
    assert len(local_hub.commits(REPO)) == 2
    assert len(_requests(local_hub, "PUT", "/lfs-storage/")) == 1  # LFS batch: already stored, no upload

    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 8}))
    changed = api.upload_folder(repo_id=REPO, folder_path=folder)
    assert len(local_hub.commits(REPO)) == 3 and local_hub.commits(REPO)[-1].oid == changed.oid
    assert local_hub.files(REPO)["config.json"] == (folder / "config.json").read_bytes()


def test_create_pr_creates_a_pr_ref_and_leaves_main_alone(
    local_hub: LocalHub, api: HfApi, folder: Path, tmp_path: Path
) -> None:
    base = api.upload_folder(repo_id=REPO, folder_path=folder)
    (folder / "config.json").write_text('{"pruned": true}')

    pr = api.upload_folder(repo_id=REPO, folder_path=folder, create_pr=True)

    assert (pr.pr_revision, pr.pr_num) == ("refs/pr/1", 1)
    assert pr.pr_url == f"{local_hub.endpoint}/{REPO}/discussions/1"
    assert local_hub.refs(REPO) == {"main": base.oid, "refs/pr/1": pr.oid}
    assert local_hub.files(REPO, "main")["config.json"] != b'{"pruned": true}'
    assert local_hub.files(REPO, "refs/pr/1")["config.json"] == b'{"pruned": true}'
    assert api.model_info(REPO, revision="refs/pr/1").sha == pr.oid  # quoted `refs%2Fpr%2F1` in the URL
    downloaded = hf_hub_download(REPO, "config.json", revision="refs/pr/1", cache_dir=tmp_path / "cache")
    assert Path(downloaded).read_bytes() == b'{"pruned": true}'


def test_failed_commit_stores_nothing_then_retry_works(local_hub: LocalHub, api: HfApi, folder: Path) -> None:
    local_hub.fail_next_commit(status=500)

    with pytest.raises(HfHubHTTPError) as failure:
        api.upload_folder(repo_id=REPO, folder_path=folder)

    assert failure.value.response.status_code == 500
    assert len(_requests(local_hub, "POST", "/commit/main")) == 1  # the commit POST is never retried
    assert [c.message for c in local_hub.commits(REPO)] == ["initial commit"]
    assert "config.json" not in local_hub.files(REPO)

    retry = api.upload_folder(repo_id=REPO, folder_path=folder)
    assert [c.oid for c in local_hub.commits(REPO)][1:] == [retry.oid]  # exactly one new commit
    assert local_hub.files(REPO)["model.safetensors"] == (folder / "model.safetensors").read_bytes()


def test_a_single_dropped_lfs_upload_is_retried_by_the_client(
    local_hub: LocalHub, api: HfApi, folder: Path, no_backoff: _NoSleepTime
) -> None:
    local_hub.drop_next_lfs_upload()

    info = api.upload_folder(repo_id=REPO, folder_path=folder)

    puts = _requests(local_hub, "PUT", "/lfs-storage/")
    assert len(puts) == 2 and puts[0] == puts[1]  # same pre-signed URL, retried after one backoff
    assert no_backoff.sleeps == [1]
    assert [c.oid for c in local_hub.commits(REPO)][1:] == [info.oid]


def test_lfs_upload_failing_every_retry_commits_nothing(
    local_hub: LocalHub, api: HfApi, folder: Path, no_backoff: _NoSleepTime
) -> None:
    local_hub.drop_next_lfs_upload(times=6)  # the first attempt and the client's 5 retries

    with pytest.raises(RuntimeError, match=r"Error while uploading 'model\.safetensors'") as failure:
        api.upload_folder(repo_id=REPO, folder_path=folder)

    assert isinstance(failure.value.__cause__, httpx2.RemoteProtocolError)  # connection closed, no response
    assert len(no_backoff.sleeps) == 5
    assert not _requests(local_hub, "POST", "/commit/") and len(local_hub.commits(REPO)) == 1

    retry = api.upload_folder(repo_id=REPO, folder_path=folder)
    assert [c.oid for c in local_hub.commits(REPO)][1:] == [retry.oid]
    assert local_hub.files(REPO)["model.safetensors"] == (folder / "model.safetensors").read_bytes()


def test_commit_of_a_never_uploaded_lfs_object_is_refused_atomically(local_hub: LocalHub, api: HfApi) -> None:
    regular = CommitOperationAdd(path_in_repo="notes.txt", path_or_fileobj=b"kept only if committed")
    weights = CommitOperationAdd(path_in_repo="model.safetensors", path_or_fileobj=_safetensors([1.0]))
    # Make the client believe the LFS upload already happened, so that it commits without uploading.
    weights._upload_mode, weights._should_ignore, weights._is_uploaded = "lfs", False, True

    with pytest.raises(HfHubHTTPError) as failure:
        api.create_commit(REPO, operations=[regular, weights], commit_message="broken")

    assert failure.value.response.status_code == 422
    assert len(local_hub.commits(REPO)) == 1 and "notes.txt" not in local_hub.files(REPO)


def test_bad_token_gets_401_before_anything_is_stored(local_hub: LocalHub, api: HfApi, folder: Path) -> None:
    intruder = HfApi(token="hf_not_a_valid_token")

    with pytest.raises(HfHubHTTPError, match="Invalid user token") as whoami_failure:
        intruder.whoami()
    assert whoami_failure.value.response.status_code == 401
    assert api.whoami()["name"] == local_hub.user

    with pytest.raises(HfHubHTTPError) as create_failure:
        intruder.create_repo("test-user/other-model")
    assert create_failure.value.response.status_code == 401
    with pytest.raises(HubError):
        local_hub.commits("test-user/other-model")

    requests_before = len(local_hub.requests)
    with pytest.raises(HfHubHTTPError) as upload_failure:
        intruder.upload_folder(repo_id=REPO, folder_path=folder)
    assert upload_failure.value.response.status_code == 401
    # Refused at the first request (README validation): no preupload, LFS or commit request was made.
    assert [path for _, path in local_hub.requests[requests_before:]] == ["/api/validate-yaml"]
    assert len(local_hub.commits(REPO)) == 1


def test_invalid_repo_id_is_rejected_by_the_client_and_by_the_server(local_hub: LocalHub, api: HfApi) -> None:
    with pytest.raises(HFValidationError):
        api.create_repo("bad repo id!!")
    with pytest.raises(HFValidationError):
        snapshot_download("bad repo id!!")
    assert len(_requests(local_hub, "POST", "/api/repos/create")) == 1  # only the `api` fixture's own repo

    # A client that skipped validation would still be refused.
    request = urllib.request.Request(
        f"{local_hub.endpoint}/api/repos/create",
        data=json.dumps({"name": "bad repo id!!", "organization": "test-user"}).encode(),
        headers={"Authorization": "Bearer hf_test_token", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(request, timeout=5)
    assert failure.value.code == 400


def test_transformers_push_to_hub_then_from_pretrained(local_hub: LocalHub, tmp_path: Path) -> None:
    """transformers routes Hub calls through its own cached `HfApi` and `create_repo(exist_ok=True)`."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)

    model.push_to_hub("test-user/tiny-llama")
    reloaded = transformers.LlamaForCausalLM.from_pretrained("test-user/tiny-llama", cache_dir=tmp_path)

    assert local_hub.commits("test-user/tiny-llama")[-1].lfs_paths == {"model.safetensors"}
    expected, actual = model.state_dict(), reloaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_missing_repo_revision_or_file_map_to_client_errors(api: HfApi, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("test-user/does-not-exist")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, ".gitattributes", revision="no-such-branch", cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.json", cache_dir=tmp_path)


def test_range_requests_are_honoured(local_hub: LocalHub, api: HfApi) -> None:
    content = local_hub.files(REPO)[".gitattributes"]

    def fetch(range_header: str) -> tuple[int, bytes, str | None]:
        request = urllib.request.Request(
            f"{local_hub.endpoint}/{REPO}/resolve/main/.gitattributes", headers={"Range": range_header}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read(), response.headers["Content-Range"]

    assert fetch("bytes=2-5") == (206, content[2:6], f"bytes 2-5/{len(content)}")
    assert fetch("bytes=10-")[1] == content[10:]
    assert fetch("bytes=-3")[1] == content[-3:]
    with pytest.raises(urllib.error.HTTPError) as failure:
        fetch(f"bytes={len(content)}-")
    assert failure.value.code == 416


def test_stop_releases_the_port_and_threads() -> None:
    with LocalHub() as hub:
        port = int(hub.endpoint.rsplit(":", 1)[1])
        with pytest.raises(urllib.error.HTTPError) as failure:
            urllib.request.urlopen(f"{hub.endpoint}/api/models/test-user/none", timeout=5)
        assert (failure.value.code, failure.value.headers["X-Error-Code"]) == (404, "RepoNotFound")
        failure.value.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    assert not [t for t in threading.enumerate() if t.name == "local-hub"]
