"""The one error base class. A stage that raises a PmnistError (or an OSError) ends in one `error:` line
(pmnist.cli); anything else is a bug and keeps its traceback. Torch-free, so every stage can import it."""


class PmnistError(Exception):
    """A problem the user can fix; the message names the key or file and what to do."""


class ConfigError(PmnistError, ValueError):
    """A bad params.yaml: the message names the key, the bad value and what would be valid."""


class DataError(PmnistError, ValueError):
    """An input file (data/, results/) that is missing, corrupt or of the wrong shape."""


class DownloadError(PmnistError, RuntimeError):
    """No mirror gave a verified copy of an MNIST file."""


class DivergenceError(PmnistError, RuntimeError):
    """A run's loss became non-finite."""


class SelectionError(PmnistError, ValueError):
    """tuning/select.py cannot choose from the experiment table it was given."""
