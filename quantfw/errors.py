"""The base classes of the errors quantfw raises for problems a user can fix.

Every error quantfw raises on purpose -- a bad model, option, file or data set, a missing plugin,
runtime or piece of hardware -- derives from :class:`QuantfwError` and says what is wrong and what
would fix it.  The command line turns these into one-line messages; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

__all__ = ["QuantfwError", "UnavailableError"]


class QuantfwError(Exception):
    """A problem with the user's input, options, files or installation (not a bug).

    :ivar show_cause: the ``__cause__`` is the user's own code failing (a calibration function):
        the command line prints its traceback under ``--verbose`` and says so otherwise.
    """

    show_cause = False

    def cli_message(self) -> str:
        """The message in command-line terms (``--calib``, ``--dynamic``) where it would name
        Python arguments; by default the message itself."""
        return str(self)


class UnavailableError(QuantfwError, RuntimeError):
    """Something the request needs is not installed or not present here: a plugin, a runtime,
    a conversion, a CPU feature or a GPU.  The message names it and how to get it."""
