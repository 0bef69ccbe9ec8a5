from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, run_cli

import supervisor


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"supervisor, version {supervisor.__version__}"


def test_version_matches_pyproject() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == supervisor.__version__


def test_help_lists_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("doctor", "plugins", "config"):
        assert command in result.stdout


def test_help_imports_no_heavy_library() -> None:
    """`supervisor --help` stays fast: litellm, docker and sqlite-utils load only on use."""
    code = (
        "import sys; sys.argv = ['supervisor', '--help']\n"
        "from supervisor.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('litellm', 'docker', 'sqlite_utils', 'fabric', 'textual')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def test_unknown_command_exits_2() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_doctor_json_reports_every_check() -> None:
    result = run_cli("doctor", "--json")
    payload = json.loads(result.stdout)
    names = {c["name"] for c in payload["checks"]}
    assert {"docker engine", "data directory", "sqlite", "database", "plugins"} <= names
    assert "model credentials" in names
    sqlite = next(c for c in payload["checks"] if c["name"] == "sqlite")
    assert sqlite["ok"] and "FTS5" in sqlite["detail"]
    assert result.returncode == (0 if payload["ok"] else 1)


def test_doctor_without_docker_engine_fails_with_fix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("doctor", env={"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"})
    assert result.returncode == 1
    line = next(ln for ln in result.stdout.splitlines() if "docker engine" in ln)
    assert line.startswith("✗")
    assert "--sandbox local" in result.stdout  # the fix is printed


def test_doctor_names_credentials_found() -> None:
    result = run_cli("doctor", "--json", env={"ANTHROPIC_API_KEY": "sk-ant-test"})
    check = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "model credentials")
    assert check["ok"] and "anthropic" in check["detail"]
    assert "sk-ant-test" not in result.stdout


def test_doctor_unwritable_data_dir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("doctor", env={"SUPERVISOR_HOME": str(blocker / "home")})
    assert result.returncode == 1
    line = next(ln for ln in result.stdout.splitlines() if "data directory" in ln)
    assert line.startswith("✗") and str(blocker) in line
    assert blocker.read_text() == "not a directory"


def test_doctor_reports_corrupt_database(home) -> None:  # type: ignore[no-untyped-def]
    home.mkdir(parents=True)
    db = home / "supervisor.db"
    db.write_bytes(b"garbage, not sqlite" * 100)
    result = run_cli("doctor")
    assert result.returncode == 1
    assert "not a SQLite database" in result.stdout
    assert db.read_bytes() == b"garbage, not sqlite" * 100
