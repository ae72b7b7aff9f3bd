"""A Hub-compatible HTTP server on 127.0.0.1 for tests, and the ``fake_hub`` pytest fixture.

:class:`FakeHub` implements the routes that huggingface_hub 2.4 calls for ``create_repo``,
``create_branch``, ``upload_folder``/``create_commit``, ``model_info``/``repo_info``,
``list_repo_files``/``list_repo_tree`` and ``hf_hub_download``, and keeps every repo in memory:

- ``POST /api/repos/create``: create a repo with a first commit that adds ``.gitattributes``.
- ``POST /api/validate-yaml``: check that the README front matter is a YAML mapping.
- ``POST /api/models/{repo}/preupload/{revision}``: choose "regular" or "lfs" per file, see
  :attr:`FakeHub.upload_mode`.
- ``POST /{repo}.git/info/lfs/objects/batch``: Git LFS batch API with the "basic" transfer.
  Upload URLs point back to this server and carry a random signature instead of the token,
  as pre-signed storage URLs do. ``PUT`` stores the object, ``POST .../verify`` checks it.
- ``POST /api/models/{repo}/commit/{revision}``: NDJSON commit (header, file, lfsFile,
  deletedFile, deletedFolder lines).
- ``POST /api/models/{repo}/branch/{branch}``: create a branch.
- ``GET /api/models/{repo}[/revision/{revision}]``: model info with siblings and card data.
- ``GET /api/models/{repo}/tree/{revision}[/{path}]``: file and folder listing.
- ``HEAD``/``GET /{repo}/resolve/{revision}/{path}``: file download with the headers that
  ``hf_hub_download`` needs (X-Repo-Commit, ETag or X-Linked-Etag, X-Linked-Size).

Writes need ``Authorization: Bearer <FakeHub.token>``. The Xet storage protocol is not
implemented: the fixture sets ``HF_HUB_DISABLE_XET`` so that huggingface_hub sends LFS-mode
files through the LFS batch API. Requests to unknown routes get 404 and are recorded in
:attr:`FakeHub.unhandled_requests`.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import json
import logging
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

logger = logging.getLogger(__name__)

# The .gitattributes that the Hub adds to a new model repo, shortened to the patterns that
# matter for a transformers checkpoint.
DEFAULT_GITATTRIBUTES = (
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    "*.gguf filter=lfs diff=lfs merge=lfs -text\n"
)
LFS_EXTENSIONS = (".bin", ".pt", ".pth", ".safetensors", ".gguf", ".h5", ".msgpack", ".onnx")
# The Hub stores larger files in LFS whatever their type.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_TYPE = r"(?P<repo_type>model|dataset|space)s"


def git_blob_sha1(data: bytes) -> str:
    """Return the git object id of a blob with content ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """Return the Git LFS pointer file that git stores for an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    """A file in a commit. LFS files keep their content here too."""

    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def git_oid(self) -> str:
        """The git blob id: of the content, or of the LFS pointer for LFS files."""
        if self.lfs:
            return git_blob_sha1(lfs_pointer(self.sha256, len(self.content)))
        return git_blob_sha1(self.content)


@dataclass
class Commit:
    """One commit: a full snapshot of the repo's files."""

    oid: str
    parent: str | None
    title: str
    description: str
    files: dict[str, StoredFile]
    date: str


@dataclass
class FakeRepo:
    """A repo with its branches, commits and uploaded LFS objects."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """Return the commit that a branch name or full commit id points to."""
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class HubError(Exception):
    """An HTTP error response, with the X-Error-Code that huggingface_hub maps to exceptions."""

    def __init__(self, status: int, message: str, error_code: str | None = None, repo_commit: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.repo_commit = repo_commit


class FakeHub:
    """An in-memory Hub that serves the huggingface_hub API on 127.0.0.1.

    Attributes:
        token: The only token accepted for writes and private reads.
        user: Namespace that the token belongs to.
        organizations: Other namespaces that the token may write to.
        upload_mode: How preupload classifies files: ``"auto"``, ``"regular"`` or ``"lfs"``.
            ``"auto"`` approximates the Hub's rules. It picks LFS for binary content, for the
            extensions in :data:`LFS_EXTENSIONS` and for files of :data:`LFS_SIZE_THRESHOLD`
            bytes or more. Empty files are always regular, as on the Hub.
        requests: ``(method, path)`` of every request, in arrival order.
        unhandled_requests: ``(method, path)`` of requests that matched no route.
    """

    def __init__(self, token: str = "hf_fake_write_token", user: str = "test-user", organizations: tuple[str, ...] = ("test-org",)):
        self.token = token
        self.user = user
        self.organizations = organizations
        self.upload_mode = "auto"
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled_requests: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._upload_signatures: dict[str, tuple[str, str]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not running; call start() first.")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        """Start serving on 127.0.0.1 on a free port, in a daemon thread."""
        handler = type("BoundHubHandler", (_HubRequestHandler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        logger.info("FakeHub started at %s", self.url)
        return self

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=10)
            logger.info("FakeHub stopped")
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection

    def get_repo(self, repo_id: str, repo_type: str = "model") -> FakeRepo:
        """Return a stored repo, or raise KeyError naming the repos that exist."""
        with self._lock:
            key = f"{repo_type}s/{repo_id}"
            if key not in self.repos:
                raise KeyError(f"No {repo_type} repo {repo_id!r} on the fake Hub; it has {sorted(self.repos)}.")
            return self.repos[key]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Return path to content of every file of a repo at a branch or commit."""
        with self._lock:
            commit = self.get_repo(repo_id, repo_type).resolve(revision)
            if commit is None:
                raise KeyError(f"Revision {revision!r} not found in {repo_id!r}.")
            return {path: stored.content for path, stored in commit.files.items()}

    def lfs_paths(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> set[str]:
        """Return the paths that were committed as LFS files."""
        with self._lock:
            commit = self.get_repo(repo_id, repo_type).resolve(revision)
            if commit is None:
                raise KeyError(f"Revision {revision!r} not found in {repo_id!r}.")
            return {path for path, stored in commit.files.items() if stored.lfs}

    def commit_titles(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        """Return the commit titles of a branch, newest first."""
        with self._lock:
            repo = self.get_repo(repo_id, repo_type)
            titles = []
            commit = repo.resolve(revision)
            while commit is not None:
                titles.append(commit.title)
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return titles

    # ------------------------------------------------------------------ helpers for handlers

    def _user_for(self, authorization: str | None) -> str | None:
        if authorization is None:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip(), self.token):
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.user

    def _require_user(self, authorization: str | None) -> str:
        user = self._user_for(authorization)
        if user is None:
            raise HubError(401, "Authorization header is required for this request.")
        return user

    def _repo_for_read(self, repo_type: str, repo_id: str, authorization: str | None) -> FakeRepo:
        repo = self.repos.get(f"{repo_type}s/{repo_id}")
        if repo is None or (repo.private and self._user_for(authorization) is None):
            raise HubError(404, f"Repository {repo_id} not found.", "RepoNotFound")
        return repo

    def _repo_for_write(self, repo_type: str, repo_id: str, authorization: str | None) -> FakeRepo:
        user = self._require_user(authorization)
        repo = self._repo_for_read(repo_type, repo_id, authorization)
        namespace = repo_id.split("/")[0]
        if namespace != user and namespace not in self.organizations:
            raise HubError(403, f"You don't have the rights to write to {repo_id}.")
        return repo

    def _upload_mode_for(self, path: str, size: int, sample: bytes) -> str:
        if size == 0:
            return "regular"
        if self.upload_mode in ("regular", "lfs"):
            return self.upload_mode
        if size >= LFS_SIZE_THRESHOLD or path.endswith(LFS_EXTENSIONS) or b"\0" in sample:
            return "lfs"
        try:
            # The sample is the first 512 bytes, so it may end inside a multi-byte character.
            codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        except UnicodeDecodeError:
            return "lfs"
        return "regular"

    def _new_commit(self, repo: FakeRepo, branch: str, title: str, description: str, files: dict[str, StoredFile]) -> Commit:
        parent = repo.branches.get(branch)
        oid = hashlib.sha1(f"{repo.repo_id}:{parent}:{title}:{len(repo.commits)}:{secrets.token_hex(8)}".encode()).hexdigest()
        commit = Commit(oid=oid, parent=parent, title=title, description=description, files=files, date=_now())
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _HubRequestHandler(BaseHTTPRequestHandler):
    """Request handler that routes each request to a ``handle_*`` method. FakeHub.start sets ``hub``."""

    hub: FakeHub
    protocol_version = "HTTP/1.1"

    ROUTES = [
        ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
        ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
        ("POST", re.compile(rf"^/api/{_TYPE}/{_REPO}/preupload/(?P<revision>[^/]+)$"), "preupload"),
        ("POST", re.compile(rf"^/api/{_TYPE}/{_REPO}/commit/(?P<revision>[^/]+)$"), "commit"),
        ("POST", re.compile(rf"^/api/{_TYPE}/{_REPO}/branch/(?P<branch>[^/]+)$"), "create_branch"),
        ("GET", re.compile(rf"^/api/{_TYPE}/{_REPO}(?:/revision/(?P<revision>[^/]+))?$"), "repo_info"),
        ("GET", re.compile(rf"^/api/{_TYPE}/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?$"), "tree"),
        ("GET", re.compile(rf"^/api/{_TYPE}/{_REPO}/xet-(?:read|write)-token/.*$"), "xet_token"),
        ("POST", re.compile(rf"^/(?:(?P<repo_type>dataset|space)s/)?{_REPO}\.git/info/lfs/objects/batch$"), "lfs_batch"),
        ("PUT", re.compile(r"^/_lfs/upload/(?P<signature>[0-9a-f]+)$"), "lfs_upload"),
        ("POST", re.compile(r"^/_lfs/verify/(?P<signature>[0-9a-f]+)$"), "lfs_verify"),
        ("GET", re.compile(rf"^/(?:(?P<repo_type>dataset|space)s/)?{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)$"), "resolve"),
        ("HEAD", re.compile(rf"^/(?:(?P<repo_type>dataset|space)s/)?{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)$"), "resolve"),
    ]

    # ------------------------------------------------------------------ plumbing

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        self.body = self._read_body()
        hub = self.hub
        with hub._lock:
            hub.requests.append((method, split.path))
        try:
            for route_method, pattern, name in self.ROUTES:
                match = pattern.match(split.path)
                if route_method == method and match:
                    params = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                    if "repo_type" in match.re.groupindex:
                        params.setdefault("repo_type", "model")
                    with hub._lock:
                        getattr(self, f"handle_{name}")(**params)
                    return
            with hub._lock:
                hub.unhandled_requests.append((method, split.path))
            logger.warning("FakeHub has no route for %s %s", method, split.path)
            raise HubError(404, f"The fake Hub does not implement {method} {split.path}.")
        except HubError as error:
            self._send_error(error)
        except Exception as error:  # A FakeHub bug or a malformed request gets a 500 response, not a dropped connection.
            logger.exception("FakeHub failed on %s %s", method, split.path)
            self._send_error(HubError(500, f"FakeHub failed: {error!r}"))

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Request body is not valid JSON: {error}") from error

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _send_error(self, error: HubError) -> None:
        logger.info("FakeHub %s %s -> %d %s", self.command, self.path, error.status, error.message)
        headers = {"X-Error-Message": error.message}
        if error.error_code:
            headers["X-Error-Code"] = error.error_code
        if error.repo_commit:
            headers["X-Repo-Commit"] = error.repo_commit
        self._send_json(error.status, {"error": error.message}, headers)

    def _authorization(self) -> str | None:
        return self.headers.get("Authorization")

    # ------------------------------------------------------------------ repos

    def handle_create_repo(self) -> None:
        hub = self.hub
        user = hub._require_user(self._authorization())
        payload = self._json_body() or {}
        name = payload.get("name")
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
            raise HubError(400, f"Invalid repo name {name!r}.")
        namespace = payload.get("organization") or user
        if namespace != user and namespace not in hub.organizations:
            raise HubError(403, f"You don't have the rights to create a repo in {namespace}.")
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{name}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{hub.url}/{prefix}{repo_id}"
        key = f"{repo_type}s/{repo_id}"
        if key in hub.repos:
            self._send_json(409, {"error": "You already created this model repo", "url": url}, {"X-Error-Message": "You already created this model repo"})
            return
        repo = FakeRepo(repo_type=repo_type, repo_id=repo_id, private=payload.get("visibility") == "private", created_at=_now())
        hub.repos[key] = repo
        hub._new_commit(repo, "main", "initial commit", "", {".gitattributes": StoredFile(DEFAULT_GITATTRIBUTES.encode(), lfs=False)})
        self._send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def handle_create_branch(self, repo_type: str, repo: str, branch: str) -> None:
        stored = self.hub._repo_for_write(repo_type, repo, self._authorization())
        if branch in stored.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        starting_point = (self._json_body() or {}).get("startingPoint") or "main"
        commit = stored.resolve(starting_point)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {starting_point}", "RevisionNotFound")
        stored.branches[branch] = commit.oid
        self._send_json(200, {})

    def handle_validate_yaml(self) -> None:
        payload = self._json_body() or {}
        content = payload.get("content", "")
        match = re.match(r"^\s*---\r?\n([\s\S]*?)\r?\n---[ \t]*(\r?\n|$)", content)
        if match is None:
            self._send_json(200, {"warnings": [{"message": "Empty or missing yaml metadata in repo card"}]})
            return
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as error:
            self._send_json(400, {"errors": [{"message": f"Invalid YAML: {error}"}]})
            return
        if metadata is not None and not isinstance(metadata, dict):
            self._send_json(400, {"errors": [{"message": "YAML metadata must be a mapping"}]})
            return
        self._send_json(200, {"errors": [], "warnings": []})

    def handle_repo_info(self, repo_type: str, repo: str, revision: str = "main") -> None:
        stored = self.hub._repo_for_read(repo_type, repo, self._authorization())
        commit = stored.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        card_data = _card_metadata(commit.files.get("README.md"))
        info = {
            "_id": hashlib.sha1(stored.repo_id.encode()).hexdigest()[:24],
            "id": stored.repo_id,
            "author": stored.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": stored.created_at,
            "private": stored.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card_data.get("tags") or []),
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }
        if card_data:
            info["cardData"] = card_data
            for key in ("pipeline_tag", "library_name"):
                if key in card_data:
                    info[key] = card_data[key]
        self._send_json(200, info)

    def handle_tree(self, repo_type: str, repo: str, revision: str, path: str = "") -> None:
        stored = self.hub._repo_for_read(repo_type, repo, self._authorization())
        commit = stored.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(name.startswith(prefix) for name in commit.files):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound", repo_commit=commit.oid)

        entries: dict[str, dict[str, Any]] = {}
        for name in sorted(commit.files):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            # Folders on the way to the file. A non-recursive listing shows only the first.
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                entries[name] = _tree_file_entry(name, commit.files[name])
        self._send_json(200, list(entries.values()))

    def handle_xet_token(self, repo_type: str, repo: str) -> None:
        raise HubError(501, "The fake Hub does not implement Xet storage; set HF_HUB_DISABLE_XET=1 to upload through Git LFS.")

    # ------------------------------------------------------------------ uploads

    def handle_preupload(self, repo_type: str, repo: str, revision: str) -> None:
        hub = self.hub
        stored = hub._repo_for_write(repo_type, repo, self._authorization())
        if self.query.get("create_pr"):
            raise HubError(400, "The fake Hub does not implement pull requests.")
        commit = stored.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        files = []
        for item in (self._json_body() or {}).get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            mode = hub._upload_mode_for(item["path"], int(item["size"]), sample)
            entry: dict[str, Any] = {"path": item["path"], "uploadMode": mode, "shouldIgnore": False}
            existing = commit.files.get(item["path"])
            if existing is not None:
                # The client compares this with its own oid to skip unchanged files.
                entry["oid"] = existing.sha256 if mode == "lfs" else git_blob_sha1(existing.content)
            files.append(entry)
        self._send_json(200, {"files": files, "commitOid": commit.oid})

    def handle_lfs_batch(self, repo_type: str, repo: str) -> None:
        hub = self.hub
        stored = hub._repo_for_write(repo_type, repo, self._authorization())
        payload = self._json_body() or {}
        if payload.get("operation") != "upload":
            raise HubError(400, "The fake Hub implements only LFS uploads; download files through /resolve.")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, f"The fake Hub supports only the 'basic' LFS transfer, not {payload.get('transfers')}.")
        objects = []
        for item in payload.get("objects", []):
            oid, size = item["oid"], int(item["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in stored.lfs_objects:
                signature = secrets.token_hex(16)
                hub._upload_signatures[signature] = (f"{stored.repo_type}s/{stored.repo_id}", oid)
                entry["actions"] = {
                    "upload": {"href": f"{hub.url}/_lfs/upload/{signature}", "expires_in": 3600},
                    "verify": {"href": f"{hub.url}/_lfs/verify/{signature}"},
                }
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(), content_type="application/vnd.git-lfs+json")

    def handle_lfs_upload(self, signature: str) -> None:
        hub = self.hub
        if signature not in hub._upload_signatures:
            raise HubError(403, "Invalid or expired upload signature.")
        repo_key, oid = hub._upload_signatures[signature]
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match sha256 {oid}.")
        hub.repos[repo_key].lfs_objects[oid] = self.body
        self._send(200, b"", {"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'}, content_type="text/plain")

    def handle_lfs_verify(self, signature: str) -> None:
        hub = self.hub
        hub._require_user(self._authorization())
        if signature not in hub._upload_signatures:
            raise HubError(403, "Invalid or expired upload signature.")
        repo_key, oid = hub._upload_signatures.pop(signature)
        payload = self._json_body() or {}
        content = hub.repos[repo_key].lfs_objects.get(oid)
        if payload.get("oid") != oid or content is None or len(content) != payload.get("size"):
            raise HubError(400, f"LFS object {oid} was not uploaded completely.")
        self._send_json(200, {"success": True})

    def handle_commit(self, repo_type: str, repo: str, revision: str) -> None:
        hub = self.hub
        stored = hub._repo_for_write(repo_type, repo, self._authorization())
        if self.query.get("create_pr"):
            raise HubError(400, "The fake Hub does not implement pull requests.")
        if revision not in stored.branches:
            raise HubError(404, f"Invalid rev id: {revision}. Commits go to an existing branch.", "RevisionNotFound")
        head = stored.resolve(revision)
        assert head is not None
        lines = [json.loads(line) for line in self.body.decode("utf-8").splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line of a commit must be the header.")
        header = lines[0]["value"]
        parent_commit = header.get("parentCommit")
        if parent_commit is not None and parent_commit != head.oid:
            raise HubError(412, f"Parent commit {parent_commit} is not the head of {revision} ({head.oid}).")

        files = dict(head.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}.")
                files[path] = StoredFile(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                content = stored.lfs_objects.get(value["oid"])
                if content is None:
                    raise HubError(422, f"LFS object {value['oid']} for {path} was never uploaded.")
                files[path] = StoredFile(content, lfs=True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                folder = path.rstrip("/") + "/"
                files = {name: item for name, item in files.items() if not name.startswith(folder)}
            else:
                raise HubError(400, f"Unknown commit operation {key!r}.")

        commit = hub._new_commit(stored, revision, header.get("summary") or "", header.get("description") or "", files)
        prefix = "" if stored.repo_type == "model" else f"{stored.repo_type}s/"
        self._send_json(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{hub.url}/{prefix}{stored.repo_id}/commit/{commit.oid}",
                "pullRequestUrl": None,
            },
        )

    # ------------------------------------------------------------------ downloads

    def handle_resolve(self, repo_type: str, repo: str, revision: str, path: str) -> None:
        stored = self.hub._repo_for_read(repo_type, repo, self._authorization())
        commit = stored.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        item = commit.files.get(path)
        if item is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", repo_commit=commit.oid)
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "none"}
        if item.lfs:
            headers["X-Linked-Etag"] = f'"{item.sha256}"'
            headers["X-Linked-Size"] = str(len(item.content))
            headers["ETag"] = f'"{item.sha256}"'
        else:
            headers["ETag"] = f'"{git_blob_sha1(item.content)}"'
        self._send(200, item.content, headers, content_type="application/octet-stream")


def _tree_file_entry(path: str, item: StoredFile) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": item.git_oid, "size": len(item.content), "path": path}
    if item.lfs:
        pointer = lfs_pointer(item.sha256, len(item.content))
        entry["lfs"] = {"oid": item.sha256, "size": len(item.content), "pointerSize": len(pointer)}
    return entry


def _card_metadata(readme: StoredFile | None) -> dict[str, Any]:
    if readme is None:
        return {}
    match = re.match(r"^\s*---\r?\n([\s\S]*?)\r?\n---[ \t]*(\r?\n|$)", readme.content.decode("utf-8", errors="replace"))
    if match is None:
        return {}
    try:
        metadata = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return metadata if isinstance(metadata, dict) else {}


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    """Run a :class:`FakeHub` and point huggingface_hub at it for one test.

    huggingface_hub 2.4 reads ``HF_ENDPOINT`` and the other settings once, at import, into
    ``huggingface_hub.constants``, so the fixture patches those constants as well as the
    environment. ``HUGGINGFACE_CO_URL_TEMPLATE`` must follow ``ENDPOINT``: ``hf_hub_url``
    builds download URLs from it. The download cache goes to a temporary directory, telemetry
    is off (it would fetch the agent registry) and Xet is off because FakeHub cannot store Xet
    uploads. A test may set ``constants.HF_HUB_DISABLE_XET`` back to False with monkeypatch
    when every file is uploaded in regular mode (``fake_hub.upload_mode = "regular"``).
    """
    from huggingface_hub import constants

    hub = FakeHub().start()
    cache_dir = tmp_path_factory.mktemp("hf_hub_cache")
    for name in ("HF_OIDC_RESOURCE", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    environment = {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": hub.token,
        "HF_HUB_CACHE": str(cache_dir),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    try:
        yield hub
    finally:
        hub.stop()
