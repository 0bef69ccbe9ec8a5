from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli


def test_config_path_follows_supervisor_home(home: Path) -> None:
    result = run_cli("config", "path")
    assert result.stdout.strip() == str(home / "config.toml")


def test_set_show_unset_roundtrip(home: Path) -> None:
    assert run_cli("config", "set", "sandbox.pool_size", "5").returncode == 0
    assert "pool_size = 5" in (home / "config.toml").read_text()
    shown = json.loads(run_cli("config", "show", "--json").stdout)
    assert shown["sandbox.pool_size"] == 5
    text = run_cli("config", "show").stdout
    assert f"sandbox.pool_size = 5  # {home / 'config.toml'}" in text
    assert run_cli("config", "unset", "sandbox.pool_size").returncode == 0
    shown = json.loads(run_cli("config", "show", "--json").stdout)
    assert shown["sandbox.pool_size"] == 2


def test_environment_overrides_file() -> None:
    run_cli("config", "set", "sandbox.memory", "4g")
    result = run_cli("config", "show", env={"SUPERVISOR_SANDBOX_MEMORY": "8g"})
    assert 'sandbox.memory = "8g"  # env SUPERVISOR_SANDBOX_MEMORY' in result.stdout


def test_list_setting_from_comma_separated_text() -> None:
    run_cli("config", "set", "sandbox.env_allow", "LANG, TZ")
    assert json.loads(run_cli("config", "show", "--json").stdout)["sandbox.env_allow"] == [
        "LANG",
        "TZ",
    ]


def test_unknown_key_is_one_line_exit_2() -> None:
    result = run_cli("config", "set", "sandbox.memroy", "1g")
    assert result.returncode == 2
    assert (
        result.stderr
        == "error: unknown setting 'sandbox.memroy' (did you mean 'sandbox.memory'?)\n"
    )


def test_wrong_type_is_refused_and_file_untouched(home: Path) -> None:
    run_cli("config", "set", "sandbox.pids", "100")
    before = (home / "config.toml").read_text()
    result = run_cli("config", "set", "sandbox.pids", "lots")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "sandbox.pids must be an integer" in result.stderr
    assert (home / "config.toml").read_text() == before


def test_unknown_key_in_file_names_file(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[sandbox]\nmemroy = '1g'\n")
    result = run_cli("config", "show")
    assert result.returncode == 2
    assert str(home / "config.toml") in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_type_in_file(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[sandbox]\ncpus = 'many'\n")
    result = run_cli("config", "show")
    assert result.returncode == 2
    assert "sandbox.cpus must be a number" in result.stderr


def test_corrupt_toml_is_one_line(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[sandbox\nmemory = \n")
    result = run_cli("config", "set", "model", "x")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {home / 'config.toml'}: not valid TOML")
    assert result.stderr.count("\n") == 1
    assert (home / "config.toml").read_text() == "[sandbox\nmemory = \n"


def test_bad_environment_value_names_variable() -> None:
    result = run_cli("config", "show", env={"SUPERVISOR_SANDBOX_CPUS": "two"})
    assert result.returncode == 2
    assert "SUPERVISOR_SANDBOX_CPUS" in result.stderr


def test_unrelated_supervisor_variables_are_ignored() -> None:
    # supervisord exports SUPERVISOR_* variables of its own to its children.
    result = run_cli("config", "show", env={"SUPERVISOR_PROCESS_NAME": "web"})
    assert result.returncode == 0
