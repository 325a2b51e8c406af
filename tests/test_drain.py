"""Stopping and draining the way a balancer needs (issue 18), on both
cores: SIGTERM refuses new connections first (a unix socket's path goes,
a TCP listener drops new SYNs), serves every connection already in the
listen queue, then exits 0; the ping answers 503 while the pool drains or
stops; --drain-file and SIGUSR2 drain without stopping.  And through real
nginx with two hosts: one stopped under GET and POST load, no request
fails."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import fastfcgi_py
from servers import NGINX_CONF, ROOT, TESTS, Nginx, free_port, need_nginx, wait_until
from test_status import ENV, fcgi, status_json


def send_request(address, path, query=""):
    """Connect and send a whole request without reading the answer: the
    connection waits in the listen queue of a busy server.  Returns the
    socket (None if the connect failed) and the time the connect took."""
    env = dict(ENV, PATH_INFO=path, REQUEST_URI=path, QUERY_STRING=query)
    began = time.monotonic()
    try:
        client = fastfcgi_py.Client(address, timeout=30)
    except OSError:
        return None, time.monotonic() - began
    out = [fastfcgi_py._record(fastfcgi_py.FCGI_BEGIN_REQUEST, 1,
                               b"\x00\x01\x00\x00\x00\x00\x00\x00"),
           fastfcgi_py._record(fastfcgi_py.FCGI_PARAMS, 1, fastfcgi_py.encode_params(env)),
           fastfcgi_py._record(fastfcgi_py.FCGI_PARAMS, 1, b""),
           fastfcgi_py._record(fastfcgi_py.FCGI_STDIN, 1, b"")]
    client.send_raw(b"".join(out))
    return client, time.monotonic() - began


def answer_of(client):
    """The response of a request send_request sent."""
    try:
        return client.read_response()
    finally:
        client.close()


def connect_fails(address, timeout=0.5):
    """True if a new connection cannot get in: refused, no such socket,
    or (a TCP listener dropping SYNs) no answer within ``timeout``."""
    family = socket.AF_UNIX if address.startswith("unix:") else socket.AF_INET
    sock = socket.socket(family)
    sock.settimeout(timeout)
    try:
        if family == socket.AF_UNIX:
            sock.connect(address[5:])
        else:
            host, port = address.rsplit(":", 1)
            sock.connect((host, int(port)))
        return False
    except OSError:
        return True
    finally:
        sock.close()


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_term_serves_the_listen_queue_and_refuses_new_connections(start, tmp_path, transport,
                                                                  mode):
    """One worker busy with a slow request, five requests waiting in the
    listen queue: after TERM a new connection cannot get in at once, the
    five are answered (none reset), and the server exits 0."""
    address = "unix:%s/app.sock" % tmp_path if transport == "unix" else None
    status_address = "127.0.0.1:%d" % free_port()
    args = ["--workers", "1", "--status", status_address]
    if mode == "asgi":
        # A request that blocks the loop: the others wait in the listen queue.
        server = start("--asgi", *args, address=address, app="asgi_apps:app")
        slow_path, slow_query = "/block", "1.5"
    else:
        server = start(*args, address=address)
        slow_path, slow_query = "/slow", "1.5"
    assert wait_until(lambda: status_json(status_address)["workers"]["idle"] == 1, 10)
    slow, _ = send_request(server.address, slow_path, slow_query)
    assert wait_until(lambda: status_json(status_address)["workers"]["busy"] == 1, 5)
    queued = [send_request(server.address, "/hello")[0] for _ in range(5)]
    assert None not in queued
    assert wait_until(lambda: status_json(status_address)["listen_queue"] >= 4, 5)

    server.signal(signal.SIGTERM)
    assert wait_until(lambda: status_json(status_address)["state"] == "stopping", 5)
    # A reload or a drain toggled while stopping changes nothing: no worker
    # starts on the closed listener, the ping says "stopping" to the end.
    server.signal(signal.SIGHUP)
    server.signal(signal.SIGUSR2)
    assert wait_until(lambda: "stopping: SIGUSR2 ignored" in server.log(), 5), server.log()
    # The ping fails at once, from the supervisor (the worker is busy).
    ping = fcgi(status_address, "/ping")
    assert (ping.status, ping.body) == (503, b"stopping\n")
    if transport == "unix":
        assert not os.path.exists(address[5:])      # removed first
    assert connect_fails(server.address)            # while the worker still runs

    assert answer_of(slow).status == 200
    for client in queued:
        response = answer_of(client)
        assert (response.status, response.body) == (200, b"Hello, world!"), response
    assert server.proc.wait(20) == 0, server.log()
    assert connect_fails(server.address)
    log = server.log()
    assert "stopping: SIGHUP ignored" in log and "crashed" not in log, log
    assert "stopping: %s; serving what is queued and running" % (
        "removed %s" % address[5:] if transport == "unix" else "new connections dropped") in log


def kept_request(client, path, query=""):
    """Send a request with FCGI_KEEP_CONN on ``client`` (a Client), not
    reading the answer."""
    env = dict(ENV, PATH_INFO=path, REQUEST_URI=path, QUERY_STRING=query)
    client.send_raw(b"".join([
        fastfcgi_py._record(fastfcgi_py.FCGI_BEGIN_REQUEST, 1, b"\x00\x01\x01\x00\x00\x00\x00\x00"),
        fastfcgi_py._record(fastfcgi_py.FCGI_PARAMS, 1, fastfcgi_py.encode_params(env)),
        fastfcgi_py._record(fastfcgi_py.FCGI_PARAMS, 1, b""),
        fastfcgi_py._record(fastfcgi_py.FCGI_STDIN, 1, b"")]))


def rest_of(client):
    """What ``client`` receives after the response it read, up to EOF."""
    rest = bytes(client._buffer)
    while True:
        data = client.sock.recv(65536)
        if not data:
            return rest
        rest += data


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_a_stopping_worker_marks_the_last_answer_on_a_kept_connection(start, tmp_path, mode):
    """A kept connection a stopping worker closes gets, right after its
    last END_REQUEST, an empty FCGI_GET_VALUES_RESULT: nginx then does not
    put it back in its pool, where its next request would meet the close.
    Both ways: the request that runs when TERM comes, and one sent after
    it on another kept connection."""
    address = "unix:%s/app.sock" % tmp_path
    if mode == "asgi":
        server = start("--asgi", address=address, app="asgi_apps:app")
        slow_path, slow_query = "/sleep", "1000"
    else:
        server = start(address=address)
        slow_path, slow_query = "/slow", "1"
    waiting = fastfcgi_py.Client(server.address)
    hello = dict(ENV, PATH_INFO="/hello", REQUEST_URI="/hello", QUERY_STRING="")
    for _ in range(2):
        assert waiting.request(hello, keep_conn=True).body == b"Hello, world!"
    running = fastfcgi_py.Client(server.address)
    kept_request(running, slow_path, slow_query)
    time.sleep(0.3)
    server.signal(signal.SIGTERM)
    time.sleep(0.2)
    kept_request(waiting, "/hello")
    for client in (running, waiting):
        response = client.read_response()
        assert (response.status, response.protocol_status) == (200, 0), response
        assert rest_of(client) == fastfcgi_py.RETIRE_RECORD
        client.close()
    assert server.proc.wait(20) == 0, server.log()


def test_a_single_process_serves_its_listen_queue_on_term(start, tmp_path):
    """Without the supervisor (one worker, no status): the same."""
    address = "unix:%s/app.sock" % tmp_path
    server = start(address=address)
    assert "worker(s)" in server.log()
    slow, _ = send_request(server.address, "/slow", "1")
    time.sleep(0.3)
    queued = [send_request(server.address, "/hello")[0] for _ in range(3)]
    server.signal(signal.SIGTERM)
    assert wait_until(lambda: not os.path.exists(address[5:]), 5)
    assert answer_of(slow).status == 200
    assert [answer_of(client).status for client in queued] == [200] * 3
    assert server.proc.wait(20) == 0, server.log()


def test_term_then_hup_in_a_single_process_stops(start, tmp_path):
    address = "unix:%s/app.sock" % tmp_path
    server = start(address=address)
    slow, _ = send_request(server.address, "/slow", "1")
    time.sleep(0.3)
    server.signal(signal.SIGTERM)
    server.signal(signal.SIGHUP)            # a stop wins over a reload
    assert answer_of(slow).status == 200
    assert server.proc.wait(20) == 0, server.log()
    assert "re-executing" not in server.log()


def test_an_old_server_leaves_the_new_ones_socket(start, tmp_path):
    """TERM removes the path at once, so a new server can bind it while
    the old one finishes its request: the old one must not remove the new
    one's socket when it exits."""
    address = "unix:%s/app.sock" % tmp_path
    old = start(address=address)
    slow, _ = send_request(old.address, "/slow", "1")
    time.sleep(0.3)
    old.signal(signal.SIGTERM)
    assert wait_until(lambda: not os.path.exists(address[5:]), 5)
    new = start(address=address)
    assert answer_of(slow).status == 200
    assert old.proc.wait(20) == 0, old.log()
    assert os.path.exists(address[5:])
    assert fcgi(new.address, "/hello").status == 200


def spawn_on_fd0(listener, core_id):
    """fastfcgi started as spawn-fcgi or systemd would: its listening
    socket on fd 0, owned by the spawner."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]),
                       FASTFCGI_PURE="1" if core_id == "py" else "0")
    return subprocess.Popen([sys.executable, "-c",
                             "import sys, fastfcgi_py; sys.exit(fastfcgi_py.main())",
                             "--workers", "2", "dispatch:app"], stdin=listener.fileno(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment,
                            cwd=TESTS)


def test_an_inherited_listener_is_left_as_it_came(core_id):
    """The socket's owner (systemd) keeps it across our stop: TERM must not
    leave it dropping new connections for the next instance."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    address = "127.0.0.1:%d" % listener.getsockname()[1]
    try:
        for _ in range(2):
            proc = spawn_on_fd0(listener, core_id)
            try:
                assert wait_until(lambda: _answers(address), 15)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(20) == 0
                assert b"its owner keeps what waits" in proc.stderr.read()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stderr.close()
    finally:
        listener.close()


def _answers(address):
    try:
        return fcgi(address, "/hello", timeout=2).status == 200
    except OSError:
        return False


def test_hups_faster_than_retirements_do_not_take_the_supervisor_down(start, tmp_path):
    """More generations than the scoreboard has slots for: the workers
    wait for a slot; the supervisor serves on."""
    server = start("--workers", "2", "--status", "127.0.0.1:%d" % free_port())
    for _ in range(12):
        server.signal(signal.SIGHUP)
        time.sleep(0.02)
    for _ in range(10):
        assert fcgi(server.address, "/hello").status == 200
    assert server.proc.poll() is None, server.log()
    assert "Traceback" not in server.log(), server.log()


def test_reload_and_retirement_leave_the_queue_to_the_others(start, tmp_path):
    """HUP and TTOU retire workers while the pool serves on: the socket
    stays, and the ping says pong."""
    address = "unix:%s/app.sock" % tmp_path
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "2", "--status", status_address, "--ping-path", "/ping",
                   address=address)
    server.signal(signal.SIGHUP)
    server.signal(signal.SIGTTOU)
    for _ in range(20):
        assert fcgi(server.address, "/hello").status == 200
        assert fcgi(server.address, "/ping").body == b"pong\n"
    assert os.path.exists(address[5:])
    assert status_json(status_address)["state"] == "serving"


@pytest.mark.parametrize("how", ["file", "signal"])
def test_draining_fails_the_ping_and_serves_everything(start, tmp_path, how):
    drain_file = str(tmp_path / "drain")
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "2", "--ping-path", "/ping", "--drain-file", drain_file,
                   "--status", status_address)
    assert fcgi(server.address, "/ping").body == b"pong\n"

    if how == "file":
        open(drain_file, "w").close()
    else:
        server.signal(signal.SIGUSR2)
    assert wait_until(lambda: fcgi(server.address, "/ping").status == 503, 5), server.log()
    ping = fcgi(server.address, "/ping")
    assert ping.body == b"draining\n"
    assert fcgi(status_address, "/ping").status == 503
    assert status_json(status_address)["state"] == "draining"
    # Still serving: whatever comes is answered.
    for _ in range(10):
        assert fcgi(server.address, "/hello").status == 200

    if how == "file":
        os.unlink(drain_file)
    else:
        server.signal(signal.SIGUSR2)
    assert wait_until(lambda: fcgi(server.address, "/ping").status == 200, 5), server.log()
    assert status_json(status_address)["state"] == "serving"
    log = server.log()
    assert "draining (%s): the ping path answers 503; still serving" % (
        drain_file if how == "file" else "SIGUSR2") in log
    assert "draining over: serving, the ping path answers pong" in log
    # A worker ignores SIGUSR2 (a signal to the whole group must not kill it).
    assert "died" not in log


@pytest.mark.frontend
def test_a_host_stopped_under_load_behind_nginx_fails_no_request(start, tmp_path):
    """nginx with two hosts (unix sockets), kept connections, GETs and
    POSTs from four clients; TERM one host: every request is answered
    right, the host exits 0, the other serves on."""
    need_nginx()
    first = start("--workers", "2", address="unix:%s/a.sock" % tmp_path)
    second = start("--workers", "2", address="unix:%s/b.sock" % tmp_path)
    # The test nginx's /keep/ location: an upstream with kept connections,
    # given the second host (fastcgi_next_upstream is "error timeout").
    nginx = Nginx(first.address, NGINX_CONF.replace(
        "        server {backend};\n", "        server {backend};\n        server %s;\n"
        % second.address))
    results, stop = [], threading.Event()

    def client(n):
        i = 0
        while not stop.is_set() or i < 5:
            i += 1
            body = ("%d-%d" % (n, i)).encode() * (i % 50)
            try:
                if i % 2:
                    status, _, got = nginx.request("GET", "/keep/hello", timeout=20)
                    results.append(status == 200 and got == b"Hello, world!" or ("GET", status))
                else:
                    status, _, got = nginx.request("POST", "/keep/upload", body, timeout=20)
                    ok = status == 200 and json.loads(got)["size"] == len(body)
                    results.append(ok or ("POST", status))
            except Exception as exc:      # noqa: BLE001 - what the client saw
                results.append(repr(exc))
    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    try:
        for thread in threads:
            thread.start()
        assert wait_until(lambda: len(results) > 200, 20)
        first.signal(signal.SIGTERM)
        assert first.proc.wait(20) == 0, first.log()
        served_before = len(results)
        assert wait_until(lambda: len(results) > served_before + 200, 20)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        errors = [line for line in nginx.error_log().splitlines() if "[error]" in line]
        nginx.stop()
    failures = [r for r in results if r is not True]
    assert not failures, (len(results), failures[:5], errors[:5])
    assert "Traceback" not in first.log() + second.log()
