"""A small in-memory Hugging Face Hub, for tests.

`LocalHub` serves the subset of the Hub HTTP API that the real, unmodified `huggingface_hub` client (2.x)
uses to create a model repo, commit files to it (regular files inline, large/binary files through the basic
Git LFS transfer) and download them back with `hf_hub_download` / `snapshot_download`. Xet storage is not
implemented: the client must run with `HF_HUB_DISABLE_XET=1` (see the `local_hub` fixture in `conftest.py`).

Only the standard library is used. Everything lives in memory and disappears with the `LocalHub` object.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

# Same rule as the client's `validate_repo_id`, but the namespace is mandatory here.
_NAME = r"(?!.*(?:--|\.\.))[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?"
_REPO_ID_RE = re.compile(rf"{_NAME}/{_NAME}")
# The Hub stores files of 10 MB or more in LFS even when `.gitattributes` does not say so.
_LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
# The `.gitattributes` of the Hub's "initial commit", shortened to the patterns tests are likely to touch.
_LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.msgpack", "*.png")
_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in _LFS_PATTERNS).encode()


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob: what the Hub reports as `oid`/`ETag` for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The Git LFS pointer file that git stores in place of an LFS file."""
    oid = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()


@dataclass(frozen=True)
class Commit:
    """One commit: the full file tree it produces (a snapshot, not a diff)."""

    oid: str
    message: str
    files: dict[str, bytes]
    lfs_paths: frozenset[str]
    parent: str | None
    date: str


@dataclass
class _Repo:
    repo_id: str
    commits: dict[str, Commit] = field(default_factory=dict)  # every commit (branches and PRs), by oid
    refs: dict[str, str] = field(default_factory=dict)  # "main" / "refs/pr/1" -> commit oid
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes, uploaded but maybe unused

    def add_commit(self, ref: str, title: str, files: dict[str, bytes], lfs: set[str]) -> Commit:
        """Record a commit of `files` on top of `ref` and move `ref` to it."""
        parent = self.refs.get(ref)  # None for the initial commit; a new PR ref already points at its base
        seed = f"{self.repo_id}\n{parent}\n{title}\n{len(self.commits)}\n" + "".join(
            f"{path}:{hashlib.sha256(data).hexdigest()}\n" for path, data in sorted(files.items())
        )
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), title, files, frozenset(lfs), parent, date)
        self.commits[commit.oid] = commit
        self.refs[ref] = commit.oid
        return commit


class HubError(Exception):
    """An HTTP error answered as the Hub does: JSON `{"error": ...}` plus `X-Error-*` headers."""

    def __init__(self, status: int, message: str, code: str = "", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class LocalHub:
    """In-memory Hub served over HTTP on 127.0.0.1 (port chosen by the OS); usable as a context manager."""

    def __init__(self, valid_tokens: Iterable[str] = ("hf_test_token",), user: str = "test-user") -> None:
        self.valid_tokens: set[str] = set(valid_tokens)
        self.user = user
        self.endpoint = ""
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request received, in order
        self._repos: dict[str, _Repo] = {}
        self._pending_uploads: dict[str, tuple[str, str, int]] = {}  # upload key -> (repo_id, sha256, size)
        self._commit_failures: list[int] = []
        self._lfs_drops = 0
        # Handler threads run concurrently (the client uploads LFS files in parallel): one lock for all state.
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> LocalHub:
        """Bind to a free port on 127.0.0.1 and serve requests from a background thread."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.hub = self
        self._server = server
        self.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        # `shutdown()` waits for the serve loop's next poll: the default 0.5 s would be paid by every test.
        serve = partial(server.serve_forever, poll_interval=0.02)
        self._thread = threading.Thread(target=serve, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting requests and wait for the handler threads to finish."""
        if self._server is None:
            return
        self._server.shutdown()  # returns once the serving thread has left its loop
        self._server.server_close()  # joins the handler threads (see `_Server`)
        self._server = self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- helpers for tests -----------------------------------------------------------------------------------
    def commits(self, repo_id: str) -> list[Commit]:
        """Every commit of the repo, oldest first: `create_repo`'s initial commit, then branches and PRs."""
        with self._lock:
            return list(self._get_repo(repo_id).commits.values())

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Files of the repo at `revision` (a branch, `refs/pr/N` or a commit oid)."""
        with self._lock:
            return dict(self._resolve(self._get_repo(repo_id), revision).files)

    def refs(self, repo_id: str) -> dict[str, str]:
        """Branches and PR refs (`refs/pr/N`) of the repo, mapped to their commit oid."""
        with self._lock:
            return dict(self._get_repo(repo_id).refs)

    def fail_next_commit(self, status: int = 500) -> None:
        """Make the next commit POST (authorized, to an existing repo) answer `status` and store nothing."""
        with self._lock:
            self._commit_failures.append(status)

    def drop_next_lfs_upload(self, times: int = 1) -> None:
        """Make the next `times` LFS PUTs read part of the body, then close the connection without answering.

        Note: the client retries a failed PUT up to 5 times with backoff, so one drop is absorbed
        transparently; use `times=6` to make the upload itself fail.
        """
        with self._lock:
            self._lfs_drops += times

    # -- internals used by the handler -----------------------------------------------------------------------
    def _get_repo(self, repo_id: str) -> _Repo:
        repo = self._repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> Commit:
        oid = repo.refs.get(revision, revision)  # a branch, `refs/pr/N` or a full commit oid
        if oid not in repo.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]


class _Server(ThreadingHTTPServer):
    # Non-daemon handler threads, so that `server_close()` joins them. They never idle on a kept-alive
    # connection: `_Handler` speaks HTTP/1.0 (one request per connection), so `LocalHub.stop()` cannot hang.
    hub: LocalHub
    daemon_threads = False
    block_on_close = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Swallow errors from connections the client dropped: never print tracebacks to stderr."""


_REPO = r"(?P<repo>[^/?]+/[^/?]+)"
_REV = r"(?P<rev>[^/?]+)"
# (methods, path regex, handler name, write endpoint: a valid token is required). Paths are matched still
# quoted, so that a revision such as `refs%2Fpr%2F1` stays one segment.
_ROUTES: list[tuple[tuple[str, ...], re.Pattern[str], str, bool]] = [
    (("POST",), re.compile(r"/api/repos/create"), "create_repo", True),
    (("POST",), re.compile(r"/api/validate-yaml"), "validate_yaml", False),
    (("GET",), re.compile(r"/api/whoami-v2"), "whoami", True),
    (("POST",), re.compile(rf"/api/models/{_REPO}/preupload/{_REV}"), "preupload", True),
    (("POST",), re.compile(rf"/api/models/{_REPO}/commit/{_REV}"), "commit", True),
    (("GET",), re.compile(rf"/api/models/{_REPO}(?:/revision/{_REV})?"), "model_info", False),
    (("GET",), re.compile(rf"/api/models/{_REPO}/tree/{_REV}(?:/(?P<path>.*))?"), "tree", False),
    (("POST",), re.compile(rf"/{_REPO}\.git/info/lfs/objects/batch"), "lfs_batch", True),
    (("POST",), re.compile(rf"/{_REPO}\.git/info/lfs/objects/verify"), "lfs_verify", True),
    # Stands for the pre-signed storage URL the Hub hands out: the client sends no token there.
    (("PUT",), re.compile(r"/lfs-storage/(?P<key>[0-9a-f]+)"), "lfs_put", False),
    (("GET", "HEAD"), re.compile(rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)"), "resolve", False),
]


def _find_route(method: str, path: str) -> tuple[str, bool, re.Match[str]] | None:
    """(handler name, write endpoint, path match) of the route serving `method path`, if any."""
    for methods, pattern, name, write in _ROUTES:
        if method in methods and (match := pattern.fullmatch(path)):
            return name, write, match
    return None


class _Handler(BaseHTTPRequestHandler):
    """Routes a request to a `_route_*` method: it returns the JSON payload to send or raises `HubError`."""

    protocol_version = "HTTP/1.0"  # the connection closes after each response (see `_Server`)
    timeout = 30  # seconds a stalled client may hold a handler thread
    server: _Server
    params: dict[str, str]  # query parameters of the current request (last value wins)
    body: bytes  # body of the current request, de-chunked

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean: the default handler logs every request to stderr."""

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    @property
    def hub(self) -> LocalHub:
        return self.server.hub

    def _dispatch(self) -> None:
        raw_path, _, query = self.path.partition("?")
        self.params = {key: values[-1] for key, values in parse_qs(query).items()}
        with self.hub._lock:
            self.hub.requests.append((self.command, raw_path))
        route = _find_route(self.command, raw_path)
        if route is not None and route[0] == "lfs_put" and self._maybe_drop_upload():
            return
        self.body = self._read_body()  # read it all even to refuse it: unread bytes make the close an RST
        try:
            if route is None:
                raise HubError(404, f"Cannot {self.command} {raw_path}")
            name, write, match = route
            self._check_token(required=write)
            args = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
            payload = getattr(self, f"_route_{name}")(**args)
            if payload is not None:  # None: the route has replied itself
                self._reply(200, json.dumps(payload).encode())
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._reply(err.status, json.dumps({"error": err.message}).encode(), headers)
        except Exception as exc:  # a bug in this file must answer 500, not leave the client hanging
            self._reply(500, json.dumps({"error": f"LocalHub bug: {exc!r}"}).encode())

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF closing the chunk
            while self.rfile.readline().strip():  # optional trailers, then the blank line
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))  # also for HEAD: the client reads the size from it
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _check_token(self, required: bool) -> None:
        # Like the Hub: an invalid token is refused everywhere, a missing one only where writing is involved.
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        if token is not None and token not in self.hub.valid_tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        if token is None and required:
            raise HubError(401, "You must be authenticated to access this resource")

    def _commit_at(self, repo_id: str, revision: str) -> Commit:
        with self.hub._lock:
            return self.hub._resolve(self.hub._get_repo(repo_id), revision)

    def _json_body(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    # -- repos and users -------------------------------------------------------------------------------------
    def _route_create_repo(self) -> Any:
        payload = self._json_body()
        if payload.get("type", "model") != "model":
            raise HubError(400, "LocalHub only supports model repos")
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload.get('name')}"
        if not _REPO_ID_RE.fullmatch(repo_id):
            raise HubError(400, f"Invalid repo name: {repo_id!r}")
        url = f"{self.hub.endpoint}/{repo_id}"
        with self.hub._lock:
            if repo_id in self.hub._repos:  # `create_repo(exist_ok=True)` swallows the 409 but reads the url
                conflict = {"error": "You already created this model repo", "url": url}
                self._reply(409, json.dumps(conflict).encode())
                return None
            repo = self.hub._repos[repo_id] = _Repo(repo_id)
            # Like the Hub: a new repo has one commit, whose `.gitattributes` routes binaries to LFS.
            repo.add_commit("main", "initial commit", {".gitattributes": _GITATTRIBUTES}, set())
        return {"url": url, "name": repo_id}

    def _route_validate_yaml(self) -> Any:
        return {"errors": [], "warnings": []}  # the client reads this JSON even on success

    def _route_whoami(self) -> Any:
        token = {"type": "access_token", "accessToken": {"displayName": "local-hub", "role": "write"}}
        return {"type": "user", "name": self.hub.user, "auth": token}

    def _route_model_info(self, repo: str, rev: str = "main") -> Any:
        commit = self._commit_at(repo, rev)
        siblings = [{"rfilename": path} for path in sorted(commit.files)]  # sizes and oids: see the tree API
        info = {"id": repo, "author": repo.split("/")[0], "sha": commit.oid, "private": False, "gated": False}
        return {**info, "siblings": siblings, "lastModified": commit.date, "createdAt": commit.date}

    def _route_tree(self, repo: str, rev: str, path: str = "") -> Any:
        commit, recursive = self._commit_at(repo, rev), self.params.get("recursive") in ("1", "true", "True")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for file_path in sorted(commit.files):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = prefix + "/".join(parts[:depth])
                folder_oid = hashlib.sha1(f"{commit.oid}:{folder}".encode()).hexdigest()
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": folder_oid})
            if recursive or len(parts) == 1:
                entries[file_path] = _file_entry(commit, file_path)
        if prefix and not entries:
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        return list(entries.values())

    # -- uploads ---------------------------------------------------------------------------------------------
    def _route_preupload(self, repo: str, rev: str) -> Any:
        commit = self._commit_at(repo, rev)
        gitattributes = commit.files.get(".gitattributes", b"").decode(errors="replace")
        patterns = [line.split()[0] for line in gitattributes.splitlines() if "filter=lfs" in line]
        answers = []
        for item in self._json_body().get("files", []):
            path, size, sample = item["path"], int(item["size"]), base64.b64decode(item.get("sample", ""))
            basename = path.rsplit("/", 1)[-1]
            is_lfs = (
                size >= _LFS_SIZE_THRESHOLD
                or b"\0" in sample  # binary content
                or any(fnmatch.fnmatch(path if "/" in pattern else basename, pattern) for pattern in patterns)
            )
            # `oid` of the current remote file lets the client skip unchanged files (no empty commits).
            remote = _file_entry(commit, path) if path in commit.files else {}
            oid = remote["lfs"]["oid"] if "lfs" in remote else remote.get("oid")
            mode = "lfs" if is_lfs else "regular"
            answers.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return {"files": answers, "commitOid": commit.oid}

    def _route_lfs_batch(self, repo: str) -> Any:
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "LocalHub only supports the LFS 'upload' operation")
        objects = []
        with self.hub._lock:
            stored = self.hub._get_repo(repo).lfs_objects
            for obj in payload.get("objects", []):
                oid, size = str(obj["oid"]), int(obj["size"])
                if oid in stored:  # already uploaded: no actions, the client skips the upload
                    objects.append({"oid": oid, "size": size})
                    continue
                key = secrets.token_hex(16)
                self.hub._pending_uploads[key] = (repo, oid, size)
                actions = {
                    "upload": {"href": f"{self.hub.endpoint}/lfs-storage/{key}"},
                    "verify": {"href": f"{self.hub.endpoint}/{repo}.git/info/lfs/objects/verify"},
                }
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def _maybe_drop_upload(self) -> bool:
        """Fault injection: read part of the body, then hang up without answering (`drop_next_lfs_upload`)."""
        with self.hub._lock:
            if self.hub._lfs_drops == 0:
                return False
            self.hub._lfs_drops -= 1
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(max(1, length // 2)) if length else self.rfile.readline()
        self.close_connection = True
        return True

    def _route_lfs_put(self, key: str) -> Any:
        with self.hub._lock:
            if key not in self.hub._pending_uploads:
                raise HubError(403, "Upload URL is invalid or expired")
            repo_id, oid, size = self.hub._pending_uploads[key]
            if len(self.body) != size or hashlib.sha256(self.body).hexdigest() != oid:
                raise HubError(400, f"Uploaded content does not match oid {oid} / size {size}")
            self.hub._get_repo(repo_id).lfs_objects[oid] = self.body
            del self.hub._pending_uploads[key]  # kept until success: the client retries on the same URL
        return {}

    def _route_lfs_verify(self, repo: str) -> Any:
        payload = self._json_body()
        with self.hub._lock:
            data = self.hub._get_repo(repo).lfs_objects.get(str(payload.get("oid")))
        if data is None or len(data) != payload.get("size"):
            raise HubError(404, f"LFS object {payload.get('oid')} not found")
        return {}

    def _route_commit(self, repo: str, rev: str) -> Any:
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except ValueError as err:
            raise HubError(400, f"Invalid NDJSON body: {err}") from err
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line must be the commit header")
        if lines[0]["value"].get("parentCommit"):
            raise HubError(400, "LocalHub does not support `parent_commit`")
        create_pr = self.params.get("create_pr") == "1"
        with self.hub._lock:  # all-or-nothing: validate every operation before storing anything
            repo_obj = self.hub._get_repo(repo)
            if self.hub._commit_failures:
                status = self.hub._commit_failures.pop(0)
                raise HubError(status, f"Injected failure (HTTP {status})")
            if rev not in repo_obj.refs:
                raise HubError(404, f"Cannot commit to {rev!r}: not a branch", "RevisionNotFound")
            base = self.hub._resolve(repo_obj, rev)
            files, lfs = dict(base.files), set(base.lfs_paths)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = str(value.get("path", ""))
                if not path or path.startswith("/") or ".." in path.split("/"):
                    raise HubError(400, f"Invalid path in commit: {path!r}")
                if key == "file":
                    files[path] = base64.b64decode(value["content"])
                    lfs.discard(path)
                elif key == "lfsFile":
                    data = repo_obj.lfs_objects.get(value.get("oid", ""))
                    if data is None or value.get("size", len(data)) != len(data):
                        raise HubError(422, f"LFS object of {path} was never uploaded", "LfsNotFound")
                    files[path] = data
                    lfs.add(path)
                else:  # deletions: unused by the flows under test, so refused loudly rather than ignored
                    raise HubError(400, f"LocalHub does not support the commit operation {key!r}")
            message, pr_url = lines[0]["value"].get("summary") or "Commit", None
            if create_pr:
                number = 1 + sum(ref.startswith("refs/pr/") for ref in repo_obj.refs)
                repo_obj.refs[f"refs/pr/{number}"] = base.oid  # the PR branches off `base`
                rev, pr_url = f"refs/pr/{number}", f"{self.hub.endpoint}/{repo}/discussions/{number}"
            commit = repo_obj.add_commit(rev, message, files, lfs)
        commit_url = f"{self.hub.endpoint}/{repo}/commit/{commit.oid}"
        return {"success": True, "commitOid": commit.oid, "commitUrl": commit_url, "pullRequestUrl": pr_url}

    # -- downloads -------------------------------------------------------------------------------------------
    def _route_resolve(self, repo: str, rev: str, path: str) -> Any:
        commit = self._commit_at(repo, rev)
        if path not in commit.files:
            # X-Repo-Commit lets the client remember the file is missing at this commit (`.no_exist` cache).
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data, entry = commit.files[path], _file_entry(commit, path)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        if "lfs" in entry:  # the client names the cached blob after X-Linked-Etag (the sha256) when present
            headers.update({"X-Linked-Etag": f'"{entry["lfs"]["oid"]}"', "X-Linked-Size": str(len(data))})
        status, body, size = 200, data, len(data)
        if match := re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip()):
            first, last = match.groups()  # "bytes=2-5", "bytes=10-" or the suffix form "bytes=-3"
            start = int(first) if first else max(0, size - int(last or 0))
            end = min(int(last), size - 1) if first and last else size - 1
            if start >= size or start > end:
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._reply(status, body, {"Content-Type": "application/octet-stream", **headers})
        return None


def _file_entry(commit: Commit, path: str) -> dict[str, Any]:
    """Tree entry of a file, as `GET /api/models/{repo}/tree/...` returns it."""
    data = commit.files[path]
    entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
    if path in commit.lfs_paths:
        pointer = lfs_pointer(data)
        entry["oid"] = git_blob_sha1(pointer)  # git stores the pointer; the content is addressed by sha256
        sha256 = hashlib.sha256(data).hexdigest()
        entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": len(pointer)}
    return entry
