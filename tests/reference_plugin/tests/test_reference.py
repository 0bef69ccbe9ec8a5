"""The reference plugin's own tests: through the real `supervisor` command, with the
scripted model server from supervisor.testing, as docs/plugins.md shows."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from supervisor.testing import Reply, ScriptedModelServer


def sv(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "SUPERVISOR_HOME": str(home), **env}
    return subprocess.run(
        ["supervisor", *args], capture_output=True, text=True, env=full, timeout=180
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_plugin_is_loaded(home: Path) -> None:
    out = sv(home, "plugins", "list", "--json")
    assert out.returncode == 0, out.stderr
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    assert plugins["reference"]["error"] is None
    assert "before_tool_call" in plugins["reference"]["hooks"]
    assert plugins["autoresearch"]["error"] is None


def test_tool_policy_and_observer_in_a_run(home: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("one two three four\n")
    events = tmp_path / "events.jsonl"
    script = [
        Reply(tool_calls=[("word_count", {"path": "notes.txt"})]),
        Reply(tool_calls=[("shell", {"command": "curl http://127.0.0.1:9/"})]),
        Reply(tool_calls=[("shell", {"command": "make deploy"})]),
        Reply(tool_calls=[("finish", {"summary": "counted"})]),
    ]
    with ScriptedModelServer(script) as server:
        for key, value in [
            ("models.scripted.model", "openai/scripted"),
            ("models.scripted.api_base", server.base_url),
            ("models.scripted.input_per_mtok", "0"),
            ("models.scripted.output_per_mtok", "0"),
        ]:
            assert sv(home, "config", "set", key, value).returncode == 0
        out = sv(
            home,
            "run",
            "--foreground",
            "-m",
            "scripted",
            "--sandbox",
            "local",
            "-w",
            str(work),
            "count the words",
            REFERENCE_EVENTS=str(events),
        )
        assert out.returncode == 0, out.stdout + out.stderr
        told = [m["content"] for m in server.requests[2]["messages"] if m["role"] == "tool"]
        assert told[0] == "notes.txt: 4 words"
        assert told[1].startswith("error: refused by a plugin:")
        assert "may not reach the network with curl" in told[1]
    seen = [json.loads(line) for line in events.read_text().splitlines()]
    assert all(e["id"] is not None for e in seen), "observers see committed events"
    ids = [e["id"] for e in seen]
    assert ids == sorted(ids)
    types = {e["type"] for e in seen}
    assert {"metric", "tool.rewritten", "tool.finished", "run.status"} <= types
    rewrite = next(e for e in seen if e["type"] == "tool.rewritten")
    assert "make deploy-dry" in rewrite["text"]


def test_recipe_with_python_step_keeps_its_own_table(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha beta\n")
    (folder / "b.txt").write_text("gamma delta epsilon\n")
    out = sv(home, "recipe", "run", "reference-tally", "--foreground", "-p", f"folder={folder}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "counted 5 words in 2 files" in out.stdout
    listed = sv(home, "reference", "tallies")
    assert listed.stdout.splitlines() == ["tally\ta.txt\t2", "tally\tb.txt\t3"]
    logs = sv(home, "logs", "--help")
    assert logs.returncode == 0


def test_bad_recipe_input_is_one_line(home: Path, tmp_path: Path) -> None:
    out = sv(
        home,
        "recipe",
        "run",
        "reference-tally",
        "--foreground",
        "-p",
        f"folder={tmp_path / 'missing'}",
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "does not exist" in out.stderr
