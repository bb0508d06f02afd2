"""pmnist.download against broken and hostile mirrors: a gzip bomb, an endless stream, a
server that drips bytes or goes silent, corrupt, truncated, wrong or missing files, a refused scheme.
Each fails with one line per mirror naming the file, within its caps of memory and time, and writes
nothing; the real offline mirror verifies by directory, file:// URL and http. Offline: the servers
are threads on 127.0.0.1. Peak memory is measured in a fresh interpreter by /proc's VmHWM (not
ru_maxrss: Linux carries that over exec from the parent, here pytest with torch at ~700 MB)."""
import contextlib
import gzip
import hashlib
import http.server
import importlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
import yaml

from pmnist.download import CHUNK, MNIST_FILES, MNIST_SIZES, download_mnist, fetch_file
from pmnist.errors import DownloadError

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("MNIST_MIRROR") or ROOT.parent / "shared" / "mnist")
MD5 = yaml.safe_load((ROOT / "params.yaml").read_text())["download"]["md5"]
MB = 1 << 20
LABELS = "t10k-labels-idx1-ubyte"  # fetched last: the three before it verify, and still nothing is written


def mirror(path, **files):
    """A directory mirror at `path`: links to the offline mirror, except files[name] = its .gz bytes,
    or None for no such file."""
    path.mkdir(parents=True)
    for name in MNIST_FILES:
        if name not in files:
            (path / f"{name}.gz").symlink_to(MIRROR / f"{name}.gz")
        elif files[name] is not None:
            (path / f"{name}.gz").write_bytes(files[name])
    return path


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET .../<name>: routes[name]() yields the body (HTTP/1.0: it ends when the server closes);
    a str route is a redirect to it. Stops at server.limit bytes, so a client that never stops
    reading ends anyway (and the test fails instead of hanging)."""

    def do_GET(self):
        route = self.server.routes.get(self.path.rsplit("/", 1)[-1])
        if route is None:
            return self.send_error(404)
        if isinstance(route, str):
            self.send_response(302)
            self.send_header("Location", route)
            return self.end_headers()
        self.send_response(200)
        self.end_headers()
        try:
            for chunk in route():
                self.wfile.write(chunk)
                self.server.sent += len(chunk)
                if self.server.sent > self.server.limit:
                    break
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: what we want
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(**routes) -> (server, mirror URL): an HTTP mirror on 127.0.0.1 in a thread."""
    servers = []

    def start(**routes):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.routes, server.sent, server.limit = routes, 0, 256 * MB
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_port}/mnist/"
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def failure(mirrors, tmp_path, **kw):
    """The DownloadError message of download_mnist into tmp_path/out (which holds one older file),
    having checked that the older file is untouched and nothing else was written."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "old").write_text("earlier")
    with pytest.raises(DownloadError) as e:
        download_mnist(out, mirrors, MD5, **kw)
    assert [p.name for p in out.iterdir()] == ["old"] and (out / "old").read_text() == "earlier"
    return str(e.value)


PEAK = r"""
import json, sys
from pmnist.download import download_mnist
from pmnist.errors import DownloadError

def peak():  # the high-water mark of this process's resident memory, in bytes
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
before, error = peak(), None
try:
    download_mnist(sys.argv[1], [sys.argv[2]], json.loads(sys.argv[3]))
except DownloadError as e:
    error = str(e)
print(json.dumps({"before": before, "peak": peak(), "error": error, "torch": "torch" in sys.modules}))
"""


def download_in_fresh_python(dest, mirror_):
    """download_mnist in a new interpreter: its peak RSS before and after, and its error if any."""
    p = subprocess.run([sys.executable, "-c", PEAK, str(dest), str(mirror_), json.dumps(MD5)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    print(f"{mirror_}: peak RSS {result['peak'] / MB:.0f} MiB ({(result['peak'] - result['before']) / MB:.0f} "
          f"MiB above the interpreter with pmnist.download imported)")
    assert not result["torch"]  # the download needs no torch (it alone costs ~700 MB of RSS)
    return result


@pytest.fixture(scope="module")
def bomb():
    """2.3 MB of gzip that inflates to 500 MB of zeros: the old code held all of it (1 GB of RSS)."""
    packer, zeros = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS), bytes(MB)
    packed = b"".join([*(packer.compress(zeros) for _ in range(500)), packer.flush()])
    assert len(packed) < 3 * MB
    return packed


def test_gzip_bomb_is_rejected_with_bounded_memory(tmp_path, bomb):
    name, size = "train-images-idx3-ubyte", MNIST_SIZES["train-images-idx3-ubyte"]  # cap: 47 MB
    result = download_in_fresh_python(tmp_path / "out", mirror(tmp_path / "bomb", **{name: bomb}))
    assert result["error"] == (f"could not get a verified copy of {name}; tried:\n  {tmp_path / 'bomb'}: "
                               f"{name}.gz inflates to more than {size} bytes, the size of {name}; stopped reading")
    assert result["peak"] - result["before"] < size + 8 * MB  # the cap, plus a chunk and zlib's state
    assert result["peak"] < 300 * MB
    assert not (tmp_path / "out").exists()


def endless_name():
    """A gzip header whose file name never ends: bytes forever, none of them inflated."""
    yield b"\x1f\x8b\x08\x08" + bytes(6)  # magic, deflate, FNAME flag, mtime, xfl, os
    while True:
        yield b"n" * CHUNK


def endless_stored():
    """Stored (level-0) deflate blocks forever: every byte inflates."""
    packer = zlib.compressobj(0, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    while True:
        yield packer.compress(bytes(CHUNK)) + packer.flush(zlib.Z_SYNC_FLUSH)


@pytest.mark.parametrize("body, reason", [
    (endless_name, f"{LABELS}.gz is more than {2 * MNIST_SIZES[LABELS] + CHUNK} bytes compressed, far more "
                   f"than any valid copy; stopped reading"),
    (endless_stored, f"{LABELS}.gz inflates to more than {MNIST_SIZES[LABELS]} bytes, the size of {LABELS}; "
                     f"stopped reading"),
], ids=["never-inflates", "inflates"])
def test_endless_stream_is_cut_off_at_the_cap(serve, tmp_path, body, reason):
    server, url = serve(**{f"{LABELS}.gz": body})
    start = time.monotonic()
    with pytest.raises(DownloadError) as e:
        fetch_file(LABELS, MD5[LABELS], [url])
    assert str(e.value) == f"could not get a verified copy of {LABELS}; tried:\n  {url}: {reason}"
    assert time.monotonic() - start < 5
    # the client stopped; what the server got out is the cap plus what the kernel buffered (<= 36 MB),
    # not the 256 MB the old code read before the server gave up
    assert server.sent < 128 * MB


@pytest.mark.parametrize("interval", [0.5, None], ids=["drip", "silent"])
def test_slow_or_silent_server_fails_within_the_deadline(serve, interval):
    """One byte every 0.5 s (each read is quick; only a total deadline stops it), or headers and
    then silence. Either lasts 10 s: the old code's per-read 30 s timeout waited it out."""
    start_of_gzip = (MIRROR / f"{LABELS}.gz").read_bytes()[:20]  # valid so far: only time can stop it

    def body():
        if interval is None:
            time.sleep(10)
        for byte in start_of_gzip:
            time.sleep(interval or 0)
            yield bytes([byte])
    _, url = serve(**{f"{LABELS}.gz": body})
    start = time.monotonic()
    with pytest.raises(DownloadError) as e:
        fetch_file(LABELS, MD5[LABELS], [url], deadline_s=2)
    elapsed = time.monotonic() - start
    assert str(e.value) == (f"could not get a verified copy of {LABELS}; tried:\n  {url}: {LABELS}.gz took "
                            f"more than 2 s (the deadline per file); stopped reading")
    assert 1.9 < elapsed < 3.5, elapsed


def test_server_dripping_its_headers_fails_within_the_deadline():
    """A status line, then one header byte every 0.5 s for 10 s: http.client reads the headers in one
    call, so only the whole-fetch timer (SIGALRM, main thread) can stop it on time."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def drip():
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\n")
            with contextlib.suppress(OSError):
                for _ in range(20):
                    conn.sendall(b"X")
                    time.sleep(0.5)
    threading.Thread(target=drip, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/"
    start = time.monotonic()
    with pytest.raises(DownloadError, match=rf"{LABELS}\.gz took more than 2 s \(the deadline per file\)"):
        fetch_file(LABELS, MD5[LABELS], [url], deadline_s=2)
    elapsed = time.monotonic() - start
    server.close()
    assert elapsed < 3.5, elapsed


SECRET = b"<html>captive portal SECRET-PAYLOAD</html>"
HEADER_CHECK = r"\(Error -3 while decompressing data: incorrect header check\)"  # zlib's words, none of the file's


def broken_labels():
    raw = bytearray(gzip.decompress((MIRROR / f"{LABELS}.gz").read_bytes()))
    raw[100:104] = b"SECR"  # wrong content, right size
    packed = (MIRROR / f"{LABELS}.gz").read_bytes()
    return {
        "not-gzip": (SECRET, rf"{LABELS}.gz is truncated or not valid gzip {HEADER_CHECK}"),
        "truncated": (packed[: len(packed) // 2], rf"{LABELS}.gz is truncated or not valid gzip \(the stream "
                                                   r"ends before the gzip trailer\)"),
        "trailing-junk": (packed + SECRET, rf"{LABELS}.gz is truncated or not valid gzip {HEADER_CHECK}"),
        "md5": (gzip.compress(bytes(raw)), rf"MD5 mismatch for {LABELS}: expected {MD5[LABELS]}, got "
                                           rf"{hashlib.md5(raw).hexdigest()}"),
        "missing": (None, rf"cannot read {LABELS}.gz \(\[Errno 2\] No such file or directory: .*\)"),
    }


@pytest.mark.parametrize("case", ["not-gzip", "truncated", "trailing-junk", "md5", "missing"])
def test_bad_file_is_one_clear_line_and_nothing_is_written(tmp_path, case):
    packed, reason = broken_labels()[case]
    where = mirror(tmp_path / "m", **{LABELS: packed})
    msg = failure([str(where)], tmp_path)
    assert re.fullmatch(rf"could not get a verified copy of {LABELS}; tried:\n  {re.escape(str(where))}: {reason}",
                        msg), msg
    assert "SECRET" not in msg and "SECR" not in msg  # never the payload


def test_each_mirror_tried_is_one_line_and_a_later_one_can_succeed(tmp_path):
    bad = str(mirror(tmp_path / "bad", **{LABELS: SECRET}))
    missing = str(tmp_path / "none")
    msg = failure([bad, missing], tmp_path)
    assert msg.splitlines()[1:] == [
        f"  {bad}: {LABELS}.gz is truncated or not valid gzip (Error -3 while decompressing data: incorrect "
        f"header check)",
        f"  {missing}: cannot read {LABELS}.gz ([Errno 2] No such file or directory: "
        f"'{missing}/{LABELS}.gz')"]
    assert hashlib.md5(fetch_file(LABELS, MD5[LABELS], [bad, str(MIRROR)])).hexdigest() == MD5[LABELS]


def test_disallowed_scheme_is_refused_before_any_read(serve, tmp_path):
    for url in ("ftp://127.0.0.1/mnist/", "javascript:alert(1)"):
        assert failure([str(MIRROR), url], tmp_path) == (
            f"mirror {url!r}: URL scheme '{url.split(':')[0]}' is not allowed; use a directory or an http, "
            f"https, file URL")
    # nor can a server redirect there
    _, url = serve(**{f"{LABELS}.gz": "ftp://127.0.0.1/mnist/t10k-labels-idx1-ubyte.gz"})
    with pytest.raises(DownloadError, match=rf"{url}: cannot read {LABELS}.gz \(unknown url type: ftp\)$"):
        fetch_file(LABELS, MD5[LABELS], [url])


@pytest.mark.parametrize("kind", ["directory", "file-url", "http"])
def test_real_mirror_verifies_all_four_files(serve, tmp_path, kind):
    if kind == "http":
        _, where = serve(**{f"{n}.gz": (lambda p=MIRROR / f"{n}.gz": [p.read_bytes()]) for n in MNIST_FILES})
    else:
        where = MIRROR.resolve().as_uri() if kind == "file-url" else MIRROR
    result = download_in_fresh_python(tmp_path / "out", where)
    assert result["error"] is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(MNIST_FILES)
    for name in MNIST_FILES:
        assert (tmp_path / "out" / name).stat().st_size == MNIST_SIZES[name]
        assert hashlib.md5((tmp_path / "out" / name).read_bytes()).hexdigest() == MD5[name]
    assert result["peak"] < 300 * MB


def test_stage_makes_directory_mirrors_absolute(tmp_path, monkeypatch):
    stage = importlib.import_module("stages.download")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNIST_MIRROR", "mirrors/mnist")
    assert stage.mirrors(["https://example.org/mnist/", "more/mnist", "file:///srv/mnist"]) == [
        str(tmp_path / "mirrors" / "mnist"), "https://example.org/mnist/", str(tmp_path / "more" / "mnist"),
        "file:///srv/mnist"]
    monkeypatch.setenv("MNIST_MIRROR", "ftp://127.0.0.1/mnist/")
    with pytest.raises(DownloadError, match="URL scheme 'ftp' is not allowed"):
        stage.mirrors([])


STAGE = r"""
import atexit, runpy, sys

def peak():  # written at exit, after the stage's own sys.exit
    hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    open("peak.kib", "w").write(hwm)
atexit.register(peak)
runpy.run_module("stages.download", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("case", ["real", "bomb"])
def test_stage_with_a_relative_mirror_stays_under_300_mb(tmp_path, bomb, case):
    """`python -m stages.download` as dvc runs it, in tmp_path with MNIST_MIRROR=mirror (relative):
    whole process, imports included, under 300 MB; a relative mirror is named in full."""
    mirror(tmp_path / "mirror", **({"train-images-idx3-ubyte": bomb} if case == "bomb" else {}))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"]["mirrors"] = []  # offline: only MNIST_MIRROR
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "MNIST_MIRROR": "mirror", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", STAGE], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    peak = int((tmp_path / "peak.kib").read_text()) * 1024
    print(f"stage, {case} mirror: peak RSS {peak / MB:.0f} MiB")
    where = tmp_path / "mirror"
    if case == "real":
        assert (p.returncode, p.stderr) == (0, "")
        assert p.stdout == f"data/mnist: 4 IDX files verified (mirrors tried in order: {where})\n"
        assert sorted(os.listdir(tmp_path / "data" / "mnist")) == sorted(MNIST_FILES)
    else:
        assert p.returncode == 1 and p.stdout == ""
        assert p.stderr == ("error: could not get a verified copy of train-images-idx3-ubyte; tried:\n  "
                            f"{where}: train-images-idx3-ubyte.gz inflates to more than 47040016 bytes, the "
                            f"size of train-images-idx3-ubyte; stopped reading\n")
        assert not (tmp_path / "data").exists()
    assert peak < 300 * MB
