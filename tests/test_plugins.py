"""Third-party plugins, installed for real into a temporary environment with pip."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from supervisor import hookimpl, hookspecs
from supervisor.plugins import Plugins
from supervisor.types import Check, CheckResult, ToolCall

TINY = '''
import click
from supervisor import Check, CheckResult, hookimpl

@hookimpl
def register_commands(cli):
    @cli.command()
    def hello():
        """Say hello from a plugin."""
        click.echo("hello from tiny")

@hookimpl
def register_checks(register):
    register(Check("tiny check", lambda: CheckResult(True, "tiny is fine")))
'''

PLUGINS = {
    "tiny": ("supervisor_tiny", TINY),
    "explodes": ("supervisor_explodes", "raise RuntimeError('boom at import')\n"),
    "typo": (
        "supervisor_typo",
        "from supervisor import hookimpl\n\n@hookimpl\ndef register_tool(register):\n    pass\n",
    ),
    "raiser": (
        "supervisor_raiser",
        "from supervisor import hookimpl\n\n@hookimpl\ndef register_checks(register):\n"
        "    raise ValueError('bad check registry')\n",
    ),
}


def build_wheel(
    dest: Path, dist: str, version: str, module: str, source: str, entry_points: dict[str, str]
) -> Path:
    """A minimal, valid wheel: one module plus dist-info with an entry_points.txt."""
    stem = dist.replace("-", "_")  # wheel file and dist-info names use the normalized form
    info = f"{stem}-{version}.dist-info"
    files = {
        f"{module}.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        f"{info}/entry_points.txt": "[supervisor]\n"
        + "".join(f"{k} = {v}\n" for k, v in entry_points.items()),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    path = dest / f"{stem}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment that sees supervisor, with the test plugins pip-installed."""
    root = tmp_path_factory.mktemp("env")
    env = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    site = Path(
        subprocess.run(
            [
                env / "bin" / "python",
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # Make supervisor (and its dependencies) importable, as if installed in this env too.
    ours = sysconfig.get_paths()["purelib"]
    (site / "supervisor_under_test.pth").write_text(
        f"import site; site.addsitedir({ours!r}); site.addsitedir({str(REPO)!r})\n"
    )
    wheels = [
        build_wheel(root, f"supervisor-{name}", "0.3.0", module, source, {name: module})
        for name, (module, source) in PLUGINS.items()
    ]
    wheels.append(
        build_wheel(
            root,
            "supervisor-ghost",
            "1.0",
            "ghost_helper",
            "",
            {"ghost": "supervisor_ghost_missing"},
        )
    )
    subprocess.run(
        [
            env / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            *map(str, wheels),
        ],
        check=True,
    )
    return env


def cli(
    env: Path, *args: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **(extra or {})}
    return subprocess.run(
        [env / "bin" / "python", "-m", "supervisor.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )


def test_installed_plugin_is_listed(plugin_env: Path) -> None:
    result = cli(plugin_env, "plugins", "list", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    tiny = plugins["tiny"]
    assert tiny["ok"] and tiny["source"] == "entry point" and tiny["version"] == "0.3.0"
    assert tiny["hooks"] == ["register_checks", "register_commands"]
    assert plugins["checks"]["source"] == "built-in" and plugins["docker"]["ok"]


def test_broken_plugins_are_reported_and_cli_keeps_working(plugin_env: Path) -> None:
    plugins = {
        p["name"]: p for p in json.loads(cli(plugin_env, "plugins", "list", "--json").stdout)
    }
    assert "boom at import" in plugins["explodes"]["error"]
    assert "supervisor_ghost_missing" in plugins["ghost"]["error"]
    assert "unknown hook 'register_tool'" in plugins["typo"]["error"]
    text = cli(plugin_env, "plugins", "list").stdout
    assert "✗ explodes" in text and "✓ tiny" in text
    hello = cli(plugin_env, "hello")
    assert hello.returncode == 0 and hello.stdout == "hello from tiny\n"


def test_plugin_raising_in_hook_shows_in_doctor(plugin_env: Path) -> None:
    result = cli(plugin_env, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["tiny check"]["ok"]
    assert not checks["plugins"]["ok"]
    assert (
        "raiser: raised in register_checks: ValueError: bad check registry"
        in checks["plugins"]["detail"]
    )
    assert result.returncode == 1


def test_allow_list_limits_entry_points(plugin_env: Path) -> None:
    result = cli(plugin_env, "plugins", "list", "--json", extra={"SUPERVISOR_LOAD_PLUGINS": "tiny"})
    names = {p["name"] for p in json.loads(result.stdout)}
    assert names == {"autoresearch", "checks", "docker", "local", "ssh", "team", "tools", "tiny"}
    none = cli(plugin_env, "plugins", "list", "--json", extra={"SUPERVISOR_LOAD_PLUGINS": ""})
    assert {p["name"] for p in json.loads(none.stdout)} == {
        "autoresearch",
        "checks",
        "docker",
        "local",
        "ssh",
        "team",
        "tools",
    }


def test_disabled_in_config(plugin_env: Path) -> None:
    cli(plugin_env, "config", "set", "plugins.disabled", "tiny,explodes")
    names = {p["name"] for p in json.loads(cli(plugin_env, "plugins", "list", "--json").stdout)}
    assert "tiny" not in names and "explodes" not in names and "typo" in names


def test_trace_prints_hook_calls(plugin_env: Path) -> None:
    result = cli(
        plugin_env,
        "doctor",
        extra={"SUPERVISOR_TRACE_HOOKS": "1", "SUPERVISOR_LOAD_PLUGINS": "tiny"},
    )
    assert "hook register_commands -> tiny" in result.stderr
    assert "hook register_checks -> checks" in result.stderr


# -- In-process: every hook is called with the arguments its spec promises.


class Everything:
    """A plugin implementing every hook, recording what it received."""

    def __init__(self) -> None:
        self.seen: dict[str, object] = {}

    @hookimpl
    def register_commands(self, cli: object) -> None:
        self.seen["register_commands"] = cli

    @hookimpl
    def register_tools(self, register):  # type: ignore[no-untyped-def]
        from supervisor import Tool

        async def run(ctx: object, **kw: object) -> str:
            return "ok"

        register(Tool("noop", "does nothing", {"type": "object", "properties": {}}, run))

    @hookimpl
    def register_sandboxes(self, register):  # type: ignore[no-untyped-def]
        from supervisor import SandboxBackend

        register(SandboxBackend("null", factory=dict, isolated=False))

    @hookimpl
    def register_recipes(self, register):  # type: ignore[no-untyped-def]
        register(Path("/tmp/x.md"))

    @hookimpl
    def register_models(self, register):  # type: ignore[no-untyped-def]
        from supervisor import ModelSpec

        register(ModelSpec("qwen", "hosted_vllm/Qwen3-VL-8B", api_base="http://127.0.0.1:8000/v1"))

    @hookimpl
    def register_checks(self, register):  # type: ignore[no-untyped-def]
        register(Check("always", lambda: CheckResult(True, "fine")))

    @hookimpl
    def register_steps(self, register):  # type: ignore[no-untyped-def]
        register("everything.noop", lambda ctx: None)

    @hookimpl
    def before_tool_call(self, call: ToolCall, agent: object) -> str | None:
        return "vetoed" if call.name == "shell" else None

    @hookimpl
    def on_event(self, event: object) -> None:
        self.seen["on_event"] = event


def test_every_hook_reaches_a_plugin() -> None:
    from supervisor.events import Event

    plugins = Plugins(builtins={}, entry_points=False)
    plugin = Everything()
    plugins.pm.register(plugin, name="everything")
    names = [n for n in dir(hookspecs) if n.startswith(("register_", "before_", "on_"))]
    assert set(names) == {
        "register_commands",
        "register_tools",
        "register_sandboxes",
        "register_recipes",
        "register_models",
        "register_checks",
        "register_steps",
        "before_tool_call",
        "on_event",
    }
    import click

    group = click.Group()
    plugins.call("register_commands", cli=group)
    assert plugin.seen["register_commands"] is group
    assert [t.name for _, t in plugins.collect("register_tools")] == ["noop"]
    assert [b.name for _, b in plugins.collect("register_sandboxes")] == ["null"]
    assert plugins.collect("register_recipes") == [("everything", Path("/tmp/x.md"))]
    assert plugins.collect("register_models")[0][1].alias == "qwen"
    assert plugins.collect("register_checks")[0][1].name == "always"
    assert plugins.collect("register_steps")[0][1][0] == "everything.noop"
    veto = plugins.call(
        "before_tool_call",
        firstresult=True,
        call=ToolCall("shell", {"command": "rm -rf /"}),
        agent=None,
    )
    assert veto == ["vetoed"]
    assert (
        plugins.call(
            "before_tool_call", firstresult=True, call=ToolCall("read_file", {}), agent=None
        )
        == []
    )
    event = Event(type="log", text="x")
    plugins.call("on_event", event=event)
    assert plugin.seen["on_event"] is event


def test_a_raising_plugin_does_not_stop_the_others() -> None:
    class Bad:
        @hookimpl
        def register_checks(self, register):  # type: ignore[no-untyped-def]
            register(Check("half", lambda: CheckResult(True, "")))
            raise RuntimeError("oops")

    plugins = Plugins(builtins={}, entry_points=False)
    plugins._add("good", "built-in", Everything)
    plugins._add("bad", "built-in", Bad)
    items = plugins.collect("register_checks")
    assert [(n, c.name) for n, c in items] == [("good", "always")]  # nothing half-registered
    assert plugins.info["bad"].error == "raised in register_checks: RuntimeError: oops"


def test_wrapper_implementations_are_refused() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def on_event(self, event):  # type: ignore[no-untyped-def]
            return (yield)

    plugins = Plugins(builtins={}, entry_points=False)
    plugins._add("wrapper", "built-in", Wrapper)
    assert "wrapper implementations are not supported" in (plugins.info["wrapper"].error or "")
