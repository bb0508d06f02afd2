"""Every stage's entry point: a known error (pmnist.errors.PmnistError: bad params, bad input file,
bad mirror, divergence, a run over its pre-flight budget (pmnist/budget.py); or an OSError such as an
unwritable file) or a stop signal ends in one line on stderr and a non-zero exit; anything else is a
bug and keeps its traceback. Outputs are written atomically (pmnist.io) and DVC keeps them
(`persist: true` in dvc.yaml), so a stage that fails or is stopped leaves every earlier output as it was.

A stage dies with the process that runs it: when `dvc repro`, `dvc exp run` or a queue worker ends,
whatever the signal (SIGKILL included), the stage stops within about a second, the same way as on
SIGTERM (no partial file), and says why. Linux: prctl(PR_SET_PDEATHSIG, SIGHUP) for the direct
parent; everywhere: a watcher thread that checks twice a second that every ancestor up to the
outermost DVC process is still alive. DVC runs the command through $SHELL -c, or /bin/sh -c where
SHELL is unset: bash execs the command (DVC is the parent), dash stays as the parent and outlives DVC.
Torch-free: analysis stages start fast."""
import ctypes
import os
import signal
import sys
import threading
import time

from pmnist.errors import PmnistError

KNOWN_ERRORS = (PmnistError, OSError)
WATCH_INTERVAL_S = 0.5
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_orphaned = []  # why the watcher stopped the stage, once it did
_parent = []    # the parent's pid when the stage started
_ancestors = []  # watched_ancestors() when the stage started


class Stopped(BaseException):
    """A stop signal (SIGINT, SIGTERM, or SIGHUP: the parent-death signal), raised as an exception so atomic
    writes clean up their temp files on the way out."""


_received = []   # stop signals that came after the first (noted, not acted on)


def _note(signum, frame):
    _received.append(signum)


def _stop(signum, frame):
    # Once: a second signal (the parent-death SIGHUP and the watcher's SIGTERM both come; Ctrl-C twice) must
    # not interrupt the clean-up of temp files or the interpreter's exit. Noted rather than ignored: a
    # signal already pending when the handler becomes SIG_IGN makes Python raise "ignored due to race
    # condition" in the middle of the clean-up.
    for other in STOP_SIGNALS:
        signal.signal(other, _note)
    raise Stopped(signum, _orphaned[0] if _orphaned else None)  # why, as known when the signal came


def _proc_stat(pid):
    """(ppid, start time) of a running process from /proc, or None when it is gone (or there is no /proc).
    A zombie counts as gone: it has exited, and keeps its /proc entry only until its own parent reaps it
    (a test or a script that signals `dvc exp run` and reads its output before waiting on it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else (int(fields[1]), fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _is_dvc(cmdline):
    words = cmdline.split()[:3]
    return any(os.path.basename(w) == "dvc" or w.endswith("/dvc") for w in words) or " -m dvc" in cmdline


def describe(pid, cmdline):
    """`dvc repro train@cms` (pid 123): a process as a user typed it (no interpreter path), at most 80 characters."""
    words = cmdline.split()
    for i, word in enumerate(words[:3]):
        if os.path.basename(word) == "dvc":
            words = ["dvc", *words[i + 1:]]
            break
    text = " ".join(words) or "?"
    return f"`{text[:77] + '...' if len(text) > 80 else text}` (pid {pid})"


def watched_ancestors(pid=None):
    """[(pid, start time, description)]: the ancestors whose end stops the stage: every one up to the
    outermost DVC process (`dvc repro`, `dvc exp run`, a queue worker), or the parent alone when no DVC
    process runs this one (a direct call)."""
    chain, pid = [], os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    while stat and stat[0] > 1 and len(chain) < 16:
        pid = stat[0]
        stat = _proc_stat(pid)
        if stat is None:
            break
        chain.append((pid, stat[1], _cmdline(pid)))
    dvc = [i for i, (_, _, cmd) in enumerate(chain) if _is_dvc(cmd)]
    return chain[:dvc[-1] + 1] if dvc else chain[:1]


def _alive(pid, start):
    stat = _proc_stat(pid)
    return stat is not None and stat[1] == start


def _gone(parent):
    for pid, _, cmd in _ancestors:
        if pid == parent:
            return f"{describe(pid, cmd)} ended"
    return f"its parent process (pid {parent}) ended"


def _ended(parent, ancestors):
    """Why the stage is orphaned (its parent or a watched ancestor ended), or None."""
    if os.getppid() != parent:
        return _gone(parent)
    for pid, start, cmd in ancestors:
        if not _alive(pid, start):
            return f"{describe(pid, cmd)} ended"
    return None


def _wait_ended(seconds):
    """After SIGHUP: the parent's end, if it comes within `seconds` (its other threads may still be exiting)."""
    deadline = time.monotonic() + seconds
    while _parent:
        why = _ended(_parent[0], _ancestors)
        if why or time.monotonic() > deadline:
            return why
        time.sleep(0.05)
    return None


def _watch(parent, ancestors):
    while True:
        why = _ended(parent, ancestors)
        if why:
            _orphaned.append(why)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        threading.Event().wait(WATCH_INTERVAL_S)


def die_with_parent():
    """SIGHUP this process when its parent dies (Linux), and watch its DVC ancestors (see the docstring)."""
    if _parent:  # once per process (tests run several stages in one interpreter)
        return
    parent = os.getppid()
    _parent[:] = [parent]
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    ancestors = watched_ancestors() if os.path.isdir("/proc") else []
    _ancestors[:] = ancestors
    if parent == 1:  # orphaned before the watch began
        _orphaned.append("its parent process had already ended when it started")
        os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=_watch, args=(parent, ancestors), name="die-with-parent", daemon=True).start()


def _say(message):
    try:  # the parent's terminal or pipe may be gone with it
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def run_stage(main, *args):
    # SIGTERM and SIGHUP like SIGINT; and SIGINT re-armed, because shells start background jobs with it ignored.
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    try:
        die_with_parent()
        from pmnist.budget import preflight_for_stage, stage_name
        preflight_for_stage(stage_name(sys.argv[0]))
        main(*args)
    except KNOWN_ERRORS as e:
        sys.exit(f"error: {e}")
    except Stopped as e:
        signum = e.args[0]
        why = e.args[1] or (_wait_ended(1.0) if signum == signal.SIGHUP else None)
        direct = [n for n in _received if n in (signal.SIGINT, signal.SIGTERM)]
        if signum == signal.SIGHUP and direct:
            # The whole process group was signalled (Ctrl-C, kill -TERM -- -pgid): DVC ended of it too, and
            # Python ran the parent-death SIGHUP first (it handles pending signals lowest number first).
            signum, why = direct[0], None
        if why:
            _say(f"error: stopped because {why} (killed?) before the stage finished; earlier outputs are "
                 f"untouched and no partial file was left; `dvc repro` reruns it")
        else:
            _say(f"error: stopped by {signal.Signals(signum).name} before the stage finished; earlier outputs are "
                 f"untouched and no partial file was left; `dvc repro` reruns it")
        sys.exit(128 + signum)
