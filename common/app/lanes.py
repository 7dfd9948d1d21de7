"""Independent chains of stages ("lanes") in parallel processes, for ``make demo`` on a small machine.

The demo's stages form two chains that meet only at the adapted teacher: the teacher (adaptation, export, cache of
the TD part, then the ASKD students that distil from it) and Ark-ASR (Ark-Base and its teacher-free controls, then
TD and OPD once the teacher exists). Their models are small: on 2 cores, two one-thread processes side by side do
~1.65x the work of one two-thread process (an Ark stage: 142 s alone at 2 threads, 172 s each with two running at 1
thread; docs/RESULTS.md#demo-lanes). Each lane is one long-lived process so that its stages share the process's
encoder-state store (``common.teachers.encoder_cache``), as in a sequential run.

A lane is a top-level function ``fn(ctx, *args) -> dict`` run in a spawned process (``torch`` threads set first);
``ctx.log`` reaches the parent's log, ``ctx.signal(e)`` / ``ctx.wait(e)`` order lanes on named events,
``ctx.start(stage)`` names what it is doing (and hands it the threads of lanes that have finished). When a lane
raises or dies (killed, out of memory), the other lanes are terminated and :class:`LaneError` names the lane, its
stage and the cause; stages that finished are kept (a rerun reuses them).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class LaneError(RuntimeError):
    """A lane failed: raised in the parent after the other lanes were stopped."""


@dataclass(frozen=True)
class Lane:
    name: str
    fn: Callable[..., dict]  # top-level (picklable): fn(ctx, *args) -> a result dict
    args: tuple = ()


class LaneContext:
    """What a lane's function gets: the parent's log, the shared events and the name of its current stage."""

    def __init__(self, name: str, messages: Any, events: dict[str, Any], running: Any = None, cpus: int = 1) -> None:
        self.name, self._messages, self._events, self.stage = name, messages, events, "start-up"
        self._running, self._cpus = running, cpus

    def start(self, stage: str) -> None:
        """A stage begins: name it, and take the CPUs of the lanes that have finished (torch threads = CPUs / lanes
        still running), so the longer lane does not run its last stages on half the machine."""
        import torch

        self.stage = stage
        if self._running is not None:
            torch.set_num_threads(max(1, self._cpus // max(1, self._running.value)))

    def log(self, msg: str) -> None:
        self._messages.put(("log", self.name, msg))

    def signal(self, event: str) -> None:
        self._events[event].set()

    def wait(self, event: str) -> None:
        self.stage = f"waiting for {event}"
        self._events[event].wait()


def available_cpus() -> int:
    """The CPUs this process may run on (a SLURM or container CPU set, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _child(lane: Lane, threads: int, messages: Any, events: dict[str, Any], running: Any, cpus: int) -> None:
    import torch

    torch.set_num_threads(threads)
    ctx = LaneContext(lane.name, messages, events, running, cpus)
    try:
        result = lane.fn(ctx, *lane.args)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then the process exits non-zero
        traceback.print_exc()
        cause = (str(e).strip().splitlines() or [""])[-1]
        messages.put(("error", lane.name, f"{ctx.stage}: {type(e).__name__}: {cause}".rstrip(": ")))
        messages.close()
        messages.join_thread()  # the message is in the pipe before the exit code is
        sys.exit(1)
    with running.get_lock():
        running.value -= 1
    messages.put(("done", lane.name, result))
    messages.close()
    messages.join_thread()


def run_lanes(
    lanes: list[Lane], log: Callable[[str], None], threads: int = 1, events: tuple[str, ...] = ()
) -> dict[str, dict]:
    """Run ``lanes`` in parallel spawned processes of ``threads`` torch threads each (a lane's stage that starts after
    others finished takes their threads: :meth:`LaneContext.start`); return each lane's result by name. The lanes'
    log lines reach ``log`` as they come. Raises :class:`LaneError` when one fails."""
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    evs = {e: ctx.Event() for e in events}
    running = ctx.Value("i", len(lanes))
    args = (messages, evs, running, threads * len(lanes))
    procs = {ln.name: ctx.Process(target=_child, args=(ln, threads, *args), name=f"lane-{ln.name}") for ln in lanes}
    results: dict[str, dict] = {}
    failure: str | None = None
    exited_quietly: set[str] = set()  # seen exited with no message left: dead unless a message still comes
    try:
        for p in procs.values():
            p.start()
        while len(results) < len(procs) and failure is None:
            try:
                kind, name, payload = messages.get(timeout=0.5)
            except queue_mod.Empty:
                for name, p in procs.items():
                    if name in results or p.exitcode is None:
                        continue
                    if name in exited_quietly:  # two empty polls after its exit: it died without a word
                        failure = f"lane '{name}' died (exit code {p.exitcode}) without reporting an error"
                        break
                    exited_quietly.add(name)
                continue
            if kind == "log":
                log(payload)
            elif kind == "done":
                results[name] = payload
            else:
                failure = f"lane '{name}' failed in {payload}"
    finally:
        for p in procs.values():
            if p.is_alive() and (failure is not None or len(results) < len(procs)):
                p.terminate()
        for p in procs.values():
            p.join()
        messages.close()
    if failure is not None:
        raise LaneError(f"{failure}; finished stages are kept, a rerun reuses them")
    return results
