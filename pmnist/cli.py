"""Every stage's entry point: a known error (pmnist.errors.PmnistError: bad params, bad input file,
bad mirror, divergence; or an OSError such as an unwritable file) or a stop signal ends in one line on
stderr and a non-zero exit; anything else is a bug and keeps its traceback. Outputs are written
atomically (pmnist.io) and DVC keeps them (`persist: true` in dvc.yaml), so a stage that fails or is
stopped leaves every earlier output as it was. Torch-free: analysis stages start fast."""
import signal
import sys

from pmnist.errors import PmnistError

KNOWN_ERRORS = (PmnistError, OSError)


class Stopped(BaseException):
    """SIGINT or SIGTERM, raised as an exception so atomic writes clean up their temp files on the way out."""


def _stop(signum, frame):
    raise Stopped(signum)


def run_stage(main, *args):
    # SIGTERM like SIGINT; and SIGINT re-armed, because shells start background jobs with it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    try:
        main(*args)
    except KNOWN_ERRORS as e:
        sys.exit(f"error: {e}")
    except Stopped as e:
        signum = e.args[0]
        print(f"error: stopped by {signal.Signals(signum).name} before the stage finished; earlier outputs are "
              f"untouched and no partial file was left; `dvc repro` reruns it", file=sys.stderr)
        sys.exit(128 + signum)
