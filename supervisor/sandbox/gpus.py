"""GPU slots: which agent or experiment holds which GPU of this machine.

The engine owns one :class:`GpuSlots`; whoever runs work on a GPU (a sandbox given
``SandboxSpec.gpus``, an experiment loop) acquires device ids from it first and releases
them after, so that no device is ever held by two holders at once. Acquirers wait, in
order of arrival, until enough devices are free.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from supervisor.sandbox.base import SandboxError


def detect_gpus() -> list[str]:
    """This machine's GPU device ids (``nvidia-smi`` indices); none without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


class GpuSlots:
    """Hands out GPU device ids, each to one holder at a time.

    ``devices`` defaults to what :func:`detect_gpus` finds, looked up on first use.
    """

    def __init__(self, devices: list[str] | None = None) -> None:
        self._devices = list(devices) if devices is not None else None
        self._held: dict[str, str] = {}  # device -> holder
        self._cond: asyncio.Condition | None = None
        # Waiting acquirers and the devices each may take, first come first served.
        self._queue: list[tuple[object, frozenset[str]]] = []

    @property
    def devices(self) -> list[str]:
        if self._devices is None:
            self._devices = detect_gpus()
        return list(self._devices)

    def free(self, among: Sequence[str] = ()) -> list[str]:
        return [d for d in self.devices if d not in self._held and (not among or d in among)]

    def holders(self) -> dict[str, str]:
        """Which holder has each held device."""
        return dict(self._held)

    async def acquire(self, holder: str, count: int = 1, among: Sequence[str] = ()) -> list[str]:
        """Wait until ``count`` devices (of ``among``, when given) are free, and give them
        to ``holder``."""
        if count < 1:
            raise ValueError("count must be at least 1")
        if self._devices is None:
            await asyncio.to_thread(lambda: self.devices)  # nvidia-smi, once, off the loop
        unknown = [d for d in among if d not in self.devices]
        if unknown:
            raise SandboxError(f"{holder} asked for GPU {', '.join(unknown)}; there is none")
        if count > len(among or self.devices):
            have = len(among or self.devices)
            raise SandboxError(
                f"{holder} asked for {count} GPU{'s' * (count > 1)}; this machine has {have}"
            )
        if self._cond is None:
            self._cond = asyncio.Condition()
        wanted = frozenset(among or self.devices)
        ticket = (object(), wanted)
        async with self._cond:
            self._queue.append(ticket)
            try:
                await self._cond.wait_for(
                    lambda: self._first_for(ticket) and len(self.free(among)) >= count
                )
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may fit now
            taken = self.free(among)[:count]
            for device in taken:
                self._held[device] = holder
            return taken

    def _first_for(self, ticket: tuple[object, frozenset[str]]) -> bool:
        """No earlier acquirer waits for any device this one could take: first come, first
        served per device, so a loop waiting for its own GPU never holds up one whose GPU
        is free."""
        for earlier in self._queue:
            if earlier is ticket:
                return True
            if earlier[1] & ticket[1]:
                return False
        return True

    def take(self, holder: str, devices: Sequence[str]) -> None:
        """Give ``devices``, all free now, to ``holder`` without waiting (a placement that
        chose them); raises if one is held."""
        held = [d for d in devices if d in self._held]
        if held:
            raise SandboxError(f"GPU {', '.join(held)} is held by {self._held[held[0]]}")
        for device in devices:
            self._held[device] = holder

    async def release(self, holder: str) -> list[str]:
        """Free every device ``holder`` has; which ones."""
        freed = self.drop(holder)
        await self.notify()
        return freed

    def drop(self, holder: str) -> list[str]:
        """Free every device ``holder`` has at once (call :meth:`notify` after, for the
        acquirers waiting)."""
        freed = [d for d, h in self._held.items() if h == holder]
        for device in freed:
            del self._held[device]
        return freed

    async def notify(self) -> None:
        if self._cond is not None:
            async with self._cond:
                self._cond.notify_all()

    @asynccontextmanager
    async def hold(
        self, holder: str, count: int = 1, among: Sequence[str] = ()
    ) -> AsyncIterator[list[str]]:
        """``async with slots.hold("agent-1") as devices:`` — released on exit."""
        devices = await self.acquire(holder, count, among)
        try:
            yield devices
        finally:
            await self.release(holder)
