"""Supervisors: spawn actors under a nursery, stop them with a reason, restart by policy.

An actor is an async function. The supervisor runs each one as a *child* in its own
cancel scope inside the supervisor's nursery:

* a child that raises an ``Exception`` is logged and, by its :class:`Restart` policy,
  restarted or left ended; it never takes its siblings or the supervisor down;
* a child restarted more than ``intensity.max_restarts`` times within
  ``intensity.within`` seconds gives up; with ``escalate=True`` the supervisor then
  raises :class:`ChildGaveUp`, which cancels the supervisor's nursery (its owner decides);
* ``handle.stop(reason)`` records why and cancels that child only; it is not restarted;
* cancelling the supervisor's nursery cancels every child (structured concurrency:
  nothing outlives the ``async with``).
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

log = logging.getLogger("actors")


class Restart(enum.Enum):
    TEMPORARY = "temporary"  # never restarted
    TRANSIENT = "transient"  # restarted only after a crash
    PERMANENT = "permanent"  # restarted after any exit that is not a stop()


@attrs.frozen
class RestartIntensity:
    """At most ``max_restarts`` restarts within any ``within`` seconds."""

    max_restarts: int = 3
    within: float = 5.0


class ChildState(enum.Enum):
    RUNNING = "running"
    EXITED = "exited"  # returned normally and was not restarted
    STOPPED = "stopped"  # stop() was called
    CRASHED = "crashed"  # raised, and its policy does not restart it
    GAVE_UP = "gave_up"  # crashed/exited more often than its restart intensity allows


class ChildGaveUp(Exception):
    """An escalating child exceeded its restart intensity."""

    def __init__(self, name: str, error: BaseException | None) -> None:
        super().__init__(f"actor {name!r} exceeded its restart intensity")
        self.name = name
        self.error = error


@attrs.define(eq=False)
class ChildHandle:
    """What the supervisor knows about one child."""

    name: str
    restart: Restart
    intensity: RestartIntensity
    restarts: int = 0
    state: ChildState = ChildState.RUNNING
    stop_reason: object = None
    last_error: BaseException | None = None
    _scope: trio.CancelScope | None = None
    _stop_requested: bool = False
    _finished: trio.Event = attrs.field(factory=trio.Event)

    def stop(self, reason: object = "stopped") -> None:
        """Record ``reason`` and cancel this child; it is not restarted. Idempotent:
        the first reason wins. Returns at once (no await): use ``wait()`` to join."""
        if self._stop_requested:
            return
        self._stop_requested = True
        self.stop_reason = reason
        if self._scope is not None:
            self._scope.cancel()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    async def wait(self) -> None:
        """Until the child has ended for good (stopped, exited, crashed or gave up)."""
        await self._finished.wait()


class Supervisor:
    """Runs children in one nursery. Create with :func:`open_supervisor`."""

    def __init__(self, nursery: trio.Nursery, name: str) -> None:
        self.name = name
        self._nursery = nursery
        self._children: set[ChildHandle] = set()
        self.total_restarts = 0
        self.total_crashes = 0

    @property
    def children(self) -> list[ChildHandle]:
        return list(self._children)

    def spawn(
        self,
        actor: Callable[..., Awaitable[Any]],
        *args: Any,
        name: str | None = None,
        restart: Restart = Restart.TEMPORARY,
        intensity: RestartIntensity = RestartIntensity(),
        escalate: bool = False,
    ) -> ChildHandle:
        """Start ``actor(*args)`` as a child now; returns its handle at once."""
        handle = ChildHandle(name or _name_of(actor), restart, intensity)
        self._children.add(handle)
        self._nursery.start_soon(self._run_child, handle, actor, args, escalate, name=handle.name)
        return handle

    async def start(
        self,
        actor: Callable[..., Awaitable[Any]],
        *args: Any,
        name: str | None = None,
        restart: Restart = Restart.TEMPORARY,
        intensity: RestartIntensity = RestartIntensity(),
        escalate: bool = False,
    ) -> tuple[ChildHandle, Any]:
        """Like spawn, for an actor taking ``task_status``: returns once it has called
        ``task_status.started(value)``, with ``(handle, value)``. Restarts of the child
        get ``trio.TASK_STATUS_IGNORED``."""
        handle = ChildHandle(name or _name_of(actor), restart, intensity)
        self._children.add(handle)
        value = await self._nursery.start(
            self._run_child, handle, actor, args, escalate, name=handle.name
        )
        return handle, value

    def stop_all(self, reason: object = "stopped") -> None:
        for handle in list(self._children):
            handle.stop(reason)

    async def _run_child(
        self,
        handle: ChildHandle,
        actor: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        escalate: bool,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        recent_restarts: deque[float] = deque()
        started = False
        try:
            while True:
                crashed = False
                with trio.CancelScope() as scope:
                    handle._scope = scope
                    if handle._stop_requested:
                        scope.cancel()
                    try:
                        if _takes_task_status(actor) and not started:
                            started = True
                            await actor(*args, task_status=task_status)
                        elif _takes_task_status(actor):
                            await actor(*args, task_status=trio.TASK_STATUS_IGNORED)
                        else:
                            if not started:
                                started = True
                                task_status.started()
                            await actor(*args)
                    except Exception as exc:  # a crash stays inside this child
                        crashed = True
                        handle.last_error = exc
                        self.total_crashes += 1
                        log.error("actor %s crashed", handle.name, exc_info=exc)
                handle._scope = None
                if handle._stop_requested:
                    handle.state = ChildState.STOPPED
                    return
                if not _restarts(handle.restart, crashed):
                    handle.state = ChildState.CRASHED if crashed else ChildState.EXITED
                    return
                now = trio.current_time()
                recent_restarts.append(now)
                while recent_restarts and recent_restarts[0] <= now - handle.intensity.within:
                    recent_restarts.popleft()
                if len(recent_restarts) > handle.intensity.max_restarts:
                    handle.state = ChildState.GAVE_UP
                    log.error(
                        "actor %s gave up after %d restarts within %.1fs",
                        handle.name,
                        handle.intensity.max_restarts,
                        handle.intensity.within,
                    )
                    if escalate:
                        raise ChildGaveUp(handle.name, handle.last_error)
                    return
                handle.restarts += 1
                self.total_restarts += 1
                log.warning("actor %s restarting (%d)", handle.name, handle.restarts)
                await trio.sleep(0)
        finally:
            self._children.discard(handle)
            handle._finished.set()


def _restarts(policy: Restart, crashed: bool) -> bool:
    if policy is Restart.PERMANENT:
        return True
    if policy is Restart.TRANSIENT:
        return crashed
    return False


def _takes_task_status(actor: Callable[..., Any]) -> bool:
    code = getattr(actor, "__code__", None) or getattr(getattr(actor, "__func__", None), "__code__", None)
    return code is not None and "task_status" in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]


def _name_of(actor: Callable[..., Any]) -> str:
    return getattr(actor, "__qualname__", None) or repr(actor)


@asynccontextmanager
async def open_supervisor(name: str = "supervisor") -> AsyncIterator[Supervisor]:
    """A supervisor whose children live exactly as long as this ``async with`` block
    (the block's end waits for them; call ``stop_all`` first to end them)."""
    async with trio.open_nursery() as nursery:
        yield Supervisor(nursery, name)
