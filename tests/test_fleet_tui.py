"""The TUI's hosts view (H) over a pool: each host's agents, GPU slots busy and free, and
which hosts are cordoned, while a `--hosts all` run's agents are live on real sshd hosts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import sshd_kit
from agent_kit import scripted
from test_tui import SIZE, agents_of, loaded, screen_text, shows, until
from textual.widgets import DataTable, Input

from supervisor import hosts as h
from supervisor.testing import Reply
from supervisor.tui.app import SupervisorApp
from supervisor.tui.widgets.fleet import FleetTable

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
        # "off" as a host registered before its load was read: it was never sampled.
        old = h.get_host("off")
        del old.facts["load1"]
        h.save_host(old)
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
                assert (solo[5], big[5], off[5]) == ("0 busy / 1 free", "3 busy / 5 free", "—")
                # Each host running agents shows its load, sampled by the engine over the
                # agents' connection; the one never sampled shows none.
                await until(
                    pilot,
                    lambda: all(h.get_host(n).facts.get("load_at") for n in ("solo", "big")),
                    "the engine to sample the hosts' load",
                    timeout=30,
                )

                def sampled(name: str) -> str:
                    facts = h.get_host(name).facts
                    return f"{facts['load1']:.1f}/{facts['cpus']}"

                for name in ("solo", "big"):
                    assert h.get_host(name).facts["cpus"] == os.cpu_count()
                    await until(pilot, lambda n=name: row(app, n)[4] == sampled(n), "the load")
                    await until(  # on screen, beside the models, in a 120-column terminal
                        pilot, lambda n=name: sampled(n) in screen_text(app), "the load shown"
                    )
                assert row(app, "off")[4] == "—" and "load_at" not in h.get_host("off").facts
                # The fleet shows where each agent runs; Enter on a host shows its agents only.
                busy = "big" if big[3] != "—" else "solo"
                on_busy = {n.strip() for n in row(app, busy)[3][3:].split(",")}
                table = app.screen.query_one("#hosts-table", DataTable)
                table.move_cursor(row=table.get_row_index(busy))
                await pilot.press("enter")
                await until(pilot, lambda: not app.screen.query("#hosts"), "the fleet again")
                fleet = app.query_one(FleetTable)
                assert app.query_one("#filter", Input).value == f"host:{busy}"

                def agent_rows() -> dict[str, str]:
                    """Each agent row's name and host cells, as the fleet shows them."""
                    return {
                        str(fleet.get_row(k)[0]).strip(" ●"): str(fleet.get_row(k)[1])
                        for k in fleet.order
                        if k in app.fleet.agents
                    }

                await until(
                    pilot, lambda: set(agent_rows()) == on_busy, f"the fleet to show {busy}'s only"
                )
                assert set(agent_rows().values()) == {busy}
                # An agent on this machine says "local", and can be picked out the same way.
                local = await app.client.call(
                    "run.start", task="wait", sandbox="local", title="here"
                )
                await until(
                    pilot,
                    lambda: [a.status for a in agents_of(app, str(local["run_id"]))] == ["waiting"],
                    "the local agent waiting",
                )
                app.query_one("#filter", Input).value = "host:local"
                await until(pilot, lambda: agent_rows() == {"here": "local"}, "the local agent")
                app.query_one("#filter", Input).value = ""
                await until(pilot, lambda: len(agent_rows()) == 5, "every agent")
                shown = agent_rows()
                assert shown["here"] == "local"
                assert {n for n, host in shown.items() if host == busy} == on_busy
                assert {n for n, host in shown.items() if host in ("solo", "big")} == names
                await app.client.call("run.stop", run=str(local["run_id"]))
                await pilot.press("H")
                await until(pilot, lambda: app.screen.query("#hosts"), "the hosts screen again")
                await app.client.call("run.stop", run=run_id)
                await until(  # the view follows: stopped agents leave their hosts
                    pilot,
                    lambda: row(app, "solo")[3] == row(app, "big")[3] == "—",
                    "the hosts to empty",
                )


async def test_hosts_view_counts_the_gpu_an_experiment_holds(tmp_path: Path, home: Path) -> None:
    """An autoresearch loop on a one-GPU host holds that GPU while its training runs: the
    hosts view shows it busy, and free again once the run is stopped."""
    target = tmp_path / "slow"
    target.mkdir()
    (target / "train.py").write_text("import time\ntime.sleep(60)\nprint('score: 1')\n")
    (target / "autoresearch.toml").write_text(
        '[autoresearch]\nname = "slow"\neditable = ["train.py"]\nrun = "python3 train.py"\n'
        "metric = '^score:\\\\s*([0-9.]+)'\ndirection = \"lower\"\ntime_budget_s = 60\n"
        "baseline_runs = 1\n"
    )
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "autoresearch.md"
    with sshd_kit.sshd(tmp_path / "sshd", "one") as (srv, (user,)):
        h.add_host(
            "solo",
            f"{user.name}@{srv.host}:{srv.port}",
            password=lambda: user.password,
            trust=srv.fingerprint(),
        )
        app = SupervisorApp()
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            assert app.client is not None
            started = await app.client.call(
                "recipe.start",
                path=str(recipe),
                params={"target": str(target), "hosts": "solo", "proposer": "builtin"},
            )
            await pilot.press("H")
            await until(pilot, lambda: app.screen.query("#hosts"), "the hosts screen")
            await until(
                pilot,
                lambda: row(app, "solo")[5] == "1 busy / 0 free",
                "the experiment's GPU shown busy",
                timeout=60,
            )
            await app.client.call("run.stop", run=str(started["run_id"]))
            await until(
                pilot,
                lambda: row(app, "solo")[5] == "0 busy / 1 free",
                "the GPU free once the run stopped",
                timeout=30,
            )
