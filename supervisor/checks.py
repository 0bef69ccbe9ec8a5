"""Built-in plugin: the core checks of ``supervisor doctor``.

Registered through ``register_checks`` like any plugin's checks; the Docker checks live
with the Docker sandbox plugin.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable

from supervisor import Check, CheckResult, hookimpl
from supervisor.types import PROVIDER_KEYS

# Environment variables litellm reads for each provider's credentials.


def providers_with_credentials(environ: dict[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return [p for p, names in PROVIDER_KEYS.items() if any(env.get(n) for n in names)]


def check_data_dir() -> CheckResult:
    from supervisor import config

    path = config.data_dir()
    fix = f"make {path} writable by you, or set SUPERVISOR_HOME to a folder you own"
    try:
        config.ensure_data_dir()
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
    except Exception as exc:
        return CheckResult(False, f"{path} is not writable ({exc})", fix)
    return CheckResult(True, str(path))


def check_sqlite() -> CheckResult:
    version = sqlite3.sqlite_version
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    except sqlite3.OperationalError:
        return CheckResult(
            False,
            f"SQLite {version} without FTS5",
            "use a Python whose sqlite3 module is built with FTS5 (python.org and distro "
            "builds are)",
        )
    finally:
        conn.close()
    return CheckResult(True, f"SQLite {version}, FTS5 available")


def check_database() -> CheckResult:
    from supervisor import config
    from supervisor.errors import StoreError
    from supervisor.store import Store

    path = config.db_path()
    if not path.exists():
        return CheckResult(True, f"{path} (created on first use)")
    try:
        Store.open(path).close()
    except StoreError as exc:
        return CheckResult(
            False, str(exc), "move the file aside; supervisor starts a new one in its place"
        )
    return CheckResult(True, str(path))


def check_credentials() -> CheckResult:
    from supervisor import config

    found = providers_with_credentials()
    model = config.load()["model"]
    if found:
        return CheckResult(True, "credentials for " + ", ".join(found))
    if model:
        return CheckResult(True, f"no provider keys; default model {model!r} is configured")
    return CheckResult(
        False,
        "no model credentials found",
        "export a provider key (e.g. ANTHROPIC_API_KEY or OPENAI_API_KEY), or point "
        "`supervisor config set model hosted_vllm/NAME` at a self-hosted server",
    )


def check_plugins() -> CheckResult:
    from supervisor import config
    from supervisor.plugins import get_plugins, mark_run_failures

    plugins = get_plugins()
    mark_run_failures(plugins, config.data_dir() / "supervisor.db")
    loaded = [i.name for i in plugins.info.values() if i.ok]
    failed = plugins.failed
    if failed:
        detail = "; ".join(f"{i.name}: {i.error}" for i in failed)
        return CheckResult(
            False,
            f"{len(loaded)} loaded, {len(failed)} failed — {detail}",
            "fix or uninstall the failed plugin, or add it to plugins.disabled",
        )
    return CheckResult(True, f"{len(loaded)} loaded: " + ", ".join(loaded))


@hookimpl
def register_checks(register: Callable[[Check], None]) -> None:
    register(Check("data directory", check_data_dir))
    register(Check("sqlite", check_sqlite))
    register(Check("database", check_database))
    register(Check("model credentials", check_credentials, required=False))
    register(Check("plugins", check_plugins))
