"""The TUI under load: a fleet streaming through the real server into a real terminal.

One run of 50 agents (--agents) streams through the real supervisor server: every model
turn is a long text (--words, 300) paced at --rate tokens/s (30; one word is one token in
the scripted model) followed by a cheap ``shell`` call (``echo``), forever, in local
sandboxes. The TUI runs in a tmux pane of a fixed size (160×48), as a person would have
it, with the server already running. Measured, each beside a baseline taken in the same
run on the same tmux server:

- first_frame_s: from spawning ``supervisor`` in the pane until ``capture-pane`` shows
  the TUI's first screen (its connecting banner or its footer), median of --launches (5);
  fleet_shown_s: until the fleet's snapshot is drawn ("Fleet — 50 agents"); each launch
  quits with ``q``. Baselines: ``python -c "print('x'); input()"`` with the same
  interpreter (what any Python program costs to appear in tmux), and a minimal Textual
  app (a footer only: the floor for any Textual app).
- key_latency_p50_ms / p95: the TUI's message input focused (``m``), one character sent
  with ``send-keys -l``, then ``capture-pane`` polled until the character shows; --keys
  (100) samples. Then the same with every agent paused (key_latency_fleet_paused_ms: the
  same TUI and screen, nothing streaming). Baselines: ``cat`` in a pane (tmux's own echo
  path and the polling cost), and the minimal Textual app's focused input line.
- tui_cpu_share, server_cpu_share: utime+stime from /proc/PID/stat over a --window (20 s)
  while the fleet streams and the TUI shows one agent's transcript (so its text deltas
  stream to the TUI too), as a fraction of one core. The scripted model server and the
  tmux server are reported beside them: on a 2-core machine they share the cores.
- events_per_s (committed to SQLite, from max(id) deltas) and tokens_per_s (words in the
  committed text deltas) over the same window, so the reader sees the load was real.

tmux is driven through one control-mode client (``tmux -C``) attached to a session of
its own: a capture costs ~0.03 ms there against ~2.5 ms for a ``tmux capture-pane``
process, so polling every 2 ms measures the TUI rather than the harness.

Everything runs under a fresh temporary SUPERVISOR_HOME with its own tmux server; the run
is stopped, the server shut down, tmux killed and the folder removed at the end, even on
error, Ctrl-C or SIGTERM.

    .venv/bin/python bench/tui.py [--agents 50] [--rate 30] [--window 20] [--keys 100]
        [--launches 5] [--tui-cmd "supervisor"]

Progress goes to stderr; the last line printed to stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Before any supervisor import: the config file, database and socket all derive from the
# data directory, and the benchmark must never see or touch the user's own.
HOME = tempfile.mkdtemp(prefix="bench-tui-home-")
for _name in [n for n in os.environ if n.startswith("SUPERVISOR_")]:
    del os.environ[_name]
os.environ["SUPERVISOR_HOME"] = HOME

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from supervisor import config  # noqa: E402
from supervisor.client import Client, start_server  # noqa: E402

WIDTH, HEIGHT = 160, 48
# Text of the TUI's first screen (the banner while it connects, the footer's first key),
# and of the fleet once its snapshot is loaded.
FIRST_FRAME = ("Connecting to the supervisor server", "q Detach")
INPUT_KEY = "m"  # focuses the message input (the selected agent's)
SHOWN_AGENT = re.compile(r"Message (\S+) \(m, Enter sends\)")
# The floor for any Textual app: the interpreter, textual's imports, one screen with a
# focused input line.
TEXTUAL_APP = """
from textual.app import App
from textual.widgets import Footer, Input


class Minimal(App):
    BINDINGS = [("ctrl+q", "quit", "Quit")]

    def compose(self):
        yield Input()
        yield Footer()


Minimal().run()
"""
TICKS = os.sysconf("SC_CLK_TCK")

# The scripted model, run by a child process so its CPU is its own (a real model is another
# machine). Every turn: WORDS words at RATE tokens/s, then an echo, forever.
MODEL_SERVER = r"""
import sys

from supervisor.testing import Reply, ScriptedModelServer

WORDS, RATE = int(sys.argv[1]), float(sys.argv[2])
VOCABULARY = (
    "the fleet reads logs and checks every service before it writes a short report on "
    "what changed since the last deploy then it compares metrics across hosts"
).split()
TEXT = " ".join(VOCABULARY[i % len(VOCABULARY)] for i in range(WORDS)) + "."


class Discard(list):
    # The server keeps every request body for tests; a benchmark has no use for them.
    def append(self, item):
        pass


def reply(messages):
    step = sum(1 for m in messages if m.get("role") == "assistant")
    return Reply(TEXT, tool_calls=[("shell", {"command": f"echo step {step}"})], tokens_per_s=RATE)


with ScriptedModelServer(reply) as server:
    server.requests = Discard()
    print(server.base_url, flush=True)
    sys.stdin.read()  # until the parent closes the pipe (or dies)
"""


def log(message: str) -> None:
    print(f"[bench/tui {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with few samples, interpolation invents values."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class CpuMeter:
    """CPU seconds per wall second of some processes, between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start_cpu: dict[str, float] = {}
        self.start_wall = 0.0

    def start(self) -> None:
        self.start_wall = time.monotonic()
        self.start_cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.start_wall
        return {
            name: (cpu_seconds(pid) - self.start_cpu[name]) / wall
            for name, pid in self.pids.items()
        }


# -- the scripted model


class ModelServer:
    """The scripted model server in a child process; stops when its stdin closes."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def start(self, words: int, rate: float) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MODEL_SERVER, str(words), str(rate)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        base_url = self.proc.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError(f"scripted model server did not start (exit {self.proc.poll()})")
        return base_url

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def point_default_model_at(base_url: str) -> None:
    """The alias `scripted` as the default model (written before the server starts)."""
    config.set_value("models.scripted.model", "openai/scripted")
    config.set_value("models.scripted.api_base", base_url)
    config.set_value("models.scripted.input_per_mtok", "1.0")
    config.set_value("models.scripted.output_per_mtok", "2.0")
    config.set_value("model", "scripted")


# -- the supervisor server


def call(cmd: str, timeout: float = 30.0, **args: Any) -> Any:
    """One command to the running server, on a connection of its own."""

    async def go() -> Any:
        client = await Client.connect(Path(HOME), start=False, name="bench")
        try:
            return await asyncio.wait_for(client.call(cmd, **args), timeout)
        finally:
            await client.close()

    return asyncio.run(go())


class Database:
    """The server's SQLite database, read-only, as a client reads it."""

    def __init__(self) -> None:
        path = Path(HOME) / "supervisor.db"
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout = 5000")

    def value(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        return self.db.execute(sql, args).fetchone()[0]

    def max_id(self) -> int:
        return int(self.value("SELECT coalesce(max(id), 0) FROM events"))

    def streaming_agents(self) -> int:
        return int(
            self.value("SELECT count(DISTINCT agent_id) FROM events WHERE type = 'message.delta'")
        )

    def agent_ids(self, run_id: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM agents WHERE run_id = ?", (run_id,))]

    def statuses(self, run_id: str) -> set[str]:
        rows = self.db.execute("SELECT DISTINCT status FROM agents WHERE run_id = ?", (run_id,))
        return {r[0] for r in rows}

    def words_between(self, after: int, upto: int, agent_name: str = "") -> int:
        """Words (the scripted model's tokens) in the text deltas committed in an id range,
        of every agent or of one."""
        sql = (
            "SELECT json_extract(data, '$.delta') FROM events "
            "WHERE id > ? AND id <= ? AND type = 'message.delta'"
        )
        args: tuple[Any, ...] = (after, upto)
        if agent_name:
            sql += " AND agent_id IN (SELECT id FROM agents WHERE name = ?)"
            args += (agent_name,)
        return sum(len((text or "").split()) for (text,) in self.db.execute(sql, args))


# -- tmux


class Tmux:
    """A private tmux server, driven through one control-mode client.

    The control client sits in a session of its own, so the measured panes' output is
    never copied to it; commands and their answers go over one pipe.
    """

    def __init__(self) -> None:
        self.name = f"bench-tui-{os.getpid()}"
        self.env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        self.env.pop("TMUX", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.socket = ""

    def run(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-u", "-L", self.name, "-f", "/dev/null", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def start(self) -> None:
        self.run("new-session", "-d", "-s", "ctl", "-x", "80", "-y", "24", "cat")
        self.run("set-option", "-g", "remain-on-exit", "on")
        self.run("set-option", "-g", "status", "off")
        self.proc = subprocess.Popen(
            ["tmux", "-u", "-L", self.name, "-C", "attach-session", "-t", "ctl"],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        # Attaching answers with a block of its own, and a command sent before it would
        # find no client: wait for it, so that every later answer pairs with its command.
        self._block()
        self.command("refresh-client -f no-output")
        self.socket = self.command("display-message -p '#{socket_path}'")[0]

    def command(self, line: str) -> list[str]:
        """Run one tmux command over the control client; its output lines."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        ok, out = self._block()
        if not ok:
            raise RuntimeError(f"tmux: {line}: {' '.join(out)}")
        return out

    def _block(self) -> tuple[bool, list[str]]:
        """The next command's answer (%begin … %end or %error), skipping notifications."""
        assert self.proc is not None and self.proc.stdout is not None
        read = self.proc.stdout.readline
        while True:
            raw = read()
            if not raw:
                raise RuntimeError("the tmux control client went away")
            if raw.startswith(b"%begin"):
                break
        out: list[str] = []
        while True:
            raw = read()
            if not raw:
                raise RuntimeError("the tmux control client went away")
            if raw.startswith((b"%end", b"%error")):
                return raw.startswith(b"%end"), out
            out.append(raw.decode(errors="replace").rstrip("\n"))

    def new_pane(self, session: str, command: str) -> None:
        self.run("new-session", "-d", "-s", session, "-x", str(WIDTH), "-y", str(HEIGHT), command)

    def respawn(self, session: str, command: str) -> None:
        self.command(f"respawn-pane -k -t {session} {shlex.quote(command)}")

    def screen(self, session: str) -> str:
        return "\n".join(self.command(f"capture-pane -p -t {session}"))

    def keys(self, session: str, *keys: str, literal: bool = False) -> None:
        flag = "-l " if literal else ""
        self.command(f"send-keys -t {session} {flag}{' '.join(shlex.quote(k) for k in keys)}")

    def pane_pid(self, session: str) -> int:
        return int(self.command(f"display-message -p -t {session} '#{{pane_pid}}'")[0])

    def pane_dead(self, session: str) -> bool:
        return self.command(f"display-message -p -t {session} '#{{pane_dead}}'")[0] == "1"

    def server_pid(self) -> int:
        return int(self.command("display-message -p '#{pid}'")[0])

    def wait_for(
        self,
        session: str,
        found: Callable[[str], bool],
        timeout: float = 10.0,
        every: float = 0.002,
    ) -> float:
        """Poll the pane until ``found(screen)``; seconds waited (TimeoutError past timeout)."""
        start = time.perf_counter()
        while True:
            if found(self.screen(session)):
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                tail = self.screen(session)[-2000:]
                raise TimeoutError(f"tmux pane {session}: not seen in {timeout:g}s:\n{tail}")
            time.sleep(every)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
            self.run("kill-server")
        if self.socket:  # tmux leaves its socket file behind
            Path(self.socket).unlink(missing_ok=True)


# -- measurements


def first_frame(
    tmux: Tmux,
    session: str,
    command: str,
    ready: Callable[[str], bool],
    quit_keys: list[str],
    loaded: Callable[[str], bool] | None = None,
) -> tuple[float, float]:
    """Seconds from spawning ``command`` in the pane until ``ready(screen)``, and until
    ``loaded(screen)`` (0 without one); then it is quit with ``quit_keys``."""
    start = time.perf_counter()
    tmux.respawn(session, command)
    tmux.wait_for(session, ready, timeout=20)
    first = time.perf_counter() - start
    full = 0.0
    if loaded is not None:
        tmux.wait_for(session, loaded, timeout=20)
        full = time.perf_counter() - start
    tmux.keys(session, *quit_keys)
    deadline = time.monotonic() + 10
    while not tmux.pane_dead(session):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{command!r} did not quit on {quit_keys}")
        time.sleep(0.01)
    return first, full


def key_latencies(tmux: Tmux, session: str, count: int, marker: str) -> list[float]:
    """Type ``count`` characters after ``marker`` (already on screen); seconds each took
    to show. The typed line is cleared every 20 characters so it never scrolls."""
    alphabet = "abcdefghjkmnoprstuvwy"
    typed = ""
    samples: list[float] = []
    for n in range(count):
        if len(typed) == 20:
            for _ in typed:
                tmux.keys(session, "BSpace")
            typed = ""
            tmux.wait_for(session, lambda screen: marker + alphabet[0] not in screen)
            time.sleep(0.05)
        char = alphabet[n % len(alphabet)]
        typed += char
        expected = marker + typed
        start = time.perf_counter()
        tmux.keys(session, char, literal=True)
        tmux.wait_for(session, lambda screen, e=expected: e in screen, every=0.001)  # type: ignore[misc]
        samples.append(time.perf_counter() - start)
        time.sleep(0.02)  # a fast typist, not a flood
    for _ in typed:
        tmux.keys(session, "BSpace")
    return samples


def typing_latencies(tmux: Tmux, session: str, count: int) -> list[float]:
    """Focus the TUI's message input, type into it, clear it and go back to the fleet."""
    tmux.keys(session, INPUT_KEY)
    # Keys sent in the same instant as m would reach the fleet's bindings before the focus
    # moves; a person's next key comes later than this.
    time.sleep(0.5)
    tmux.keys(session, "@@", literal=True)
    tmux.wait_for(session, lambda screen: "@@" in screen)
    samples = key_latencies(tmux, session, count, "@@")
    tmux.keys(session, "BSpace", "BSpace")
    tmux.wait_for(session, lambda screen: "@@" not in screen)
    tmux.keys(session, "Escape")
    time.sleep(0.3)  # an Escape with a key right behind it reads as alt+key
    return samples


def summary(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values) * scale, 1),
        "p95": round(pct(values, 95) * scale, 1),
        "max": round(max(values) * scale, 1),
    }


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    log(f"{name}…")
    start = time.perf_counter()
    yield
    log(f"{name}: {time.perf_counter() - start:.1f}s")


def bench(args: argparse.Namespace, model: ModelServer) -> dict[str, Any]:
    result: dict[str, Any] = {}
    tmux = Tmux()
    db: Database | None = None
    run_id = ""
    server_pid = 0
    tui_command = f"exec {args.tui_cmd}"
    try:
        with stage("server and fleet"):
            server_pid = start_server(Path(HOME))
            started = call(
                "run.start",
                task="Benchmark: keep reporting on the fleet.",
                sandbox="local",
                agents=args.agents,
                max_steps=100_000,
                title="bench/tui",
            )
            run_id = started["run_id"]
            db = Database()
            deadline = time.monotonic() + 120
            while db.streaming_agents() < args.agents:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"only {db.streaming_agents()} of {args.agents} agents streamed"
                    )
                time.sleep(0.5)
            time.sleep(args.warmup)

        tmux.start()
        tmux.new_pane("cat", "cat")
        tmux.new_pane("app", "sleep 100000")
        tmux_pid = tmux.server_pid()

        with stage("baselines"):
            python_launch = shlex.join([sys.executable, "-c", "print('x' * 3); input()"])
            printed = lambda screen: "xxx" in screen  # noqa: E731
            baseline_frames = [
                first_frame(tmux, "app", python_launch, printed, ["Enter"])[0]
                for _ in range(args.launches)
            ]
            # A file, not -c: a control-mode command is one line.
            minimal = Path(HOME) / "minimal_textual_app.py"
            minimal.write_text(TEXTUAL_APP)
            textual_launch = shlex.join([sys.executable, str(minimal)])
            drawn = lambda screen: "Quit" in screen  # noqa: E731
            textual_frames = [
                first_frame(tmux, "app", textual_launch, drawn, ["C-q"])[0]
                for _ in range(args.launches)
            ]
            tmux.respawn("app", textual_launch)
            tmux.wait_for("app", drawn)
            tmux.keys("app", "@@", literal=True)
            tmux.wait_for("app", lambda screen: "@@" in screen)
            textual_keys = key_latencies(tmux, "app", args.keys, "@@")
            tmux.keys("app", "C-q")
            tmux.keys("cat", ">>", literal=True)
            tmux.wait_for("cat", lambda screen: ">>" in screen)
            baseline_keys = key_latencies(tmux, "cat", args.keys, ">>")

        def tui_ready(screen: str) -> bool:
            return any(text in screen for text in FIRST_FRAME)

        fleet_text = f"Fleet — {args.agents} agents"

        def fleet_shown(screen: str) -> bool:
            return fleet_text in screen

        with stage("TUI first frame"):
            launches = [
                first_frame(tmux, "app", tui_command, tui_ready, ["q"], fleet_shown)
                for _ in range(args.launches)
            ]
            frames = [first for first, _ in launches]
            fleets = [full for _, full in launches]

        with stage("TUI under load"):
            tmux.respawn("app", tui_command)
            tmux.wait_for("app", fleet_shown, timeout=20)
            tui_pid = tmux.pane_pid("app")
            # The TUI selects the first agent and streams its transcript; which one it is
            # shows in the message line's hint.
            tmux.wait_for("app", lambda screen: SHOWN_AGENT.search(screen) is not None)
            shown = SHOWN_AGENT.search(tmux.screen("app"))
            agent_name = shown.group(1) if shown else "?"
            time.sleep(2)
            meter = CpuMeter(
                {"tui": tui_pid, "server": server_pid, "model": model.pid, "tmux": tmux_pid}
            )
            first_id = db.max_id()
            meter.start()
            time.sleep(args.window)
            shares = meter.stop()
            last_id = db.max_id()
            window = time.monotonic() - meter.start_wall
            result["events_per_s"] = round((last_id - first_id) / window, 1)
            result["tokens_per_s"] = round(db.words_between(first_id, last_id) / window, 1)
            result["tokens_per_s_nominal"] = args.agents * args.rate
            result["shown_agent_tokens_per_s"] = round(
                db.words_between(first_id, last_id, agent_name) / window, 1
            )

        with stage("TUI key latency"):
            keys = typing_latencies(tmux, "app", args.keys)

        with stage("TUI key latency, the fleet paused"):
            # The same TUI, the same 50 agents on screen, nothing streaming: what the load
            # adds to the latency above.
            for agent_id in db.agent_ids(run_id):
                call("agent.pause", agent=agent_id)
            deadline = time.monotonic() + 60
            while db.statuses(run_id) != {"paused"}:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the fleet did not pause: {db.statuses(run_id)}")
                time.sleep(0.2)
            time.sleep(1)
            quiet_from, quiet_start = db.max_id(), time.monotonic()
            idle_keys = typing_latencies(tmux, "app", args.keys)
            quiet = time.monotonic() - quiet_start
            result["paused_events_per_s"] = round((db.max_id() - quiet_from) / quiet, 1)

        frame = statistics.median(frames)
        result.update(
            {
                "key_latency_p50_ms": summary(keys)["p50"],
                "key_latency_p95_ms": summary(keys)["p95"],
                "key_latency_max_ms": summary(keys)["max"],
                "key_latency_target_p95_ms": 50,
                "key_latency_fleet_paused_ms": summary(idle_keys),
                "baseline_cat_key_latency_ms": summary(baseline_keys),
                "baseline_textual_key_latency_ms": summary(textual_keys),
                "tui_cpu_share": round(shares["tui"], 3),
                "tui_cpu_target": 0.30,
                "server_cpu_share": round(shares["server"], 3),
                "model_server_cpu_share": round(shares["model"], 3),
                "tmux_cpu_share": round(shares["tmux"], 3),
                "first_frame_s": round(frame, 3),
                "first_frame_all_s": [round(f, 3) for f in frames],
                "first_frame_target_s": 0.5,
                "fleet_shown_s": round(statistics.median(fleets), 3),
                "baseline_python_first_frame_s": round(statistics.median(baseline_frames), 3),
                "baseline_textual_first_frame_s": round(statistics.median(textual_frames), 3),
                "first_frame_added_over_python_s": round(
                    frame - statistics.median(baseline_frames), 3
                ),
                "shown_agent": agent_name,
            }
        )
    finally:
        with contextlib.suppress(Exception):
            tmux.keys("app", "Escape", "q")
        tmux.stop()
        if db is not None:
            db.db.close()
        if run_id:
            try:
                call("run.stop", timeout=10, run=run_id)
            except Exception as exc:
                log(f"run.stop: {type(exc).__name__}: {exc}")
        if server_pid:
            stop_server(server_pid)
    return result


def stop_server(pid: int) -> None:
    """Shut the server down; kill it if it has not gone within 10 s."""
    try:
        call("shutdown", timeout=10, force=True)
    except Exception as exc:
        log(f"shutdown: {type(exc).__name__}: {exc}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # start_server's child: reap it
        time.sleep(0.1)
    log(f"the server (pid {pid}) did not stop; killing it")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--rate", type=float, default=30.0, help="tokens/s per agent")
    parser.add_argument("--words", type=int, default=300, help="words per model turn")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after all stream")
    parser.add_argument("--window", type=float, default=20.0, help="CPU window, seconds")
    parser.add_argument("--keys", type=int, default=100, help="key latency samples")
    parser.add_argument("--launches", type=int, default=5, help="first-frame launches")
    parser.add_argument(
        "--tui-cmd",
        default=shlex.quote(str(Path(sys.executable).parent / "supervisor")),
        help="the command that opens the TUI (a shell command line)",
    )
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("bench/tui: tmux is not installed")

    # A plain kill must clean up too: turned into KeyboardInterrupt, it unwinds through the
    # same finally blocks as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    model = ModelServer()
    try:
        base_url = model.start(args.words, args.rate)
        point_default_model_at(base_url)
        log(f"scripted model at {base_url}, SUPERVISOR_HOME {HOME}")
        result = bench(args, model)
    finally:
        model.stop()
        shutil.rmtree(HOME, ignore_errors=True)
    result.update(
        {
            "agents": args.agents,
            "tokens_per_s_per_agent": args.rate,
            "terminal": f"tmux {WIDTH}x{HEIGHT}",
            "cpus": os.cpu_count(),
            "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "total_wall_s": round(time.perf_counter() - started, 1),
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
