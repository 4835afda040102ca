"""The exceptions evomerge raises on purpose.

Every user-facing error names what is wrong (argument, value) and how to fix it.
The CLI turns any EvomergeError into a one-line message and exit code 2.
"""


class EvomergeError(Exception):
    """Base class of every error evomerge raises deliberately."""


class ConfigError(EvomergeError, ValueError):
    """A recipe, search space, suite, experiment or CLI argument is invalid."""


class ModelLoadError(EvomergeError):
    """A checkpoint cannot be read (missing, corrupt, pickled, incompatible)."""


class CandidateError(EvomergeError):
    """A candidate failed to evaluate (NaN/inf, OOM, bad tensor): its trial is a FAIL."""


class StorageError(EvomergeError):
    """The run storage cannot be reached or holds something unexpected."""


class RunNotFoundError(EvomergeError):
    """A run directory or study does not exist."""


class WorkerStartError(EvomergeError):
    """A search worker could not start (its models, suite or device): the search cannot run."""
