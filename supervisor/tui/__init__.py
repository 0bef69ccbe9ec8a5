"""The Textual TUI: a client of the supervisor process (the only package importing textual).

``main()`` is what ``supervisor`` (no arguments) runs; the CLI imports this package only
when the TUI is opened, so the CLI's other commands never pay for textual.
"""

from __future__ import annotations

from pathlib import Path


def main(data_dir: Path | None = None) -> int:
    """Run the TUI until the person detaches (q); returns the exit code."""
    from supervisor.tui.app import SupervisorApp

    app = SupervisorApp(data_dir)
    code = app.run()
    return int(code or 0)
