"""--workers MIN:MAX, the dynamic worker manager, on both cores: the pool
grows under a load that keeps every worker busy with connections waiting,
never past MAX, and shrinks back to MIN after --idle-timeout; the status
and the log show each decision; TTIN/TTOU move the range; a killed worker
is replaced; bad --workers values are refused."""

import json
import os
import signal
import threading
import time

import pytest

from servers import FastCGIProcess, free_port, wait_until
from test_status import fcgi, status_json


def pool(status_address):
    """(workers running, in any state, and the status document)."""
    doc = status_json(status_address)
    return sum(doc["workers"].values()), doc


def sizes_during(status_address, seconds):
    """The pool's sizes seen over the next ``seconds``."""
    seen, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(pool(status_address)[0])
        time.sleep(0.1)
    return seen


def worker_pids(status_address):
    return {w["pid"] for w in json.loads(
        fcgi(status_address, "/status", "json&full").body)["worker"]}


def running(status_address, count):
    def check():
        doc = status_json(status_address)
        return sum(doc["workers"].values()) == count and doc["workers"]["booting"] == 0
    return check


def test_dynamic_pool_grows_under_load_and_shrinks_when_idle(start):
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "1:3", "--spawn-rate", "5", "--idle-timeout", "2",
                   "--status", status_address)
    assert wait_until(running(status_address, 1), 10)
    doc = status_json(status_address)
    assert (doc["workers_min"], doc["workers_max"], doc["workers_wanted"]) == (1, 3, 1)
    assert doc["last_scaling"] == "none" and doc["worker_scale_ups_total"] == 0
    assert doc["config"]["workers"] == "1:3" and doc["config"]["idle_timeout"] == 2.0

    # Six clients of half-second requests for three workers at most: every
    # worker stays busy and connections wait in the listen queue.
    stop, failures, most = threading.Event(), [], []

    def load():
        while not stop.is_set():
            try:
                if fcgi(server.address, "/slow", "0.5").status != 200:
                    failures.append("status")
            except Exception as exc:      # any failed request counts
                failures.append(repr(exc))
    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        def grown():
            count, doc = pool(status_address)
            most.append(max(count, doc["workers_wanted"]))
            return count == 3 and doc["workers"]["busy"] == 3
        assert wait_until(grown, 20, interval=0.1), status_json(status_address)
        # It stays at MAX while the load lasts.
        most.extend(sizes_during(status_address, 1.5))
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == [] and max(most) == 3, (failures, most)
    doc = status_json(status_address)
    assert doc["worker_scale_ups_total"] == 2 and doc["last_scaling"] == "up"
    assert doc["last_scaling_workers"] == 3 and doc["last_scaling_time_seconds"] > 0
    assert doc["max_workers_reached_total"] >= 1

    # Idle: back to MIN, none of it a respawn.
    assert wait_until(running(status_address, 1), 20), status_json(status_address)
    doc = status_json(status_address)
    assert doc["worker_scale_downs_total"] == 2 and doc["last_scaling"] == "down"
    assert (doc["workers_wanted"], doc["last_scaling_workers"]) == (1, 1)
    assert set(doc["worker_respawns_total"].values()) == {0}
    assert fcgi(server.address, "/hello").status == 200
    log = server.log()
    assert "scaling up: the 1 worker busy" in log and "connections queued: starting" in log
    assert log.count("scaling down: worker") == 2 and "idle for" in log
    assert "Traceback" not in log

    text = fcgi(status_address, "/status").body.decode()
    for line in ("workers min:", "workers max:", "worker scale ups total:      2",
                 "worker scale downs total:    2", "last scaling:                down at "):
        assert line in text, text
    metrics = fcgi(status_address, "/status", "openmetrics").body.decode()
    for line in ("fastfcgi_workers_min 1", "fastfcgi_workers_max 3",
                 "fastfcgi_worker_scale_ups_total 2", "fastfcgi_worker_scale_downs_total 2",
                 "# TYPE fastfcgi_last_scaling_time_seconds gauge"):
        assert line in metrics, metrics


def test_dynamic_ttin_ttou_move_the_range(start):
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "1:3", "--idle-timeout", "1", "--status", status_address)
    assert wait_until(running(status_address, 1), 10)
    server.signal(signal.SIGTTIN)
    # MIN is 2 now: two workers, and idle as they are, neither retires.
    assert wait_until(running(status_address, 2), 10), status_json(status_address)
    doc = status_json(status_address)
    assert (doc["workers_min"], doc["workers_max"], doc["workers_wanted"]) == (2, 4, 2)
    assert doc["last_scaling"] == "ttin"
    assert set(sizes_during(status_address, 2.5)) == {2}
    server.signal(signal.SIGTTOU)
    assert wait_until(running(status_address, 1), 10), status_json(status_address)
    server.signal(signal.SIGTTOU)       # MIN stays at 1
    assert set(sizes_during(status_address, 1)) == {1}
    doc = status_json(status_address)
    assert (doc["workers_min"], doc["workers_max"], doc["last_scaling"]) == (1, 3, "ttou")
    assert doc["worker_scale_downs_total"] == 0 and doc["worker_scale_ups_total"] == 0
    assert "TTIN: --workers now 2:4, 2 wanted" in server.log()


def test_dynamic_killed_worker_is_replaced(start):
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "2:3", "--status", status_address)
    assert wait_until(running(status_address, 2), 10)
    pids = worker_pids(status_address)
    os.kill(min(pids), signal.SIGKILL)
    assert wait_until(lambda: running(status_address, 2)() and
                      worker_pids(status_address) != pids, 10)
    doc = status_json(status_address)
    assert doc["worker_respawns_total"]["crash"] == 1 and doc["workers_wanted"] == 2
    assert "died (signal 9): replacing it" in server.log()
    assert fcgi(server.address, "/hello").status == 200


@pytest.mark.parametrize("value", ["0", "3:2", "0:2", "two", "1:", "1:3:5"])
def test_dynamic_bad_workers_value_exits_2(core_id, tmp_path, value):
    server = FastCGIProcess(core_id, "dispatch:app", "--workers", value, tmpdir=str(tmp_path))
    try:
        assert server.proc.wait(20) == 2
        assert "--workers: " in server.log() and repr(value) in server.log(), server.log()
    finally:
        server.stop()
