"""Bad input at the command line is one line on stderr and exit code 2: no usage block,
no doubled prefix, nothing written beside a file that was refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["planet"], "No such command 'planet'"),
        (["--bogus"], "No such option '--bogus'"),
        (["agents", "ls", "--bogus"], "No such option '--bogus'"),
        (["run", "x", "-n", "0"], "0 is not in the range 1<=x<=1000"),
        (["costs", "--by", "planet"], "'planet' is not one of"),
        (["config", "set", "sandbox.pids", "-5"], "sandbox.pids must be from 16"),
        (["run", "x", "--max-steps", "-5"], "--max-steps': must be at least 0, got -5"),
        (["run", "x", "--max-cost", "-1"], "--max-cost': must be at least 0, got -1"),
        (["run"], "Missing argument 'TASK'"),
    ],
)
def test_bad_arguments_are_one_line(home: Path, args: list[str], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and needle in result.stderr, result.stderr
    assert "Usage:" not in result.stderr and result.stdout == ""
    assert not home.exists() or not (home / "supervisor.db").exists()


def _files(home: Path) -> set[str]:
    return {p.name for p in home.iterdir()}


@pytest.mark.parametrize("command", [["server", "start"], ["run", "hello", "-d"]])
def test_corrupt_config_when_starting_the_supervisor_process(
    home: Path, command: list[str]
) -> None:
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text("[sandbox\n")
    result = run_cli(*command)
    assert result.returncode == 2, result
    assert result.stderr.count("error:") == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"{home / 'config.toml'}: not valid TOML" in result.stderr
    assert _files(home) == {"config.toml"}


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"garbage\n", "not a SQLite database"),
        (b"SQLite format 3\x00" + bytes(range(256)) * 16, "database is corrupt or unreadable"),
    ],
    ids=["not-sqlite", "corrupt"],
)
@pytest.mark.parametrize("command", [["server", "start"], ["run", "hello", "-d"], ["agents", "ls"]])
def test_refused_database_is_exit_2_and_left_alone(
    home: Path, command: list[str], content: bytes, needle: str
) -> None:
    home.mkdir(mode=0o700)
    (home / "supervisor.db").write_bytes(content)
    result = run_cli(*command)
    assert result.returncode == 2, result
    assert result.stderr.count("error:") == 1 and result.stderr.count("\n") == 1, result.stderr
    assert needle in result.stderr
    assert _files(home) == {"supervisor.db"}, "nothing new beside a refused database"
    assert (home / "supervisor.db").read_bytes() == content
