"""The four MNIST IDX files from mirrors, bounded in memory and time whatever a mirror sends.

`download_mnist(dest, mirrors, md5)` guarantees:
- a mirror is a local directory or an http/https/file URL; anything else is refused before any read,
  and a server can redirect only to http/https;
- each .gz is read, inflated and MD5-hashed in chunks; reading stops as soon as the inflated bytes
  pass the file's known size (MNIST_SIZES) or the compressed bytes pass twice that (+64 KiB), so a
  gzip bomb or an endless stream costs at most one file's size plus a chunk (47 MB for the largest);
- each file from each mirror has a total deadline (`deadline_s`), checked between reads and given to
  the socket as each read's timeout, so a server that drips a byte at a time fails on time; and, in
  the main thread (as in the stage), a SIGALRM timer bounds the whole fetch, response headers
  included (http.client reads those in one call that no per-read timeout can cut short);
- nothing is written unless all four files verify (MD5 of the inflated bytes); each is then written
  atomically (pmnist.io), so dest holds the old files or verified ones, never a partial one;
- a failure is a pmnist.errors.DownloadError naming the file with one line per mirror tried and its
  reason; no byte of what a mirror sent is ever put in a message.
Standard library only (plus pmnist.io), so the download stage needs no torch.
"""
import contextlib
import hashlib
import http.client
import os
import signal
import threading
import time
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from pmnist.config import MNIST_FILES
from pmnist.errors import DownloadError
from pmnist.io import write_bytes

# Inflated sizes, fixed by the IDX format: 16-byte header + 60000 (10000) images of 28x28, or 8 + labels.
MNIST_SIZES = {"train-images-idx3-ubyte": 47040016, "train-labels-idx1-ubyte": 60008,
               "t10k-images-idx3-ubyte": 7840016, "t10k-labels-idx1-ubyte": 10008}
ALLOWED_SCHEMES = ("http", "https", "file")
DEADLINE_S = 120.0  # per file per mirror: the 9.9 MB train images at >= 85 KB/s
CHUNK = 1 << 16
_GZIP = 16 + zlib.MAX_WBITS  # zlib window bits that mean "expect a gzip header and trailer"

# urlopen's default opener also follows redirects to ftp://, which would bypass check_mirror and the
# socket deadline; this one knows only http, https and file.
_OPENER = urllib.request.OpenerDirector()
for _handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                 urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(), urllib.request.FileHandler(),
                 urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPRedirectHandler(),
                 urllib.request.HTTPErrorProcessor()):
    _OPENER.add_handler(_handler)


def _is_url(mirror: str) -> bool:
    return urllib.parse.urlparse(mirror).scheme in ALLOWED_SCHEMES


def check_mirror(mirror: str) -> str:
    """A mirror is a local directory or an http/https/file URL; refuse anything else up front."""
    scheme = urllib.parse.urlparse(mirror).scheme
    if scheme and len(scheme) > 1 and scheme not in ALLOWED_SCHEMES:  # len>1: not a Windows drive
        raise DownloadError(f"mirror {mirror!r}: URL scheme '{scheme}' is not allowed; use a directory "
                            f"or an {', '.join(ALLOWED_SCHEMES)} URL")
    return mirror


def resolve_mirror(mirror: str) -> str:
    """check_mirror, then a directory made absolute against the current directory (once, where the
    mirror is configured, so a later chdir cannot change it and messages name it in full)."""
    check_mirror(mirror)
    return mirror if _is_url(mirror) else os.path.abspath(mirror)


class _Failed(Exception):
    """Why one mirror gave no copy of a file: one line, and never any of the bytes it sent."""


def _reason(e: BaseException) -> str:
    # URLError keeps the cause in .reason; a server's status phrase could be long or multi-line
    text = " ".join(str(getattr(e, "reason", None) or e).split())
    return text if len(text) <= 200 else text[:200] + "..."


def _open(mirror: str, name: str, timeout: float):
    """(stream, socket or None) for mirror/name. The socket, where there is one, lets each read get
    only the time left; http.client keeps it nowhere public, hence fp.raw._sock."""
    if _is_url(mirror):
        response = _OPENER.open(mirror.rstrip("/") + "/" + name, timeout=timeout)
        return response, getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    return open(Path(mirror) / name, "rb"), None


class _Alarm(Exception):
    """The whole-fetch timer fired (raised from the SIGALRM handler, wherever the fetch was blocked)."""


@contextlib.contextmanager
def _whole_deadline(seconds: float):
    """Raise _Alarm in the main thread after `seconds`, however a read is blocked (PEP 475: a signal
    handler that raises ends the blocking call). Elsewhere (a thread) nothing: per-read limits only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise _Alarm()
    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _fetch(mirror: str, name: str, size: int, deadline_s: float):
    """_fetch_within under a whole-fetch timer a little past the per-read deadline (which, being
    checked between reads, gives the more precise message when it is the one that trips)."""
    try:
        with _whole_deadline(deadline_s + 0.5):
            return _fetch_within(mirror, name, size, deadline_s)
    except _Alarm:
        raise _Failed(f"{name}.gz took more than {deadline_s:g} s (the deadline per file); stopped reading") from None


def _fetch_within(mirror: str, name: str, size: int, deadline_s: float):
    """(inflated bytes, their MD5) of mirror/name.gz, or _Failed. Holds one buffer of `size` bytes
    and a chunk or two; gives up at the deadline."""
    deadline = time.monotonic() + deadline_s
    packed_cap = 2 * size + CHUNK  # gzip grows even random data by < 0.1%: 2x is generous to any real copy
    too_slow = _Failed(f"{name}.gz took more than {deadline_s:g} s (the deadline per file); stopped reading")
    try:
        stream, sock = _open(mirror, f"{name}.gz", deadline_s)
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError and HTTPError are OSErrors
        if isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
            raise too_slow from None  # silent for the whole deadline (urllib wraps a connect timeout)
        raise _Failed(f"cannot read {name}.gz ({_reason(e)})") from None
    # Allocated once: a growing bytearray is copied on realloc, briefly holding twice the size.
    raw, filled, md5, packed, gz = bytearray(size), 0, hashlib.md5(), 0, zlib.decompressobj(_GZIP)
    with stream:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise too_slow
            if sock is not None:
                sock.settimeout(left)
            try:
                data = stream.read1(CHUNK)  # read1: whatever has arrived, not wait for a full chunk
            except TimeoutError:
                raise too_slow from None
            except (OSError, ValueError, http.client.HTTPException) as e:
                raise _Failed(f"cannot read {name}.gz ({_reason(e)})") from None
            if not data:
                break
            packed += len(data)
            if packed > packed_cap:
                raise _Failed(f"{name}.gz is more than {packed_cap} bytes compressed, far more than any "
                              f"valid copy; stopped reading")
            while data:
                if gz.eof:  # gzip allows several members one after another
                    gz = zlib.decompressobj(_GZIP)
                try:  # max_length: one chunk at a time, never past size + 1, however dense the input
                    piece = gz.decompress(data, min(CHUNK, size + 1 - filled))
                except zlib.error as e:
                    raise _Failed(f"{name}.gz is truncated or not valid gzip ({e})") from None
                data = gz.unconsumed_tail or gz.unused_data
                if filled + len(piece) > size:
                    raise _Failed(f"{name}.gz inflates to more than {size} bytes, the size of {name}; "
                                  f"stopped reading")
                raw[filled:filled + len(piece)] = piece
                filled += len(piece)
                md5.update(piece)
    if not gz.eof:
        raise _Failed(f"{name}.gz is truncated or not valid gzip (the stream ends before the gzip trailer)")
    if filled < size:
        raise _Failed(f"{name}.gz inflates to {filled} bytes, not the {size} of {name}")
    return raw, md5.hexdigest()


def fetch_file(name: str, expected_md5: str, mirrors, *, deadline_s: float = DEADLINE_S) -> bytearray:
    """The inflated bytes of `name` from the first mirror whose copy has the expected MD5."""
    failures = []
    for mirror in mirrors:
        try:
            raw, actual = _fetch(mirror, name, MNIST_SIZES[name], deadline_s)
        except _Failed as e:
            failures.append(f"{mirror}: {e}")
            continue
        if actual == expected_md5:
            return raw
        del raw  # before the next mirror, so there is never more than one unverified copy in memory
        failures.append(f"{mirror}: MD5 mismatch for {name}: expected {expected_md5}, got {actual}")
    tried = "\n  ".join(failures) or "no mirror configured (download.mirrors is empty and MNIST_MIRROR unset)"
    raise DownloadError(f"could not get a verified copy of {name}; tried:\n  {tried}")


def download_mnist(dest, mirrors, md5: dict, *, deadline_s: float = DEADLINE_S):
    """Fetch and verify all four IDX files (about 55 MB held), then write them; nothing is written
    unless all four verify."""
    mirrors = [check_mirror(m) for m in mirrors]
    contents = {name: fetch_file(name, md5[name], mirrors, deadline_s=deadline_s) for name in MNIST_FILES}
    for name, raw in contents.items():
        write_bytes(Path(dest) / name, raw)
