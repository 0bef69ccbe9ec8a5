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
