"""Exceptions that the CLI turns into one-line messages and exit codes.

``InputError`` is a user mistake (bad config, bad data, bad path): exit code 2.
``FitError`` is a fit that could not produce trustworthy numbers: exit code 1.
Both carry a message that names the problem and the fix, so the CLI never shows a traceback.
"""


class ViregError(Exception):
    """Base class of every error vireg reports to a user."""

    exit_code = 1


class InputError(ViregError):
    """The config, data or command line is wrong; the message says how to fix it."""

    exit_code = 2


class FitError(ViregError):
    """The optimisation failed (e.g. diverged to NaN) and no results were written."""

    exit_code = 1
