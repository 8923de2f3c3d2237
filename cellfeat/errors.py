"""The errors that mean a user's mistake, not a bug: each message says what was wrong and the fix.

``cellfeat`` commands print these as one line and exit with status 2; any other exception is a
bug (or a machine's fault) and shows its traceback with status 1 (:mod:`pipelines.cli`). They
derive from ``ValueError`` too, so code that caught ``ValueError`` before still catches them.

- :class:`InputError`: an input (image folder, LoadData CSV, metadata table, image file) that
  does not hold what was asked for.
- :class:`ConfigError`: a config (or an option) that cannot run: unknown keys, bad values.
- :class:`DataError`: tables that cannot be used as asked (no training wells, features that differ).
"""

from __future__ import annotations


class CellfeatError(ValueError):
    """A user's mistake; the message names the file, table or option and the fix."""


class InputError(CellfeatError):
    """An input that does not hold what was asked for."""


class ConfigError(CellfeatError):
    """A config or option that cannot run."""


class DataError(CellfeatError):
    """Tables that cannot be used as asked."""


class FileMissingError(InputError, FileNotFoundError):
    """A file or folder the user named (or that an input lists) does not exist."""
