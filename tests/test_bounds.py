"""Settings and options that would switch a limit off are refused where they are given:
`config set`, a SUPERVISOR_* variable, the config file when it is read, a CLI option."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import run_cli


def _one_line_refusal(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result
    err = result.stderr
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert "Traceback" not in err and "Usage:" not in err


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("sandbox.pids", "-1", "sandbox.pids must be from 16 to 4194304"),
        ("sandbox.pids", "99999999999999999999", "sandbox.pids must be from 16"),
        ("sandbox.cpus", "0", "sandbox.cpus must be from 0.01 to 1024"),
        ("sandbox.cpus", "nan", "sandbox.cpus must be a finite number"),
        ("sandbox.memory", "lots", "sandbox.memory must be a size such as 512m or 2g"),
        ("sandbox.memory", "1k", "sandbox.memory must be at least 6m"),
        ("budget.daily_usd", "-5", "budget.daily_usd must be at least 0"),
        ("agent.max_steps", "0", "agent.max_steps must be at least 1"),
        ("models.x.rpm", "0", "models.x.rpm must be at least 1"),
    ],
)
def test_config_set_refuses_a_limit_that_switches_itself_off(
    home: Path, key: str, value: str, needle: str
) -> None:
    result = run_cli("config", "set", key, value)
    _one_line_refusal(result, needle)
    assert not (home / "config.toml").exists()


def test_good_limits_are_still_accepted() -> None:
    for key, value in [("sandbox.memory", "1.5g"), ("sandbox.cpus", "0.5"), ("sandbox.pids", "64")]:
        assert run_cli("config", "set", key, value).returncode == 0


def test_environment_variable_that_disables_a_limit_is_refused() -> None:
    result = run_cli("config", "show", env={"SUPERVISOR_SANDBOX_PIDS": "-1"})
    _one_line_refusal(result, "environment SUPERVISOR_SANDBOX_PIDS: sandbox.pids must be")


def test_config_file_with_a_disabled_limit_is_refused_when_read(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "config.toml").write_text("[sandbox]\nmemory = 'lots'\n")
    result = run_cli("config", "show")
    _one_line_refusal(result, f"{home / 'config.toml'}: sandbox.memory must be a size")


def test_model_endpoint_without_a_model_is_refused(home: Path) -> None:
    result = run_cli("config", "set", "models.x.api_base", "http://127.0.0.1:9/v1")
    _one_line_refusal(result, "models.x has no 'model'")
    assert not (home / "config.toml").exists()
    # In order it works; removing the model then would leave the endpoint dangling.
    assert run_cli("config", "set", "models.x.model", "openai/m").returncode == 0
    assert run_cli("config", "set", "models.x.api_base", "http://127.0.0.1:9/v1").returncode == 0
    before = (home / "config.toml").read_text()
    _one_line_refusal(run_cli("config", "unset", "models.x.model"), "models.x has no 'model'")
    assert (home / "config.toml").read_text() == before
    # A file written by hand is refused when read, naming the file.
    (home / "config.toml").write_text("[models.y]\napi_base = 'http://127.0.0.1:9/v1'\n")
    _one_line_refusal(run_cli("config", "show"), "models.y has no 'model'")


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--max-cost", "-1", "--max-cost"),
        ("--max-cost", "nan", "--max-cost"),
        ("--max-steps", "-5", "--max-steps"),
    ],
)
def test_run_refuses_negative_limits(home: Path, option: str, value: str, needle: str) -> None:
    result = run_cli("run", "task", option, value, "--foreground")
    assert result.returncode == 2, result
    assert f"Invalid value for '{option}': must be" in result.stderr
    assert not (home / "supervisor.db").exists()
