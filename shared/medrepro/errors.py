"""Errors that the command line turns into one clear line and a non-zero exit.

Anything a user can cause (a missing file, a malformed record, a bad config key) raises a subclass
of `MedreproError` whose message says what is wrong, where, and what to do. Everything else is a bug
and keeps its traceback.
"""


class MedreproError(Exception):
    """A problem with the user's input rather than with the code."""


class ConfigError(MedreproError):
    """An unknown key, a wrong type or value, or an unreadable config file; `key` names the config key."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class DataError(MedreproError):
    """A missing, malformed or inconsistent dataset file or record."""


class CheckpointError(MedreproError):
    """A missing or corrupt checkpoint, or one that belongs to another run."""


class RunError(MedreproError):
    """A run directory in use by another process, or a run that did not complete."""


class OutOfSpaceError(MedreproError):
    """A write that filled its filesystem."""


class TrainingError(MedreproError):
    """A run that cannot go on, such as a diverged loss."""
