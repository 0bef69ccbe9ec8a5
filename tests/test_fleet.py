"""Host pools: `supervisor run --hosts`, placement within caps, cordon, GPU slots.

The pool's rules are checked on :mod:`supervisor.fleet` directly (cheap, exact); the
runs go to three real sshd servers on 127.0.0.x, one user each (folder sandboxes, the
fastest the ssh backend has), so `whoami` in an agent's shell says which host it ran on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sshd_kit
from agent_kit import engine, scripted
from conftest import run_cli

from supervisor import config, fleet
from supervisor import hosts as h
from supervisor.engine import Engine, RunOptions
from supervisor.errors import InputError
from supervisor.plugins import get_plugins
from supervisor.store import open_default
from supervisor.testing import Reply

LAYOUTS = ("", "one", "eight-mixed")  # no GPU, one GPU, eight mixed GPUs


def test_placement_spreads_within_caps_and_never_shares_a_gpu() -> None:
    pool = fleet.Pool(
        [
            fleet.HostSlots("a", cpus=8, ram_mb=16384, gpus=0, cap=5),
            fleet.HostSlots("b", cpus=8, ram_mb=16384, gpus=2, cap=5),
            fleet.HostSlots("c", cpus=64, ram_mb=262144, gpus=0, cap=4, cordoned=True),
        ]
    )
    first = [pool.place(f"x{i}").host for i in range(6)]
    assert Counter(first) == {"a": 3, "b": 3}  # the cordoned one gets none
    gpu = pool.place("g1", gpus=1)
    assert gpu.host == "b" and gpu.gpus in ((0,), (1,))
    other = pool.place("g2", gpus=1)
    assert other.host == "b" and set(other.gpus + gpu.gpus) == {0, 1}
    with pytest.raises(fleet.NoRoom) as full:
        pool.place("g3", gpus=1)
    assert full.value.reasons == {
        "a": "0 free GPU slots, 1 asked",
        "b": "full (5/5 sandboxes)",
        "c": "cordoned",
    }
    pool.release("g1")
    again = pool.place("g3", gpus=1)
    assert again.host == "b" and again.gpus == gpu.gpus  # the freed slot, no other
    assert [pool.place("x7").host, pool.place("x8").host] == ["a", "a"]
    with pytest.raises(fleet.NoRoom, match="a full \\(5/5 sandboxes\\); b full"):
        pool.place("x9")


def test_placement_is_deterministic_and_avoids_recent_failures() -> None:
    def hosts() -> list[fleet.HostSlots]:
        return [fleet.HostSlots(n, cpus=4, ram_mb=8192, cap=50) for n in "abcde"]

    one, two = fleet.Pool(hosts(), seed=7), fleet.Pool(hosts(), seed=7)
    assert [one.place(str(i)).host for i in range(40)] == [
        two.place(str(i)).host for i in range(40)
    ]
    pool = fleet.Pool(hosts(), k=5)
    pool.place("bad")
    bad = pool.where("bad")
    pool.release("bad", failed=True)
    assert bad not in {pool.place(str(i)).host for i in range(8)}


def test_hosts_spec_is_checked() -> None:
    known = ["a", "b", "c"]
    assert fleet.resolve("all", known, {}) == known
    assert fleet.resolve("c, a,a", known, {}) == ["c", "a"]
    assert fleet.resolve("gpu", known, {"gpu": ["b", "c"]}) == ["b", "c"]
    with pytest.raises(InputError, match=r"--hosts: no host named 'z' \(known: a, b, c\)"):
        fleet.resolve("a,z", known, {})
    with pytest.raises(InputError, match=r"pool 'gpu' \(pools\.gpu\.hosts\): no host named 'q'"):
        fleet.resolve("gpu", known, {"gpu": ["q"]})
    with pytest.raises(InputError, match="no hosts yet"):
        fleet.resolve("all", [], {})


def test_an_empty_hosts_option_is_refused_not_ignored() -> None:
    result = run_cli("run", "t", "--hosts", " ", "--sandbox", "local")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --hosts is empty: name hosts (a,b,c), all, or a pool"
    ]


def test_gpus_without_hosts_is_refused_not_ignored() -> None:
    out = run_cli("run", "--gpus", "1", "--foreground", "train it")
    assert out.returncode == 2 and out.stderr.strip() == (
        "error: --gpus gives each agent GPUs of a pool's hosts: add --hosts NAME,..."
    )


pytestmark_ssh = pytest.mark.skipif(bool(sshd_kit.available()), reason=sshd_kit.available())


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[sshd_kit.SSHServer]]:
    """Three sshd servers, one user each, with no GPU, one GPU and eight GPUs."""
    with contextlib.ExitStack() as stack:
        root = tmp_path_factory.mktemp("fleet")
        yield [
            stack.enter_context(sshd_kit.sshd(root / f"h{i}", layout))[0]
            for i, layout in enumerate(LAYOUTS)
        ]


def register(servers: list[sshd_kit.SSHServer]) -> dict[str, str]:
    """Hosts h0, h1, h2; which user logs in on each."""
    return sshd_kit.register_hosts(servers)


def whoami_script(messages: list[dict]) -> Reply:
    turns = sum(m["role"] == "assistant" for m in messages)
    if turns == 0:
        return Reply(tool_calls=[("shell", {"command": "whoami"})])
    return Reply(tool_calls=[("finish", {"summary": messages[-1]["content"].split("\n")[0]})])


def placements(agent_ids: list[str]) -> list[dict]:
    """The placement events in the agents' transcripts, as a person reads them."""
    found = []
    for agent_id in agent_ids:
        out = run_cli("transcript", agent_id, "--format", "jsonl")
        assert out.returncode == 0, out.stderr
        events = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        found += [e for e in events if e["type"] == "placement"]
    return found


@pytestmark_ssh
async def test_thirty_agents_spread_over_three_hosts_within_their_caps(
    servers: list[sshd_kit.SSHServer], home: Path
) -> None:
    users = register(servers)
    with scripted(whoami_script):
        async with engine(**{"hosts.max_sandboxes": 10}) as eng:
            run_id = await eng.start_run(RunOptions(task="who am i", agents=30, hosts="all"))
            assert await asyncio.wait_for(eng.wait_run(run_id), 120) == "done"
            ran_on = Counter(users[a.summary.strip()] for a in eng.agents.values())
            ids = list(eng.agents)
    assert ran_on == {"h0": 10, "h1": 10, "h2": 10}
    placed = placements(ids[:3])
    assert len(placed) == 3 and all(p["data"]["phase"] == "placed" for p in placed)
    assert all(p["text"].startswith(f"placed on host {p['data']['host']} (") for p in placed)


def gpus_script(messages: list[dict]) -> Reply:
    if not any(m["role"] == "assistant" for m in messages):
        command = 'echo "$CUDA_VISIBLE_DEVICES $(whoami)"; sleep 1'
        return Reply(tool_calls=[("shell", {"command": command})])
    return Reply(tool_calls=[("finish", {"summary": messages[-1]["content"].split("\n")[0]})])


@pytestmark_ssh
async def test_gpu_agents_get_whole_free_gpus_of_their_host_never_shared(
    servers: list[sshd_kit.SSHServer], home: Path
) -> None:
    """`--gpus 2`: the eight-GPU host has four free (two busy and a MIG one at its last
    check), the one-GPU host too few: two agents fit, each with its own two GPUs in
    CUDA_VISIBLE_DEVICES; a third is refused before anything starts, saying why."""
    users = register(servers)
    with scripted(gpus_script):
        async with engine() as eng:
            with pytest.raises(InputError) as refused:
                await eng.start_run(RunOptions(task="train", agents=3, hosts="all", gpus=2))
            assert "3 agents with 2 GPUs each but room for 2 now" in str(refused.value)
            assert "free GPUs: h0 0, h1 1, h2 4" in str(refused.value)
            # GPUs an experiment loop holds (the engine's slots of the host) are no agent's.
            slots = eng.host_gpu_slots("h2")
            slots.take("autoresearch loop", ["2", "3"])
            with pytest.raises(InputError, match="2 agents with 2 GPUs each but room for 1 now"):
                await eng.start_run(RunOptions(task="train", agents=2, hosts="all", gpus=2))
            await slots.release("autoresearch loop")
            run_id = await eng.start_run(RunOptions(task="train", agents=2, hosts="all", gpus=2))
            assert await asyncio.wait_for(eng.wait_run(run_id), 120) == "done"
            seen = sorted(a.summary.strip() for a in eng.agents.values())
            # Their GPUs are free again once they ended.
            assert eng.host_gpus["h2"].holders() == {}
    assert [s.split()[0] for s in seen] == ["2,3", "6,7"]
    assert {users[s.split()[1]] for s in seen} == {"h2"}
    placed = [p for p in placements(list(eng.agents)) if p["data"]["phase"] == "placed"]
    assert sorted(p["data"]["gpus"] for p in placed) == [[2, 3], [6, 7]]
    assert all(", GPU " in p["text"] for p in placed)


@pytestmark_ssh
async def test_a_cordoned_host_gets_no_agents_and_a_full_pool_is_refused(
    servers: list[sshd_kit.SSHServer], home: Path
) -> None:
    users = register(servers)
    assert run_cli("hosts", "cordon", "h1").returncode == 0
    listing = run_cli("hosts", "ls").stdout
    assert "cordoned" in next(line for line in listing.splitlines() if line.startswith("h1"))
    with scripted(whoami_script):
        async with engine(**{"hosts.max_sandboxes": 3}) as eng:
            run_id = await eng.start_run(RunOptions(task="who am i", agents=6, hosts="h0,h1,h2"))
            assert await asyncio.wait_for(eng.wait_run(run_id), 120) == "done"
            ran_on = Counter(users[a.summary.strip()] for a in eng.agents.values())
    assert ran_on == {"h0": 3, "h2": 3}
    # `agents ls` says where each agent ran, and lists one host's agents.
    on_h0 = json.loads(run_cli("agents", "ls", "--host", "h0", "--json").stdout)
    assert len(on_h0) == 3 and {r["host"] for r in on_h0} == {"h0"}
    table = run_cli("agents", "ls", "--host", "h2").stdout.splitlines()
    assert table[0].split()[:4] == ["AGENT", "ID", "RUN", "HOST"]
    assert len(table) == 4 and all(line.split()[3] == "h2" for line in table[1:])
    assert json.loads(run_cli("agents", "ls", "--host", "local", "--json").stdout) == []
    nowhere = run_cli("agents", "ls", "--host", "h9")
    assert nowhere.returncode == 2 and nowhere.stdout == ""
    assert nowhere.stderr.strip().splitlines() == [
        "error: --host: no host named 'h9' (known: h0, h1, h2, local)"
    ]
    refused = run_cli(
        "run",
        "--foreground",
        "--hosts",
        "all",
        "-n",
        "7",
        "do it",
        env={"SUPERVISOR_HOSTS_MAX_SANDBOXES": "3"},
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: --hosts h0,h1,h2: 7 agents but room for 6 now (hosts.max_sandboxes = 3; h1 cordoned)"
    ]
    assert run_cli("hosts", "uncordon", "h1").returncode == 0
    assert h.get_host("h1").cordoned is False
    unknown = run_cli("run", "--foreground", "--hosts", "h0,nope", "do it")
    assert unknown.returncode == 2 and "no host named 'nope'" in unknown.stderr


def lost_host_script(doomed: str):
    """Step 1 writes a line; step 2 waits on the doomed host only; then (after the
    resume, elsewhere) it reads the line back and says who it runs as, until it can."""

    def script(messages: list[dict]) -> Reply:
        turns = sum(m["role"] == "assistant" for m in messages)
        last = next((m for m in reversed(messages) if m["role"] == "tool"), {"content": ""})
        if turns == 0:
            return Reply(tool_calls=[("shell", {"command": "echo kept >> notes.txt"})])
        if turns == 1:
            command = f'[ "$(whoami)" = {doomed} ] && sleep 120; true'
            return Reply(tool_calls=[("shell", {"command": command})])
        if str(last["content"]).startswith("first"):
            return Reply(tool_calls=[("finish", {"summary": last["content"].replace("\n", " ")})])
        # The host died under the previous command (or it was the wait): look again.
        return Reply(tool_calls=[("shell", {"command": "cat notes.txt; whoami"})])

    return script


def sleeping(user: str) -> list[str]:
    found = subprocess.run(["pgrep", "-u", user, "-x", "sleep"], capture_output=True, text=True)
    return found.stdout.split()


@pytestmark_ssh
async def test_a_lost_host_interrupts_its_agents_and_resume_finishes_them_elsewhere(
    servers: list[sshd_kit.SSHServer], home: Path, tmp_path: Path
) -> None:
    users = register(servers)
    doomed_srv = servers[1]
    (doomed,) = doomed_srv.users
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("first\n")
    with scripted(lost_host_script(doomed.name)) as model:
        async with engine(**{"hosts.max_sandboxes": 2}) as eng:
            run_id = await eng.start_run(
                RunOptions(task="t", agents=6, hosts="all", workspace=ws, title="w")
            )
            on_doomed = lambda: [  # noqa: E731
                a for a in eng.agents.values() if eng.pools[run_id].where(a.id) == "h1"
            ]
            deadline = time.monotonic() + 60
            while len(model.requests) < 20 or len(sleeping(doomed.name)) < 2:
                assert time.monotonic() < deadline, "the agents never reached the wait"
                await asyncio.sleep(0.2)
            victims = on_doomed()
            assert len(victims) == 2
            doomed_srv.stop()
            killed = time.monotonic()
            try:
                while any(a.status != "interrupted" for a in victims):
                    assert time.monotonic() - killed < 30, "the lost host was not noticed"
                    await asyncio.sleep(0.2)
                assert await asyncio.wait_for(eng.wait_run(run_id), 120) == "interrupted"
                assert all("host h1 was lost" in a.summary for a in victims)
                assert h.get_host("h1").reachable is False
                await eng.resume_task_run(run_id)
                assert await asyncio.wait_for(eng.wait_run(run_id), 120) == "done"
            finally:
                doomed_srv.start()
            for a in victims:
                # The line of its first step survived the host; it ran on another one.
                assert a.summary.startswith("first kept svt"), a.summary
                ran_as = a.summary.split()[2]
                assert users[ran_as] in ("h0", "h2")
            assert sum(eng.pools[run_id].sync_s) / len(eng.pools[run_id].sync_s) < 1.0


def shown_hosts(agent_ids: list[str]) -> dict[str, str]:
    """Each agent's host as `agents ls` shows it."""
    rows = {r["id"]: r for r in json.loads(run_cli("agents", "ls", "--json").stdout)}
    return {a: rows[a]["host"] for a in agent_ids}


@pytestmark_ssh
async def test_a_resumed_agent_runs_on_the_host_the_pool_counts_it_on(
    servers: list[sshd_kit.SSHServer], home: Path, tmp_path: Path
) -> None:
    """The lost host is back by the time of the resume (a reboot): its agents' old
    sandboxes answer again, yet the run gave up on that host, so the agents run on the
    hosts they were moved to, and are counted and shown there."""
    users = register(servers)
    doomed_srv = servers[1]
    (doomed,) = doomed_srv.users
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("first\n")
    with scripted(lost_host_script(doomed.name)) as model:
        async with engine(**{"hosts.max_sandboxes": 2}) as eng:
            run_id = await eng.start_run(
                RunOptions(task="t", agents=6, hosts="all", workspace=ws, title="w")
            )
            pool = eng.pools[run_id]
            deadline = time.monotonic() + 60
            while len(model.requests) < 20 or len(sleeping(doomed.name)) < 2:
                assert time.monotonic() < deadline, "the agents never reached the wait"
                await asyncio.sleep(0.2)
            victims = [a for a in eng.agents.values() if pool.where(a.id) == "h1"]
            assert len(victims) == 2
            doomed_srv.stop()
            try:
                assert await asyncio.wait_for(eng.wait_run(run_id), 120) == "interrupted"
            finally:
                doomed_srv.start()
            assert all("host h1 was lost" in a.summary for a in victims)
            await eng.resume_task_run(run_id)
            # While they work again, the pool counts each where its sandbox now is.
            deadline = time.monotonic() + 60
            while not all(a.sandbox.id for a in victims):
                assert time.monotonic() < deadline, "the moved agents never got a sandbox"
                await asyncio.sleep(0.1)
            counted = {a.id: pool.where(a.id) for a in victims}
            assert {a.id: a.sandbox.id.split(":")[1] for a in victims} == counted
            assert set(counted.values()) <= {"h0", "h2"}
            assert await asyncio.wait_for(eng.wait_run(run_id), 120) == "done"
    for a in victims:
        ran_as = a.summary.split()[2]
        assert users[ran_as] == counted[a.id], (a.summary, counted)
    assert shown_hosts([a.id for a in victims]) == counted
    for a in victims:  # the hosts view reads the last placement: the new host, said so
        last = placements([a.id])[-1]
        assert last["data"]["host"] == counted[a.id]
        assert "moved from host h1" in last["text"], last["text"]
        said = run_cli("transcript", a.id, "--format", "jsonl").stdout
        assert "its sandbox stays on the lost host as it was" in said


def sleep_then_whoami(messages: list[dict]) -> Reply:
    """A long command (the supervisor goes away during it), then, once resumed, who it
    runs as, said as its summary."""
    turns = sum(m["role"] == "assistant" for m in messages)
    if turns == 0:
        return Reply(tool_calls=[("shell", {"command": "sleep 60"})])
    if turns == 1:
        return Reply(tool_calls=[("shell", {"command": "whoami"})])
    last = next(m for m in reversed(messages) if m["role"] == "tool")
    return Reply(tool_calls=[("finish", {"summary": str(last["content"]).split()[0]})])


@pytestmark_ssh
async def test_after_a_restart_resumed_agents_go_on_where_their_sandboxes_are(
    servers: list[sshd_kit.SSHServer], home: Path
) -> None:
    """The supervisor process goes away mid-run; meanwhile one host is cordoned and
    another dies. On resume the agents of the cordoned host go on in their own sandboxes,
    counted there (a cordon stops new agents only) rather than wherever a fresh placement
    would go; those of the dead host move to the one host left, and say so."""
    users = register(servers)
    with scripted(sleep_then_whoami) as model:
        store = open_default()
        settings = {**config.load().values, "hosts.max_sandboxes": 2}
        first = Engine(store, get_plugins(), settings=settings)
        try:
            run_id = await first.start_run(RunOptions(task="t", agents=4, hosts="all"))
            deadline = time.monotonic() + 60
            while sum(len(sleeping(u)) for u in users) < 4:
                assert time.monotonic() < deadline, "the agents never reached the sleep"
                await asyncio.sleep(0.2)
            before = {a.id: first.pools[run_id].where(a.id) for a in first.agents.values()}
        finally:
            await first.close(interrupt=True)  # as when the process is stopped
            store.close()
        cordoned, dead = (name for name, _ in Counter(before.values()).most_common(2))
        (left,) = {"h0", "h1", "h2"} - {cordoned, dead}
        assert run_cli("hosts", "cordon", cordoned).returncode == 0
        dead_srv = servers[int(dead[1])]
        dead_srv.stop()
        try:
            async with engine() as eng:
                resumed = await eng.resume_task_run(run_id)
                assert len(resumed) == 4
                pool = eng.pools[run_id]
                stayed = [a for a in resumed if before[a.id] == cordoned]
                assert {pool.where(a.id) for a in stayed} == {cordoned}
                assert await asyncio.wait_for(eng.wait_run(run_id), 120) == "done"
                ran_on = {a.id: users[a.summary] for a in resumed}
        finally:
            dead_srv.start()
        assert len(model.requests) >= 12
    expected = {a: left if host == dead else host for a, host in before.items()}
    assert ran_on == expected
    assert shown_hosts(list(before)) == expected
    assert h.get_host(dead).reachable is False
    for agent_id in (a for a, host in before.items() if host == dead):
        last = placements([agent_id])[-1]
        assert last["data"]["host"] == left and last["data"]["moved_from"] == dead
        assert f"moved from host {dead} (down (" in last["text"], last["text"]
