"""`stepaudio download` against a small real hub on 127.0.0.1.

The server implements the HTTP API paths huggingface_hub uses: model info with file
metadata, HEAD/GET of /{repo}/resolve/{revision}/{file} with Range support, and the hub's
error headers (X-Error-Code: GatedRepo / RevisionNotFound).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepaudio_cli.checkpoint import make_config
from stepaudio_cli.cli import app
from stepaudio_cli.weight_files import safetensors_problem

REPO = "stepfun-ai/Step-Audio-R1"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _safetensors(n_floats: int) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + os.urandom(4 * n_floats)


FILES = {
    "config.json": json.dumps(make_config()).encode(),
    "README.md": b"# tiny fake repo\n",
    "model.safetensors": _safetensors(600_000),  # 2.4 MB, an LFS file
}
LFS = {"model.safetensors"}


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class Hub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode = "ok"  # ok | gated401 | gated403 | drop
    log: list[tuple[str, str, str | None]] = []
    dropped = 0
    files = FILES  # what the hub lists and serves
    token: str | None = None  # when set, every request must carry it (a gated repo, logged in)

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, code: int, code_name: str, message: str, head: bool = False) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(
            code,
            body,
            {"X-Error-Code": code_name, "X-Error-Message": message, "Content-Type": "application/json"},
            head,
        )

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        type(self).log.append((self.command, self.path, self.headers.get("Range")))
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(401, "GatedRepo", f"Access to model {REPO} is restricted.", head)
        if self.mode.startswith("gated"):
            code = int(self.mode[-3:])
            return self._error(
                code, "GatedRepo", f"Access to model {REPO} is restricted. You must be authenticated.", head
            )
        m = re.match(r"^/api/models/([^/]+/[^/?]+)(?:/revision/([^?]+))?", self.path)
        if m:
            if m.group(1) != REPO:
                return self._error(401, "RepoNotFound", "Repository not found", head)
            if m.group(2) not in (None, "main", COMMIT):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {m.group(2)}", head)
            siblings = [
                {"rfilename": n, "size": len(d), "blobId": _blob_id(d)}
                | (
                    {"lfs": {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 134}}
                    if n in LFS
                    else {}
                )
                for n, d in self.files.items()
            ]
            body = json.dumps(
                {"id": REPO, "modelId": REPO, "sha": COMMIT, "siblings": siblings, "gated": "manual"}
            ).encode()
            return self._send(200, body, {"Content-Type": "application/json"}, head)
        m = re.match(rf"^/{re.escape(REPO)}/resolve/([^/]+)/(.+)$", self.path)
        if not m or m.group(2) not in self.files:
            return self._error(404, "EntryNotFound", "not found", head)
        if m.group(1) not in ("main", COMMIT):
            return self._error(404, "RevisionNotFound", "Invalid rev id", head)
        name, data = m.group(2), self.files[m.group(2)]
        etag = hashlib.sha256(data).hexdigest() if name in LFS else _blob_id(data)
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if name in LFS:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        start = 0
        rng = self.headers.get("Range")
        if rng and not head:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
        if head:
            return self._send(200, data, headers, head=True)
        if self.mode == "drop" and name in LFS and start == 0:  # every fresh start dies halfway
            type(self).dropped += 1
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(206, data[start:], headers)
        return self._send(200, data, headers)


@pytest.fixture
def hub(http_servers):
    def start(mode: str = "ok", files: dict | None = None, token: str | None = None) -> tuple[str, type]:
        handler = type("H", (Hub,), {"mode": mode, "log": [], "dropped": 0, "files": files or FILES, "token": token})
        return http_servers(handler), handler

    return start


@pytest.fixture(autouse=True)
def online(monkeypatch, tmp_path):
    """Hub access allowed (to loopback only) and a private HF_HOME. huggingface_hub reads
    its environment once at import, so its constants are set too."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))


runner = CliRunner()


def dl(*args):
    return runner.invoke(app, ["download", *args])


def assert_files(root: Path) -> None:
    for name, data in FILES.items():
        assert (root / name).read_bytes() == data, name


def test_full_download_to_local_dir_then_check(hub, tmp_path):
    url, handler = hub()
    target = tmp_path / "model"
    result = dl(REPO, "--endpoint", url, "--local-dir", str(target))
    assert result.exit_code == 0, result.stderr
    assert_files(target)
    assert result.stdout.strip() == str(target)  # the path to pass as --model
    assert f"--model {target}" in result.stderr
    checked = dl(REPO, "--endpoint", url, "--local-dir", str(target), "--check")
    assert checked.exit_code == 0, checked.stderr
    assert "OK" in checked.stderr


def test_download_to_the_cache_resolves_offline_afterwards(hub, tmp_path, monkeypatch):
    url, _ = hub()
    result = dl(REPO, "--endpoint", url)
    assert result.exit_code == 0, result.stderr
    snapshot = Path(result.stdout.strip())
    assert snapshot.name == COMMIT and str(snapshot).startswith(str(tmp_path / "hf"))
    assert_files(snapshot)
    from stepaudio_cli.checkpoint import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model(REPO) == snapshot  # --model REPO works with no network


def test_dropped_connection_resumes_where_it_stopped(hub, tmp_path):
    """The server cuts every fresh download of the big file halfway; the download continues
    with a Range request for the rest instead of starting over."""
    url, handler = hub("drop")
    target = tmp_path / "model"
    result = dl(REPO, "--endpoint", url, "--local-dir", str(target))
    assert result.exit_code == 0, result.stderr
    assert handler.dropped == 1
    ranges = [r for method, path, r in handler.log if method == "GET" and path.endswith("model.safetensors") and r]
    (only,) = ranges  # one continuation, from what had arrived (whole blocks) before the cut
    assert 0 < int(only.removeprefix("bytes=").rstrip("-")) <= len(FILES["model.safetensors"]) // 2
    assert_files(target)
    assert not (target / ".stepaudio-partial").exists()


def test_a_later_run_resumes_a_partial_file(hub, tmp_path):
    url, handler = hub()
    target = tmp_path / "model"
    part = target / ".stepaudio-partial" / "model.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(FILES["model.safetensors"][:1000])  # what an interrupted run left
    result = dl(REPO, "--endpoint", url, "--local-dir", str(target))
    assert result.exit_code == 0, result.stderr
    ranges = [r for method, path, r in handler.log if method == "GET" and path.endswith("model.safetensors")]
    assert ranges == ["bytes=1000-"]
    assert_files(target)


@pytest.mark.parametrize("mode", ["gated401", "gated403"])
def test_gated_repo_says_what_to_do(hub, tmp_path, mode):
    url, _ = hub(mode)
    result = dl(REPO, "--endpoint", url, "--local-dir", str(tmp_path / "m"))
    assert result.exit_code == 1
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert "gated" in line and f"{url}/{REPO}" in line and "HF_TOKEN" in line
    assert "Traceback" not in result.stderr


def test_missing_revision(hub, tmp_path):
    url, _ = hub()
    result = dl(REPO, "--endpoint", url, "--revision", "v9", "--local-dir", str(tmp_path / "m"))
    assert result.exit_code == 1
    assert "no revision 'v9'" in result.stderr and "Traceback" not in result.stderr


def test_unknown_repo(hub, tmp_path):
    url, _ = hub()
    result = dl("someone/nothing", "--endpoint", url, "--local-dir", str(tmp_path / "m"))
    assert result.exit_code == 1 and "someone/nothing: not found" in result.stderr


def test_check_finds_corruption_and_missing_files(hub, tmp_path):
    url, _ = hub()
    target = tmp_path / "model"
    assert dl(REPO, "--endpoint", url, "--local-dir", str(target)).exit_code == 0
    blob = bytearray((target / "model.safetensors").read_bytes())
    blob[-10] ^= 0xFF  # same size, one flipped byte
    (target / "model.safetensors").write_bytes(bytes(blob))
    (target / "README.md").unlink()
    result = dl(REPO, "--endpoint", url, "--local-dir", str(target), "--check")
    assert result.exit_code == 1
    assert "model.safetensors: sha256 differs" in result.stderr
    assert "README.md: missing" in result.stderr
    assert "2 problem(s)" in result.stderr


def test_offline_check_spots_a_truncated_shard(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    for name, data in FILES.items():
        (target / name).write_bytes(data)
    ok = dl("--check", "--offline", "--local-dir", str(target))
    assert ok.exit_code == 0, ok.stderr
    (target / "model.safetensors").write_bytes(FILES["model.safetensors"][:-100])
    assert "incomplete download" in safetensors_problem(target / "model.safetensors")
    bad = dl("--check", "--offline", "--local-dir", str(target))
    assert bad.exit_code == 1 and "model.safetensors: size" in bad.stderr


def test_not_enough_disk_space_is_refused_up_front(hub, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    url, handler = hub()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 10**12 - 10**6, 10**6))
    result = dl(REPO, "--endpoint", url, "--local-dir", str(tmp_path / "m"))
    assert result.exit_code == 1 and "not enough disk space" in result.stderr
    assert not [p for m, p, _ in handler.log if "/resolve/" in p]  # nothing was fetched


@pytest.mark.parametrize(
    "name", ["../evil.txt", "sub/../../evil.txt", "/tmp/evil.txt", "..\\evil.txt", "C:evil.txt", "a//b.txt"]
)
def test_a_hub_path_outside_the_folder_is_refused(hub, tmp_path, name):
    url, handler = hub(files=FILES | {name: b"pwned"})
    target = tmp_path / "deep" / "model"
    result = dl(REPO, "--endpoint", url, "--local-dir", str(target))
    assert result.exit_code == 1, result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert "outside the model folder" in line and repr(name) in line
    assert not [p for m, p, _ in handler.log if "/resolve/" in p]  # refused before anything is fetched
    assert not list(tmp_path.rglob("evil.txt"))


def test_a_symlink_in_the_folder_cannot_lead_a_file_outside(hub, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "model"
    target.mkdir()
    (target / "sub").symlink_to(outside)
    url, _ = hub(files=FILES | {"sub/notes.txt": b"hello"})
    result = dl(REPO, "--endpoint", url, "--local-dir", str(target))
    assert result.exit_code == 1 and "resolves outside" in result.stderr, result.stderr
    assert not list(outside.iterdir())


def test_a_wrong_non_lfs_file_of_the_right_size_is_found_and_repaired(hub, tmp_path):
    url, _ = hub()
    target = tmp_path / "model"
    assert dl(REPO, "--endpoint", url, "--local-dir", str(target)).exit_code == 0
    readme = target / "README.md"
    readme.write_bytes(b"#" + FILES["README.md"][1:].upper())  # same size, other content
    checked = dl(REPO, "--endpoint", url, "--local-dir", str(target), "--check")
    assert checked.exit_code == 1 and "README.md: content differs" in checked.stderr
    rerun = dl(REPO, "--endpoint", url, "--local-dir", str(target))
    assert rerun.exit_code == 0, rerun.stderr
    assert readme.read_bytes() == FILES["README.md"]
    assert dl(REPO, "--endpoint", url, "--local-dir", str(target), "--check").exit_code == 0


def test_the_token_saved_by_hf_auth_login_is_sent_with_every_request(hub, tmp_path):
    from huggingface_hub import constants

    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text("hf_stored_token")  # what `hf auth login` leaves
    url, handler = hub(token="hf_stored_token")
    target = tmp_path / "model"
    result = dl(REPO, "--endpoint", url, "--local-dir", str(target))
    assert result.exit_code == 0, result.stderr
    assert_files(target)
    assert any("/resolve/" in p for m, p, _ in handler.log)


def test_hub_names_and_hashes_of_the_wrong_form_are_refused():
    from stepaudio_cli.download_files import remote_file, safe_name
    from stepaudio_cli.errors import UserError

    assert safe_name("a/b.safetensors") and safe_name("config.json")
    for bad in ("", ".", "a/./b", "a\x00b", 5, None, "D:/x"):
        assert not safe_name(bad)
    for kwargs in ({"size": -1}, {"size": "9"}, {"sha256": "../../x"}, {"blob_id": "ab/cd"}, {"size": True}):
        args = {"size": 1, "sha256": None, "blob_id": None} | kwargs
        with pytest.raises(UserError):
            remote_file(REPO, "a.txt", args["size"], args["sha256"], args["blob_id"])


# --- a hub that cannot be reached -------------------------------------------------------


@pytest.fixture
def closed_port() -> str:
    """The address of a loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_unreachable_hub_is_one_line_naming_its_address(closed_port, tmp_path):
    result = dl(REPO, "--endpoint", closed_port, "--local-dir", str(tmp_path / "m"))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: cannot reach the hub at {closed_port} (connection refused: nothing listens there); "
        "check the network, or name a mirror with --endpoint / HF_ENDPOINT"
    ]
    assert not (tmp_path / "m").exists()


def test_a_name_that_does_not_resolve_says_so(monkeypatch, tmp_path):
    """No network: the resolver fails (as it does offline) under huggingface_hub's own HTTP client,
    so the exception chain is the one a user gets; the default hub address is named."""
    import socket

    from huggingface_hub import constants

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    result = dl(REPO, "--local-dir", str(tmp_path / "m"))
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: cannot reach the hub at {constants.ENDPOINT} (its name does not resolve")
    assert "Errno" not in line


def test_what_counts_as_unreachable():
    import socket

    import httpx

    from stepaudio_cli.download import shown, unreachable

    def chained(outer: Exception, inner: BaseException) -> Exception:
        try:
            raise outer from inner
        except Exception as e:  # noqa: BLE001
            return e

    assert "does not resolve" in unreachable(chained(httpx.ConnectError("x"), socket.gaierror(-2, "no")))
    assert "timed out" in unreachable(chained(httpx.ConnectTimeout("x"), TimeoutError()))
    assert unreachable(httpx.HTTPStatusError("500", request=None, response=None)) is None
    assert unreachable(ValueError("bad json")) is None
    assert shown("https://user:secret@mirror.example/hf") == "https://***@mirror.example/hf"
    assert shown("https://huggingface.co") == "https://huggingface.co"


@pytest.mark.parametrize("where", ["local-dir", "cache"])
def test_check_without_the_hub_uses_the_list_recorded_at_download(hub, tmp_path, closed_port, where):
    url, _ = hub()
    target = tmp_path / "model"
    place = ["--local-dir", str(target)] if where == "local-dir" else []
    downloaded = dl(REPO, "--endpoint", url, *place)
    assert downloaded.exit_code == 0, downloaded.stderr
    folder = Path(downloaded.stdout.strip())
    ok = dl(REPO, "--endpoint", closed_port, "--check", *place)
    assert ok.exit_code == 0, ok.stderr
    warning, verdict = ok.stderr.splitlines()
    assert warning == (
        f"warning: cannot reach the hub at {closed_port} (connection refused: nothing listens there); "
        "checking what can be done offline"
    )
    assert verdict.endswith(f"OK (checked offline: 3 files against the list recorded at download of {COMMIT[:12]})")
    blob = bytearray((folder / "model.safetensors").read_bytes())
    blob[-10] ^= 0xFF  # same size, one flipped byte: only the recorded sha256 sees it
    (folder / "model.safetensors").unlink()  # (in the cache, a link to the blob)
    (folder / "model.safetensors").write_bytes(bytes(blob))
    for args in (["--endpoint", closed_port, "--check"], ["--check", "--offline"]):
        bad = dl(REPO, *args, *place)
        assert bad.exit_code == 1
        assert "model.safetensors: sha256 differs" in bad.stderr and "1 problem(s)" in bad.stderr


def test_a_damaged_recorded_list_is_one_line(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    for name, data in FILES.items():
        (target / name).write_bytes(data)
    manifest = target / ".stepaudio-manifest.json"
    entry = {"name": "../x", "size": 1, "sha256": None, "blob_id": None}
    for text in ("{", '{"files": [{"name": "a"}]}', json.dumps({"files": [entry]})):
        manifest.write_text(text)
        result = dl("--check", "--offline", "--local-dir", str(target))
        assert result.exit_code == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"error: {manifest}: not a file list stepaudio recorded (")
    assert "outside the model folder" in line
