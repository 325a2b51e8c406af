"""Kept connections handed over (fastfcgi_py.Handover), on both cores and
both servers (WSGI, --asgi): a worker that stops while its pool serves on
(a reload, --max-requests) passes its idle kept connections to the other
workers, so the web server's next request on one is answered, never met
by a close.  When the whole pool stops they are closed as before (the
TERM tests of test_drain.py)."""

import http.client
import signal
import socket
import threading

import pytest

import fastfcgi_py
from conftest import need_frontend
from frontends import HAPROXY_BIN, HAProxy
from servers import Nginx, free_port, need_nginx, wait_until
from test_status import ENV

PID = dict(ENV, PATH_INFO="/pid", REQUEST_URI="/pid", QUERY_STRING="")


def pid_on(client):
    """The pid of the worker that answers /pid on ``client``'s connection,
    kept open."""
    response = client.request(PID, keep_conn=True)
    assert (response.status, response.protocol_status) == (200, 0), response
    return int(response.body)


def running(pid):
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def app_args(mode):
    return (("--asgi",), "asgi_apps:app") if mode == "asgi" else ((), "dispatch:app")


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_a_reload_hands_the_kept_connections_to_the_new_workers(start, tmp_path, mode,
                                                                  transport):
    """Six kept connections on a pool of two; HUP; once the old workers
    are gone, each connection answers its next request from a new one."""
    args, app = app_args(mode)
    address = ("unix:%s/app.sock" % tmp_path if transport == "unix"
               else "127.0.0.1:%d" % free_port())
    server = start("--workers", "2", *args, address=address, app=app)
    clients = [fastfcgi_py.Client(server.address, timeout=10) for _ in range(6)]
    try:
        old = {pid_on(client) for client in clients}
        server.signal(signal.SIGHUP)
        assert wait_until(lambda: not any(running(pid) for pid in old), 20), server.log()
        new = [pid_on(client) for client in clients]
        assert not set(new) & old, (old, new)
        assert all(running(pid) for pid in new), server.log()
    finally:
        for client in clients:
            client.close()
    assert "kept connection(s) handed to the other workers" in server.log()


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_a_recycled_worker_hands_its_kept_connections_to_the_next(start, tmp_path, mode):
    """One worker, --max-requests 2: the request that reaches the count
    and an idle connection both stay open, and the next worker answers
    on them."""
    args, app = app_args(mode)
    server = start("--workers", "1", "--max-requests", "2", *args,
                   address="unix:%s/app.sock" % tmp_path, app=app)
    idle = fastfcgi_py.Client(server.address, timeout=10)
    last = fastfcgi_py.Client(server.address, timeout=10)
    try:
        first = pid_on(idle)
        assert pid_on(last) == first
        assert wait_until(lambda: not running(first), 20), server.log()
        assert "2 kept connection(s) handed to the other workers" in server.log()
        second = pid_on(idle)
        assert second != first
        assert pid_on(last) == second
    finally:
        idle.close()
        last.close()
    assert "Traceback" not in server.log(), server.log()


def test_the_handover_passes_descriptors_whole():
    """Handover alone: what is given is taken once, in batches, as
    working sockets; none is left when nothing waits; discard closes what
    nobody took."""
    handover = fastfcgi_py.Handover()
    pairs = [socket.socketpair() for _ in range(fastfcgi_py.Handover.BATCH + 3)]
    try:
        assert handover.take(socket.AF_UNIX) == []
        assert handover.give([ours.fileno() for ours, _ in pairs]) == len(pairs)
        for ours, _ in pairs:
            ours.close()        # the taker's copy keeps the connection open
        taken = handover.take(socket.AF_UNIX) + handover.take(socket.AF_UNIX)
        assert len(taken) == len(pairs)
        assert handover.take(socket.AF_UNIX) == []
        for sock, (_, theirs) in zip(taken, pairs):
            assert sock.getblocking() if hasattr(sock, "getblocking") else True
            theirs.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            sock.sendall(b"pong")
            assert theirs.recv(4) == b"pong"
            sock.close()
        # Given and never taken: the pool's stop closes them.
        left = socket.socketpair()
        handover.give([left[0].fileno()])
        left[0].close()
        handover.discard()
        left[1].settimeout(5)
        assert left[1].recv(1) == b""       # closed: EOF
        left[1].close()
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
        handover.close()


def load(port, path, clients=4, requests=2000):
    """``requests`` in all from ``clients`` threads, each on a kept HTTP
    connection to 127.0.0.1:``port``, every third a POST whose body must
    come back after the first line; returns what failed (as the client
    saw it: an exception, a status, a wrong body)."""
    failed = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client(n):
        conn = None
        for sent in counter:
            body = b"%d-%d;" % (n, sent) * 100 if sent % 3 == 0 else None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("POST" if body else "GET", path, body=body)
                response = conn.getresponse()
                data = response.read()
                if response.will_close:
                    conn.close()
                    conn = None
                if response.status != 200 or data.partition(b"\n")[2] != (body or b""):
                    with lock:
                        failed.append("%s: HTTP %d %r" % ("POST" if body else "GET",
                                                          response.status, data[:80]))
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    failed.append("%s: %r" % ("POST" if body else "GET", exc))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return failed


@pytest.mark.frontend
@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
@pytest.mark.parametrize("front", ["nginx", "haproxy"])
def test_workers_recycling_under_load_behind_a_web_server_fail_no_request(start, front, mode):
    """Two workers recycled every 20 to 30 requests (--max-requests)
    under GETs and POSTs on kept connections through nginx
    (fastcgi_keep_conn) or HAProxy (keep-conn): every request is answered,
    though each recycle leaves the web server's kept connections to the
    other worker.  Closed instead, one of them now and then met the web
    server's next request: a POST failed (nginx retries none it has sent;
    HAProxy closes its client's connection)."""
    if front == "nginx":
        need_nginx()
    else:
        need_frontend("haproxy", None if HAPROXY_BIN else "haproxy is not installed")
    args, app = app_args(mode)
    server = start("--workers", "2", "--max-requests", "20:30", *args,
                   app=app)
    web = Nginx(server.address) if front == "nginx" else HAProxy(server.address)
    try:
        failed = load(web.port, "/keep/host" if front == "nginx" else "/host")
    finally:
        web.stop()
    recycles = server.log().count("worker recycles")
    print("recycling %s behind %s: 2000 requests, %d recycles, %d failed %s"
          % (mode, front, recycles, len(failed), failed[:3]))
    assert recycles >= 3, server.log()
    assert not failed, server.log()[-3000:]
    assert "kept connection(s) handed to the other workers" in server.log()
