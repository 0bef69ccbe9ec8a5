"""The TUI's hosts view (H): reachable or not, GPUs busy and free, when last checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import sshd_kit
from test_tui import SIZE, loaded, shows, until

from supervisor import hosts as h
from supervisor.tui.app import SupervisorApp

pytestmark = pytest.mark.skipif(bool(sshd_kit.available()), reason=sshd_kit.available())


async def test_hosts_view_shows_gpus_and_checks_every_host(tmp_path: Path, home: Path) -> None:
    with sshd_kit.sshd(tmp_path / "sshd", "gb10", "eight-mixed") as (srv, (spark, big)):
        for name, u in (("spark", spark), ("big", big)):
            h.add_host(
                name,
                f"{u.name}@{srv.host}:{srv.port}",
                password=lambda u=u: u.password,  # type: ignore[misc]
                trust=srv.fingerprint(),
            )
        host, port = sshd_kit.free_address()
        h.save_host(h.Host("gone", host, port, "nobody"))  # registered, never checked
        app = SupervisorApp()
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            await pilot.press("H")
            await until(pilot, lambda: app.screen.query("#hosts"), "the hosts screen")
            await shows(pilot, app, "Hosts — 3")
            await shows(pilot, app, "1× NVIDIA GB10 (unified)")
            await shows(pilot, app, "3 busy / 5 free")
            await shows(pilot, app, "unchecked")
            await pilot.press("c")  # check them all now
            await shows(pilot, app, "unreachable")
            await until(  # a notification says why
                pilot,
                lambda: any("connection refused" in n.message for n in app._notifications),
                "the notification",
            )
            assert h.get_host("spark").reachable and h.get_host("gone").reachable is False
            await pilot.press("escape")
            await until(pilot, lambda: not app.screen.query("#hosts"), "back to the fleet")


async def test_new_agent_dialog_offers_registered_hosts(tmp_path: Path, home: Path) -> None:
    from agent_kit import scripted
    from test_tui import agents_of
    from textual.widgets import Select, TextArea

    from supervisor.testing import Reply

    with sshd_kit.sshd(tmp_path / "sshd", "") as (srv, (u,)):
        h.add_host(
            "box",
            f"{u.name}@{srv.host}:{srv.port}",
            password=lambda: u.password,
            trust=srv.fingerprint(),
        )
        script = [
            Reply(tool_calls=[("shell", {"command": "whoami"})]),
            Reply(tool_calls=[("finish", {"summary": "ok"})]),
        ]
        with scripted(script) as model:
            app = SupervisorApp()
            async with app.run_test(size=SIZE, notifications=True) as pilot:
                await loaded(pilot)
                await pilot.press("n")
                await until(pilot, lambda: app.screen.query("#new-agent"), "the dialog")
                app.screen.query_one("#task", TextArea).insert("who am I there")
                app.screen.query_one("#sandbox", Select).value = "host:box"
                await pilot.press("ctrl+s")
                await until(
                    pilot, lambda: not app.screen.query("#new-agent"), "the dialog to close"
                )
                await until(pilot, lambda: len(app.fleet.runs) == 1, "the run")
                (run,) = app.fleet.runs
                await until(
                    pilot,
                    lambda: agents_of(app, run) and agents_of(app, run)[0].status == "done",
                    "the agent",
                )
        assert model.requests[1]["messages"][-1]["content"].startswith(f"{u.name}\n")
