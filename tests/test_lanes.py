"""common.app.lanes: the demo's two chains of stages in parallel spawned processes (real processes, real signals)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from common.app.lanes import Lane, LaneError, run_lanes


def _writer(ctx, folder: str) -> dict:
    ctx.start("writing")
    ctx.log("writer: started")
    time.sleep(0.5)  # the reader is waiting by now: it must not read before the signal
    Path(folder, "made").write_text("by the writer")
    ctx.signal("made")
    return {"pid": os.getpid(), "threads": __import__("torch").get_num_threads()}


def _reader(ctx, folder: str) -> dict:
    import torch

    ctx.log("reader: waiting")
    ctx.wait("made")
    threads = [torch.get_num_threads()]
    for _ in range(600):  # the writer is finishing: a stage started after it has, gets its thread
        ctx.start("reading")
        if torch.get_num_threads() == 2:
            break
        time.sleep(0.05)
    threads.append(torch.get_num_threads())
    return {"pid": os.getpid(), "read": Path(folder, "made").read_text(), "threads": threads}


def _other_is_waiting(folder: str) -> None:
    for _ in range(600):
        if Path(folder, "waiting.pid").is_file():
            return
        time.sleep(0.1)


def _fails(ctx, folder: str) -> dict:
    ctx.start("Ark-ASR: ark_base_sft")
    _other_is_waiting(folder)
    raise ValueError("a bad manifest row\nline 2 of the cause")


def _killed(ctx, folder: str) -> dict:
    ctx.start("teacher")
    _other_is_waiting(folder)
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer does: no exception, no message
    return {}


def _waits_forever(ctx, folder: str) -> dict:
    Path(folder, "waiting.pid").write_text(str(os.getpid()))
    ctx.wait("made")  # never signalled: the runner must stop this lane when the other fails
    return {}


def test_lanes_run_in_their_own_processes_ordered_by_events(tmp_path):
    lines: list[str] = []
    res = run_lanes(
        [Lane("reader", _reader, (str(tmp_path),)), Lane("writer", _writer, (str(tmp_path),))],
        lines.append,
        threads=1,
        events=("made",),
    )
    assert res["reader"]["read"] == "by the writer"
    assert len({res["reader"]["pid"], res["writer"]["pid"], os.getpid()}) == 3
    assert res["writer"]["threads"] == 1 and res["reader"]["threads"] == [1, 2]
    assert {"writer: started", "reader: waiting"} <= set(lines)


@pytest.mark.parametrize(
    "lane, message",
    [
        (_fails, r"lane 'bad' failed in Ark-ASR: ark_base_sft: ValueError: line 2 of the cause; finished stages"),
        (_killed, r"lane 'bad' died \(exit code -9\) without reporting an error"),
    ],
)
def test_a_failing_lane_stops_the_others_and_is_named(tmp_path, lane, message):
    t0 = time.time()
    with pytest.raises(LaneError, match=message):
        run_lanes(
            [Lane("other", _waits_forever, (str(tmp_path),)), Lane("bad", lane, (str(tmp_path),))],
            print,
            events=("made",),
        )
    assert time.time() - t0 < 60
    pid = int((tmp_path / "waiting.pid").read_text())
    with pytest.raises(ProcessLookupError):  # terminated and reaped, not left waiting
        os.kill(pid, 0)
