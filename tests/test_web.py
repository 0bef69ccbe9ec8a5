"""`supervisor web`: the TUI in a browser tab, a client of the one supervisor process."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
from conftest import SUPERVISOR

from supervisor.server import running_pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_addresses(port: int) -> list[str]:
    """IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


async def test_web_serves_the_tui_on_loopback(home: Path) -> None:
    port = free_port()
    web = subprocess.Popen(
        [*SUPERVISOR, "web", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            page = ""
            while time.monotonic() < deadline:
                try:
                    async with session.get(base + "/") as response:
                        assert response.status == 200
                        page = await response.text()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            assert "supervisor" in page and "/ws" in page
            # Bound to loopback only by default.
            assert listening_addresses(port) == ["127.0.0.1"]

            # A browser tab: the websocket starts an app process that draws the TUI.
            screen = b""
            async with session.ws_connect(f"ws://127.0.0.1:{port}/ws?width=120&height=36") as ws:
                await ws.send_json(["resize", {"width": 120, "height": 36}])
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and b"Fleet" not in screen:
                    try:
                        message = await ws.receive(timeout=5)
                    except TimeoutError:
                        continue
                    if message.type == aiohttp.WSMsgType.BINARY:
                        screen += message.data
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        screen += message.data.encode()
                    elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                        break
            assert b"Fleet" in screen
        # The tab was a client of the supervisor process, which web started on demand.
        assert running_pid(home)
    finally:
        web.terminate()
        web.wait(30)


def test_web_on_a_taken_port_is_one_line(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*SUPERVISOR, "web", "--port", str(port)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert running_pid(home) is None  # nothing started for nothing
