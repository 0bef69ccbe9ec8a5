"""``supervisor hosts``: register remote machines, check them, run commands on them.

Thin like the rest of the CLI: parse, call :mod:`supervisor.hosts`, print. Bad input (a
malformed ``user@host:port``, an unknown name, a key file that is not a key, a host that
cannot be reached or whose key is not trusted) is one line and exit code 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click


def _progress(line: str) -> None:
    click.echo(click.style(line, dim=True), err=True)


def _ago(ts: float | None) -> str:
    from supervisor.hosts import ago

    return ago(ts, time.time())


@click.group()
def hosts() -> None:
    """Remote machines (GPU boxes) agents and recipes work on, over SSH."""


@hosts.command("add")
@click.argument("name")
@click.argument("target", metavar="USER@HOST[:PORT]")
@click.option(
    "--password",
    "ask_password",
    is_flag=True,
    help="Log in once with a password (prompted) to install supervisor's own key.",
)
@click.option(
    "--key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Private key to log in with (default: ~/.ssh/config, ssh-agent, ~/.ssh keys).",
)
@click.option("--jump", default="", metavar="USER@BASTION[:PORT]", help="Reach it through this.")
@click.option(
    "--trust",
    default="",
    metavar="SHA256:...",
    help="Trust this host key fingerprint without asking (for scripts).",
)
def hosts_add(
    name: str, target: str, ask_password: bool, key: Path | None, jump: str, trust: str
) -> None:
    """Register host NAME at USER@HOST[:PORT] and read its facts.

    Shows the host key's fingerprint and asks before trusting it (or takes --trust).
    With --password, installs an ed25519 key made for supervisor (kept in the data
    directory) and from then on logs in with that key only; the password is never stored.
    """
    from supervisor import hosts as h

    def ask_secret() -> str:
        if not sys.stdin.isatty():  # a script or a test pipes it: one line, never echoed
            click.echo(f"password for {target} (read from stdin)", err=True)
            return sys.stdin.readline().rstrip("\r\n")
        secret: str = click.prompt(
            f"password for {target}", hide_input=True, err=True, show_default=False
        )
        return secret

    def confirm(question: str) -> bool:
        try:
            return click.confirm(question, default=False, err=True)
        except click.Abort:
            return False

    host = h.add_host(
        name,
        target,
        password=ask_secret if ask_password else None,
        key=key,
        jump=jump,
        trust=trust,
        confirm=confirm,
        progress=_progress,
    )
    click.echo(f"added {host.name} ({host.target}), key {host.host_key}")
    click.echo(f"  {h.describe_facts(host.facts)}")


@hosts.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def hosts_ls(as_json: bool) -> None:
    """List registered hosts with what their last check found."""
    from supervisor import hosts as h

    found = h.list_hosts()
    if as_json:
        click.echo(json.dumps([x.summary() for x in found], indent=2))
        return
    if not found:
        click.echo("no hosts yet (add one: supervisor hosts add NAME user@host)")
        return
    for x in found:
        gpus = x.facts.get("gpus") or []
        state = {True: "reachable", False: "unreachable", None: "unchecked"}[x.reachable]
        state = "cordoned" if x.cordoned else state
        busy = sum(1 for g in gpus if g.get("busy"))
        gpu_text = f"{len(gpus)} GPUs, {len(gpus) - busy} free" if gpus else "no GPU"
        load = h.load_summary(x.facts, x.checked_at, time.time())
        click.echo(
            f"{x.name:<16} {x.target!s:<32} {state:<12} {gpu_text:<18} load {load:<12} "
            f"checked {_ago(x.checked_at)}"
        )
        if x.error:
            click.echo(f"{'':<16} {x.error}")


@hosts.command("check")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def hosts_check(names: tuple[str, ...], as_json: bool) -> None:
    """Connect to hosts (all, or NAMES) at once and refresh their facts.

    Exit code 1 when one is unreachable.
    """
    from supervisor import hosts as h

    chosen = [h.get_host(n) for n in names] if names else h.list_hosts()
    outcomes = h.check_hosts(chosen)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"name": o.name, "ok": o.ok, "detail": o.detail, "seconds": round(o.seconds, 3)}
                    for o in outcomes
                ],
                indent=2,
            )
        )
    else:
        for o in outcomes:
            mark = click.style("✓", fg="green") if o.ok else click.style("✗", fg="red")
            click.echo(f"{mark} {o.name:<16} {o.detail}  ({o.seconds:.1f}s)")
    if not all(o.ok for o in outcomes):
        sys.exit(1)


@hosts.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", type=float, default=600.0, help="Seconds before it is killed.")
def hosts_exec(name: str, command: tuple[str, ...], timeout: float) -> None:
    """Run COMMAND on host NAME (after --); its exit code is ours (124 on timeout)."""
    import shlex

    from supervisor import hosts as h

    host = h.get_host(name)
    line = command[0] if len(command) == 1 else shlex.join(command)
    conn = h.connect(host)
    try:
        result = h.run(conn, line, timeout=timeout, out=sys.stdout.buffer, err=sys.stderr.buffer)
    finally:
        conn.close()
    if result.timed_out:
        click.echo(f"error: killed after {timeout:g} s on {name}", err=True)
        sys.exit(124)
    sys.exit(result.exit_code if result.exit_code >= 0 else 255)


@hosts.command("rm")
@click.argument("name")
def hosts_rm(name: str) -> None:
    """Forget host NAME (its pinned key stays in known_hosts, which is only appended to)."""
    from supervisor import hosts as h

    host = h.remove_host(name)
    click.echo(f"removed {host.name} ({host.target})")


@hosts.command("cordon")
@click.argument("name")
def hosts_cordon(name: str) -> None:
    """Place no new sandboxes on host NAME; agents running there go on."""
    from supervisor import hosts as h

    h.set_cordon(name, True)
    click.echo(f"cordoned {name}: no new sandboxes go there (uncordon: supervisor hosts uncordon)")


@hosts.command("uncordon")
@click.argument("name")
def hosts_uncordon(name: str) -> None:
    """Let new sandboxes go to host NAME again."""
    from supervisor import hosts as h

    h.set_cordon(name, False)
    click.echo(f"uncordoned {name}: new sandboxes may go there")


@hosts.command("forward")
@click.argument("name")
@click.argument("remote_port", type=click.IntRange(1, 65535))
@click.argument("local_port", type=click.IntRange(0, 65535), required=False, default=0)
def hosts_forward(name: str, remote_port: int, local_port: int) -> None:
    """Forward 127.0.0.1:LOCAL_PORT to port REMOTE_PORT on host NAME until Ctrl-C.

    LOCAL_PORT defaults to REMOTE_PORT when free, else a free port (printed).
    """
    from supervisor import hosts as h

    host = h.get_host(name)
    local = h.free_local_port(local_port or remote_port, exact=bool(local_port))
    conn = h.connect(host)
    try:
        with conn.forward_local(local, remote_port, "127.0.0.1", "127.0.0.1"):
            # Fabric binds the listener in a thread of its own: say "forwarding" only once
            # the local port answers, so whoever reads the line can connect at once.
            _wait_listening(local, deadline_s=10)
            click.echo(f"forwarding 127.0.0.1:{local} -> {name}:{remote_port} (Ctrl-C stops)")
            sys.stdout.flush()
            h.watch(conn)
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()


def _wait_listening(port: int, deadline_s: float) -> None:
    import socket
    import time

    from supervisor.errors import InputError

    end = time.monotonic() + deadline_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > end:
                raise InputError(f"127.0.0.1:{port}: the forward did not start listening") from None
            time.sleep(0.05)
