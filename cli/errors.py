"""The command line's one user-error type: raised by any check, caught once in ``cli/main.py``.

A ``UsageError`` is a mistake the person at the terminal can fix (a bad option, a missing file, a missing
install): it prints as one line, ``error: <what is wrong>; <what to do>``, and the command exits 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

#: The exit status of every user error (argparse's own usage errors use 2 as well).
USAGE_EXIT = 2

TRAIN_INSTALL_HINT = 'install it with: pip install -e ".[train]" (or: make install)'


class UsageError(Exception):
    """A user mistake; the message says what is wrong and what to do."""


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors in the same one-line form (``error: ...``, exit 2), not a usage dump."""

    def error(self, message: str) -> NoReturn:
        # argparse calls this for a missing/invalid argument; the usage block it would print is what
        # `--help` shows, so point there instead.
        raise UsageError(f"{self.prog}: {message} (see: {self.prog} --help)")
