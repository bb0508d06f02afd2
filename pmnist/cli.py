"""Every stage's entry point: a known error (bad params, bad mirror, divergence, an unwritable file)
or a stop signal ends in one line on stderr and a non-zero exit; anything else is a bug and keeps its
traceback. Outputs are written atomically (pmnist.io), so a stage that stops leaves none half-written."""
import signal
import sys

from pmnist.config import ConfigError
from pmnist.data import DownloadError
from pmnist.selection import SelectionError
from pmnist.train import DivergenceError

KNOWN_ERRORS = (ConfigError, DownloadError, DivergenceError, SelectionError, OSError)


class Stopped(BaseException):
    """SIGTERM, raised as an exception so atomic writes clean up their temp files on the way out."""


def _stop(signum, frame):
    raise Stopped(signum)


def run_stage(main, *args):
    signal.signal(signal.SIGTERM, _stop)
    try:
        main(*args)
    except KNOWN_ERRORS as e:
        sys.exit(f"error: {e}")
    except (KeyboardInterrupt, Stopped) as e:
        signum = e.args[0] if isinstance(e, Stopped) else signal.SIGINT
        print(f"error: stopped by {signal.Signals(signum).name} before the stage finished; no partial "
              f"file was left, and `dvc repro` reruns it", file=sys.stderr)
        sys.exit(128 + signum)
