"""The status page's ?html format and the history its chart draws."""

import socket
import time

import fastfcgi_py

def board_with_workers(core, count):
    """A scoreboard (pure, shared by both cores) with ``count`` workers
    whose rows the core's WorkerRow writes."""
    board = core.Scoreboard(count + 1, {"core": "test", "workers": count})
    rows = []
    for slot in range(count):
        board.claim(slot)
        board.set_pid(slot, 4000 + slot)
        row = core.WorkerRow(board, slot)
        row.busy(0.0)
        rows.append(row)
    return board, rows


def test_Scoreboard_history_gives_requests_per_second(core):
    board, rows = board_with_workers(core, 2)
    listener = socket.socket()
    step = fastfcgi_py._HISTORY_STEP

    def sample():
        board._history_due = 0.0         # the test does not wait for the step
        board.sample(listener, 2)
    try:
        sample()
        assert board.snapshot()["history"]["requests_per_second"] == []
        for _ in range(3 * step):
            rows[0].done(200, 0.01)
        for _ in range(step):
            rows[1].done(404, 0.01)
        sample()
        # A worker replaced: what it served stays counted, no drop.
        board.release(0, "max_requests")
        sample()
        history = board.snapshot()["history"]
        assert history["requests_per_second"] == [4.0, 0.0]
        assert history["step_seconds"] == step
        assert abs(history["end_time_seconds"] - time.time()) < 60
        # The ring wraps: the newest samples stay, one fewer than it holds.
        for i in range(150):
            for _ in range(i % 3 * step):
                rows[1].done(200, 0.01)
            sample()
        rates = board.snapshot()["history"]["requests_per_second"]
        assert len(rates) == fastfcgi_py._HISTORY_SIZE - 2
        assert rates[-3:] == [float(i % 3) for i in range(147, 150)]
    finally:
        listener.close()
