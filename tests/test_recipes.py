"""Recipes: validation with file and line, run with checkpoints, resume, scaffolding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_kit import scripted
from conftest import run_cli

from supervisor import recipes
from supervisor.testing import Reply

GOOD = """---
name: demo
description: A demo recipe.
parameters:
  greeting: {type: str, default: hello, help: what to write}
  count: {type: int, default: 2, help: how many lines}
steps:
  - id: write
    kind: shell
    run: "for i in $(seq {count}); do echo {greeting}; done > out.txt"
    check: "test $(wc -l < out.txt) -eq {count}"
  - id: gate
    kind: shell
    depends: [write]
    run: "echo checking"
    check: "test -f {run_dir}/unlock"
  - id: work
    kind: agent
    depends: [gate]
    prompt: "Say {greeting}."
---
# Demo

Write the greeting, then let an agent say it.
"""


def write(tmp_path: Path, text: str, name: str = "demo.md") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("mutation", "line", "message"),
    [
        (
            ('kind: shell\n    run: "for', 'kind: shel\n    run: "for'),
            9,
            "kind must be one of agent, python, shell, got 'shel'",
        ),
        (("  - id: gate\n", "  - idd: gate\n"), 12, "unknown key 'idd'"),
        (("depends: [write]", "depends: [nope]"), 14, "depends on unknown step 'nope'"),
        (
            ("count: {type: int, default: 2", "count: {type: int, default: two"),
            6,
            "default 'two' is not int",
        ),
        (("name: demo", "name: demo\nflavour: sweet"), 3, "unknown key 'flavour'"),
        (("steps:\n", "steps:\n  - [unclosed\n"), 9, "invalid YAML"),
    ],
)
def test_errors_name_file_and_line(
    tmp_path: Path, mutation: tuple[str, str], line: int, message: str
) -> None:
    path = write(tmp_path, GOOD.replace(*mutation, 1))
    with pytest.raises(recipes.RecipeError) as info:
        recipes.parse(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert message in str(info.value)


def test_cycle_and_missing_frontmatter(tmp_path: Path) -> None:
    cyclic = GOOD.replace(
        "  - id: write\n    kind: shell\n", "  - id: write\n    kind: shell\n    depends: [work]\n"
    )
    with pytest.raises(recipes.RecipeError, match="cycle"):
        recipes.parse(write(tmp_path, cyclic))
    with pytest.raises(recipes.RecipeError, match=r":1: a recipe starts with a '---'"):
        recipes.parse(write(tmp_path, "# just markdown\n"))


def test_cli_reports_bad_recipe_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("kind: agent", "kind: robot"))
    result = run_cli("recipe", "run", str(path), "--dry-run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"{path}:" in result.stderr and "robot" in result.stderr


def test_parameters_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    bad = run_cli("recipe", "run", str(path), "-p", "count=many", "--dry-run")
    assert bad.returncode == 2 and "count must be int" in bad.stderr
    unknown = run_cli("recipe", "run", str(path), "-p", "colour=red", "--dry-run")
    assert unknown.returncode == 2 and "no parameter 'colour'" in unknown.stderr
    ok = run_cli("recipe", "run", str(path), "-p", "count=3", "--dry-run")
    assert ok.returncode == 0 and "count = 3" in ok.stdout and "3. work [agent]" in ok.stdout


def test_failed_check_stops_and_resume_continues(tmp_path: Path, home: Path) -> None:
    path = write(tmp_path, GOOD)
    with scripted(
        [Reply(text="hello!", tool_calls=[("finish", {"summary": "said hello"})])]
    ) as server:
        first = run_cli("recipe", "run", str(path), "-p", "count=3")
        assert first.returncode == 1
        assert "✓ write" in first.stdout
        assert "✗ step gate failed: check `test -f" in first.stdout and "exited 1" in first.stdout
        run_id = first.stdout.split()[1].rstrip(":")
        assert f"supervisor recipe resume {run_id}" in first.stderr
        (home / "runs" / run_id / "unlock").write_text("")
        second = run_cli("recipe", "resume", run_id)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "✓ write (done earlier)" in second.stdout and "✓ gate" in second.stdout
        assert "✓ work" in second.stdout
    assert (home / "runs" / run_id / "out.txt").read_text() == "hello\n" * 3
    # The agent step got the prompt and the playbook.
    task = server.requests[0]["messages"][1]["content"]
    assert task.startswith("Say hello.") and "let an agent say it" in task
    again = run_cli("recipe", "resume", run_id)
    assert again.returncode == 2 and "already finished" in again.stderr


def test_recipe_new_is_accepted_by_dry_run(tmp_path: Path) -> None:
    made = run_cli("recipe", "new", "my-job", "--dir", str(tmp_path / "recipes"))
    assert made.returncode == 0
    path = tmp_path / "recipes" / "my-job.md"
    assert path.exists()
    dry = run_cli("recipe", "run", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "1. prepare [shell]" in dry.stdout and "2. work [agent]" in dry.stdout
    with_plugin = run_cli("recipe", "new", "gpu-job", "--plugin", "--dir", str(tmp_path / "r2"))
    assert with_plugin.returncode == 0
    module = tmp_path / "supervisor-gpu-job" / "supervisor_gpu_job" / "__init__.py"
    assert "register_steps" in module.read_text()
    assert recipes.parse(tmp_path / "r2" / "gpu-job.md").steps[0].run == "gpu-job.hello"


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    write(tmp_path / "recipes", GOOD.replace("A demo recipe.", "The project's own."), "demo.md")
    listed = json.loads(run_cli("recipe", "list", "--json", cwd=tmp_path).stdout)
    demo = next(r for r in listed if r["name"] == "demo")
    assert demo["description"] == "The project's own."
    assert run_cli("recipe", "show", "demo", cwd=tmp_path).stdout.startswith(
        "demo: The project's own."
    )
    missing = run_cli("recipe", "show", "nope")
    assert missing.returncode == 2 and "no recipe named 'nope'" in missing.stderr


def test_a_relative_path_parameter_means_where_the_person_is(tmp_path: Path) -> None:
    """The supervisor process runs the recipe in another folder: `-p src=data` must still
    mean ./data of the person's shell."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "marker.txt").write_text("found me")
    path = tmp_path / "read.md"
    path.write_text(
        "---\nname: read\ndescription: Read a file from a folder.\nparameters:\n"
        "  src: {type: path, default: '', help: a folder}\n"
        'steps:\n  - id: show\n    kind: shell\n    run: "cat {src}/marker.txt"\n---\n# Read\n'
    )
    result = run_cli("recipe", "run", "read.md", "-p", "src=data", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = result.stdout.split()[1].rstrip(":")
    from supervisor.store import open_default

    store = open_default()
    try:
        (step,) = store.db.query("SELECT output FROM steps WHERE run_id = ?", [run_id])
    finally:
        store.close()
    assert "found me" in step["output"]
