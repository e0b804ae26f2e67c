"""hwsim's one user-input error type.

:class:`HwsimError` is a problem with what the user gave (a file, a data set, an option, a
model hwsim cannot run) whose message names the file, node or field and what was expected.
The CLI prints it as one ``Error:`` line; any other exception is a bug in hwsim and keeps its
traceback. It subclasses ValueError, so ``except ValueError`` keeps catching it.
"""

from __future__ import annotations


class HwsimError(ValueError):
    """A user-input error (bad file, data, option or unsupported model), reported cleanly."""
