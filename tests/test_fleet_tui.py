"""The TUI's hosts view (H) over a pool: each host's agents, GPU slots busy and free, and
which hosts are cordoned, while a `--hosts all` run's agents are live on real sshd hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sshd_kit
from agent_kit import scripted
from test_tui import SIZE, agents_of, loaded, shows, until
from textual.widgets import DataTable

from supervisor import hosts as h
from supervisor.testing import Reply
from supervisor.tui.app import SupervisorApp

pytestmark = pytest.mark.skipif(bool(sshd_kit.available()), reason=sshd_kit.available())


def ask(messages: list[dict[str, Any]]) -> Reply:
    """Every agent asks a person and waits: it stays live on its host while the view shows it."""
    if not any(m["role"] == "assistant" for m in messages):
        return Reply(tool_calls=[("ask_human", {"question": "which way?"})])
    return Reply(tool_calls=[("finish", {"summary": "ok"})])


def row(app: SupervisorApp, name: str) -> list[str]:
    table = app.screen.query_one("#hosts-table", DataTable)
    return [str(cell) for cell in table.get_row(name)]


async def test_hosts_view_shows_each_hosts_agents_gpu_slots_and_cordon(
    tmp_path: Path, home: Path
) -> None:
    with sshd_kit.sshd(tmp_path / "sshd", "one", "eight-mixed", "") as (srv, users):
        for name, u in zip(("solo", "big", "off"), users, strict=True):
            h.add_host(
                name,
                f"{u.name}@{srv.host}:{srv.port}",
                password=lambda u=u: u.password,  # type: ignore[misc]
                trust=srv.fingerprint(),
            )
        h.set_cordon("off", True)
        with scripted(ask):
            app = SupervisorApp()
            async with app.run_test(size=SIZE, notifications=True) as pilot:
                await loaded(pilot)
                assert app.client is not None
                started = await app.client.call("run.start", task="wait", hosts="all", agents=4)
                run_id = str(started["run_id"])
                await until(
                    pilot,
                    lambda: (
                        len(agents_of(app, run_id)) == 4
                        and all(a.status == "waiting" for a in agents_of(app, run_id))
                    ),
                    "four agents waiting on their hosts",
                    timeout=60,
                )
                names = {a.name for a in agents_of(app, run_id)}
                await pilot.press("H")
                await until(pilot, lambda: app.screen.query("#hosts"), "the hosts screen")
                await shows(pilot, app, "cordoned")
                solo, big, off = row(app, "solo"), row(app, "big"), row(app, "off")
                assert off[2] == "cordoned" and off[3] == "—"  # none placed there
                assert solo[2] == big[2] == "reachable"
                # All four agents are on the open hosts, each named on its host's row.
                assert sum(int(r[3].split(":")[0]) for r in (solo, big) if r[3] != "—") == 4
                shown = {n.strip() for r in (solo, big) if r[3] != "—" for n in r[3][3:].split(",")}
                assert shown == names
                assert (solo[4], big[4], off[4]) == ("0 busy / 1 free", "3 busy / 5 free", "—")
                await app.client.call("run.stop", run=run_id)
                await until(  # the view follows: stopped agents leave their hosts
                    pilot,
                    lambda: row(app, "solo")[3] == row(app, "big")[3] == "—",
                    "the hosts to empty",
                )
