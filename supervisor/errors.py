"""Error types that cross module boundaries.

The CLI turns an :class:`InputError` into one line on stderr and exit code 2, so every
message here must say *what* is wrong and *where* (a file, a key, a plugin name) without a
traceback. Anything else escaping to the CLI is a bug in supervisor.
"""

from __future__ import annotations


class SupervisorError(Exception):
    """Base class for errors supervisor expects and reports cleanly."""


class InputError(SupervisorError):
    """Bad input from the user or their environment: config, plugins, files, hosts.

    Reported as ``error: <message>`` with exit code 2; nothing existing is changed.
    """


class ConfigError(InputError):
    """A settings file or ``SUPERVISOR_*`` variable that cannot be used."""


class StoreError(InputError):
    """The database file cannot be opened or is not a supervisor database."""
