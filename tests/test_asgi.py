"""--asgi: the asyncio server and the ASGI 3 gateway, on both cores, over
real sockets: raw FastCGI records (multiplexed), and the bounds on what a
peer can make a worker hold."""

import json
import os
import platform
import signal
import socket
import struct
import sys
import threading
import time

import pytest

from conftest import begin, get_values, params_records, rec, request, stdin_records
from servers import FastCGIProcess, wait_until
from test_spec import KEEP, RawPeer, env

FCGI_STDOUT, FCGI_END_REQUEST = 6, 3
PYPY = platform.python_implementation() == "PyPy"
ASGI = "asgi_apps:app"


@pytest.fixture
def asgi(start):
    """start() for the ASGI test application on the asyncio server."""
    def start_asgi(*args, app=ASGI, **kw):
        return start("--asgi", *args, app=app, **kw)
    return start_asgi


def responses(peer, ids):
    """Read records until every id in ``ids`` has its END_REQUEST: {id:
    (status, body, app status, protocol status)}, and the order the ids
    ended in."""
    stdout = {i: b"" for i in ids}
    done = {}
    order = []
    while len(done) < len(ids):
        record = peer.record()
        assert record is not None, "closed; done: %r" % sorted(done)
        rtype, rid, content = record
        if rtype == FCGI_STDOUT:
            stdout[rid] += content
        elif rtype == FCGI_END_REQUEST:
            app_status, protocol_status = struct.unpack("!LB3x", content)
            head, _, body = stdout[rid].partition(b"\r\n\r\n")
            status = int(head[8:11]) if head.startswith(b"Status: ") else None
            done[rid] = (status, body, app_status, protocol_status)
            order.append(rid)
    return done, order


def worker_pid(server):
    peer = RawPeer(server.address)
    peer.send(request(1, env("/pid"), flags=0))
    status, body, _, _, _ = peer.response(1)
    peer.close()
    return int(body)


def rss_kib(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])


# -- the scope, the body, the response -------------------------------------------------

def test_asgi_scope_from_the_params(asgi):
    """ASGI HTTP spec: path includes root_path (SCRIPT_NAME), raw_path is
    REQUEST_URI's path as sent, headers come from HTTP_* with content-type
    and content-length once each; the lifespan state is copied in."""
    server = asgi()
    assert "ASGI on " in server.log()
    peer = RawPeer(server.address)
    params = env("/scope/caf\xc3\xa9", "POST", SCRIPT_NAME="/app", PATH_INFO="/scope/caf\xc3\xa9",
                 REQUEST_URI="/app/scope/caf%C3%A9?a=1&b=%20", QUERY_STRING="a=1&b=%20",
                 CONTENT_TYPE="text/plain", HTTP_CONTENT_TYPE="text/plain",
                 CONTENT_LENGTH="3", HTTP_CONTENT_LENGTH="3", HTTP_X_CUSTOM_THING="v",
                 HTTPS="on", REMOTE_PORT="5555", SERVER_PORT="8443", SERVER_PROTOCOL="HTTP/2.0")
    peer.send(request(1, params, b"abc", flags=KEEP))
    status, body, _, _, _ = peer.response(1)
    scope = json.loads(body)
    assert status == 200
    assert scope["type"] == "http" and scope["asgi"]["version"] == "3.0"
    assert scope["path"] == "/app/scope/caf\u00e9"
    assert scope["root_path"] == "/app"
    assert scope["raw_path"] == "/app/scope/caf%C3%A9"
    assert scope["query_string"] == "a=1&b=%20"
    assert scope["method"] == "POST" and scope["scheme"] == "https"
    assert scope["http_version"] == "2"
    assert scope["client"] == ["127.0.0.1", 5555] and scope["server"] == ["test", 8443]
    headers = scope["headers"]
    assert sorted(headers) == sorted([["x-custom-thing", "v"], ["content-type", "text/plain"],
                                      ["content-length", "3"]])
    assert scope["state"] == {"greeting": "hello from lifespan"}
    assert scope["fastcgi_role"] == "RESPONDER"
    peer.close()


@pytest.mark.parametrize("split", [None, 1000])
def test_asgi_body_streams_in_and_the_response_streams_out(asgi, split):
    server = asgi()
    peer = RawPeer(server.address)
    body = os.urandom(300000)
    peer.send(request(1, env("/upload", "POST", CONTENT_LENGTH=str(len(body))), body,
                      flags=KEEP, split=split))
    status, answer, app_status, _, _ = peer.response(1)
    assert (status, json.loads(answer)["size"], app_status) == (200, len(body), 0)
    peer.send(request(2, env("/chunks?50"), flags=KEEP))
    status, answer, _, _, _ = peer.response(2)
    assert (status, len(answer)) == (200, 5000)
    peer.send(request(3, env("/hello", "HEAD"), flags=KEEP))
    status, answer, _, _, _ = peer.response(3)
    assert (status, answer) == (200, b"")            # HEAD: no body
    peer.close()


def test_asgi_get_values_tell_the_bounds_enforced(asgi):
    """Spec 4.1: FCGI_MPXS_CONNS=1, FCGI_MAX_REQS the --max-concurrency bound."""
    server = asgi("--max-concurrency", "7", "--workers", "2")
    peer = RawPeer(server.address)
    peer.send(get_values("FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"))
    rtype, rid, content = peer.record()
    assert (rtype, rid) == (10, 0)
    pairs = {}
    i = 0
    while i < len(content):
        n, v = content[i], content[i + 1]
        pairs[content[i + 2:i + 2 + n]] = content[i + 2 + n:i + 2 + n + v]
        i += 2 + n + v
    assert pairs == {b"FCGI_MAX_CONNS": b"2048", b"FCGI_MAX_REQS": b"7",
                     b"FCGI_MPXS_CONNS": b"1"}
    peer.close()


def test_asgi_allow_list_closes_other_peers(asgi):
    """--allow on the asyncio worker: a peer not in the list is closed
    unanswered, with a log line, and the worker serves the others."""
    server = asgi("--allow", "10.1.2.3,192.168.0.0/16")
    peer = RawPeer(server.address)
    try:
        peer.send(request(1, env("/hello"), flags=KEEP))
        assert peer.record() is None
    except ConnectionResetError:        # closed with our bytes unread: a reset
        pass
    peer.close()
    assert wait_until(lambda: "connection from 127.0.0.1 refused: not in --allow"
                      in server.log(), 5)
    allowed = asgi("--allow", "127.0.0.0/8")
    peer = RawPeer(allowed.address)
    peer.send(request(1, env("/hello"), flags=KEEP))
    assert peer.response(1)[:2] == (200, b"Hello, world!")
    peer.close()


# -- multiplexing ---------------------------------------------------------------------------

def test_asgi_100_interleaved_requests_on_one_connection(asgi):
    """Records of 100 requests interleaved on one connection; each runs at
    once (the slow ones do not hold the quick ones), and each gets its own
    answer."""
    server = asgi()
    peer = RawPeer(server.address, timeout=30)
    ids = list(range(1, 101))
    delays = {i: (300 if i % 10 == 0 else i % 7) for i in ids}
    out = b"".join(begin(i, flags=KEEP) for i in ids)
    out += b"".join(params_records(i, env("/sleep?%d-%d" % (delays[i], i))) for i in reversed(ids))
    out += b"".join(rec(5, i, b"") for i in ids)
    peer.send(out)
    done, order = responses(peer, ids)
    assert {i: done[i] for i in ids} == {
        i: (200, ("%d-%d" % (delays[i], i)).encode(), 0, 0) for i in ids}
    # The ten slow ones (300 ms) end after all the quick ones.
    assert set(order[-10:]) == {i for i in ids if i % 10 == 0}
    hello_after = request(1, env("/hello"), flags=KEEP)
    peer.send(hello_after)
    assert peer.response(1)[:2] == (200, b"Hello, world!")
    peer.close()


def test_asgi_over_the_bound_is_overloaded_and_memory_stays_flat(asgi):
    """Spec 5.5: past --max-concurrency a request gets END_REQUEST with
    FCGI_OVERLOADED at once, and a peer that keeps trying costs nothing."""
    server = asgi("--max-concurrency", "4")
    pid = worker_pid(server)
    peer = RawPeer(server.address, timeout=30)
    held = [begin(i, flags=KEEP) + params_records(i, env("/upload", "POST", CONTENT_LENGTH="10"))
            for i in range(1, 5)]
    peer.send(b"".join(held))           # four requests wait for their bodies
    time.sleep(0.2)
    peer.send(request(5, env("/hello"), flags=KEEP))
    assert peer.record() == (FCGI_END_REQUEST, 5, struct.pack("!LB3x", 0, 2))
    burst = b"".join(request(i, env("/hello", HTTP_X="y" * 2000), b"z" * 3000, flags=KEEP)
                     for i in range(5, 505))
    before = None
    for round_ in range(25):
        if round_ == 5:             # warmed up (PyPy's JIT, allocator pools)
            before = rss_kib(pid)
        peer.send(burst)
        for i in range(5, 505):
            assert peer.record() == (FCGI_END_REQUEST, i, struct.pack("!LB3x", 0, 2))
    grown = rss_kib(pid) - before
    # 10,000 refused requests, 50 MB of records: what stays is noise (and,
    # on PyPy, garbage its GC has not collected yet).
    assert grown < (4096 if not PYPY else 16384), "worker RSS grew %d KiB" % grown
    # The four held requests complete.
    peer.send(b"".join(stdin_records(i, b"0123456789") for i in range(1, 5)))
    done, _ = responses(peer, [1, 2, 3, 4])
    assert all(done[i][0] == 200 and json.loads(done[i][1])["size"] == 10 for i in done)
    peer.close()
    assert "FCGI_OVERLOADED" not in server.log()    # one connection: the parser's answer


def test_asgi_over_the_worker_bound_on_other_connections_is_overloaded_and_logged(asgi):
    server = asgi("--max-concurrency", "2")
    first = RawPeer(server.address)
    first.send(b"".join(begin(i, flags=KEEP) + params_records(
        i, env("/upload", "POST", CONTENT_LENGTH="1")) for i in (1, 2)))
    time.sleep(0.2)
    second = RawPeer(server.address)
    second.send(request(1, env("/hello"), flags=KEEP))
    assert second.record() == (FCGI_END_REQUEST, 1, struct.pack("!LB3x", 0, 2))
    assert wait_until(lambda: "FCGI_OVERLOADED" in server.log(), 5)
    first.send(stdin_records(1, b"a") + stdin_records(2, b"b"))
    done, _ = responses(first, [1, 2])
    assert [done[i][0] for i in (1, 2)] == [200, 200]
    second.send(request(1, env("/hello"), flags=KEEP))    # room again
    assert second.response(1)[:2] == (200, b"Hello, world!")
    first.close()
    second.close()


def test_asgi_a_request_that_does_not_read_its_body_pauses_its_connection(asgi, tmp_path):
    """A request whose unread stdin passes the high-water mark stops the
    reading of its connection: the worker holds a bounded amount however
    much the peer has to send; once the application reads, it all comes."""
    server = asgi()
    pid = worker_pid(server)
    before = rss_kib(pid)
    flag = str(tmp_path / "read-now")
    size = 64 << 20
    peer = RawPeer(server.address, timeout=60)
    peer.send(begin(1, flags=KEEP) + params_records(
        1, env("/read_later?" + flag, "POST", CONTENT_LENGTH=str(size))))
    sent = [0]

    def send_body():
        piece = rec(5, 1, b"s" * 65528)
        while sent[0] < size:
            left = size - sent[0]
            peer.sock.sendall(piece if left >= 65528 else rec(5, 1, b"s" * left))
            sent[0] += min(left, 65528)
        peer.sock.sendall(rec(5, 1, b""))
    thread = threading.Thread(target=send_body)
    thread.start()
    stalled = []
    while len(stalled) < 10:            # one second without progress
        last = sent[0]
        time.sleep(0.1)
        stalled = stalled + [last] if sent[0] == last else []
    assert sent[0] < 16 << 20, "the worker took %d bytes it was not asked for" % sent[0]
    assert rss_kib(pid) - before < 8192
    open(flag, "w").close()             # the application reads now
    status, body, _, _, _ = peer.response(1)
    thread.join(30)
    assert (status, json.loads(body)["size"]) == (200, size)
    # PyPy's GC frees the chunks read later than CPython's refcounts do.
    assert rss_kib(pid, "VmHWM") - before < (16384 if not PYPY else 49152)
    peer.send(request(3, env("/hello"), flags=KEEP))
    assert peer.response(3)[:2] == (200, b"Hello, world!")
    peer.close()


# -- aborts, errors -------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["ABORT_REQUEST", "connection closed"])
def test_asgi_abort_is_http_disconnect_within_a_second(asgi, how):
    """The web server aborts the request, or closes the connection: the
    application's receive() gives http.disconnect (the issue's bound: within
    a second); after an abort, END_REQUEST alone (spec 5.4) and the kept
    connection serves on."""
    server = asgi()
    peer = RawPeer(server.address)
    peer.send(request(1, env("/wait_disconnect", "POST", CONTENT_LENGTH="2"), b"ab", flags=KEEP))
    time.sleep(0.2)
    if how == "connection closed":
        peer.close()
        assert wait_until(lambda: "wait_disconnect: http.disconnect after" in server.log(), 5)
        return
    started = time.monotonic()
    peer.send(rec(2, 1))
    status, body, _, protocol_status, _ = peer.response(1)
    assert time.monotonic() - started < 1.0
    assert (status, body, protocol_status) == (None, b"", 0)
    assert wait_until(lambda: "wait_disconnect: http.disconnect after" in server.log(), 5)
    peer.send(request(3, env("/hello"), flags=KEEP))
    assert peer.response(3)[:2] == (200, b"Hello, world!")
    peer.close()


@pytest.mark.parametrize("path, status, app_status, closes", [
    ("/fail_before_head", 500, 1, False),
    ("/no_response", 500, 1, False),
    ("/fail_after_head", 200, 1, True),
])
def test_asgi_application_errors(asgi, path, status, app_status, closes):
    """An exception before the head: 500 and the traceback in the log; once
    the head is out, the response is cut short (non-zero app status, the
    connection closes so the web server sees it)."""
    server = asgi()
    peer = RawPeer(server.address)
    peer.send(request(1, env(path), flags=KEEP))
    got_status, _, got_app_status, _, _ = peer.response(1)
    assert (got_status, got_app_status) == (status, app_status)
    if closes:
        assert peer.closed()
    else:
        peer.send(request(1, env("/hello"), flags=KEEP))
        assert peer.response(1)[:2] == (200, b"Hello, world!")
    peer.close()
    assert wait_until(lambda: path[1:] in server.log() or "returned without" in server.log(), 5)
    assert "Traceback" in server.log() or "returned without" in server.log()


MISUSE_ERRORS = {
    "start_twice": ["ok", "RuntimeError: http.response.start sent twice"],
    "body_first": ["RuntimeError: http.response.body before http.response.start"],
    "unknown_type": ["ok", "ValueError: unknown ASGI message type 'http.response.bogus'"],
    "bad_status": ["ValueError: invalid ASGI status 99"],
    "bad_header": ["ValueError: invalid character '\\n' in header value '1\\n2'"],
    "str_body": ["ok", "TypeError: http.response.body: the body must be bytes, not str"],
    "after_complete": ["ok", "ok", "RuntimeError: http.response.body after the response was "
                       "complete"],
}


def test_asgi_send_refuses_what_breaks_the_protocol_when_awaited(asgi):
    """ASGI send on both cores (the compiled one sends the common messages
    in the call): a message that breaks the protocol raises, with the same
    error, when it is awaited; what was sent before stands, and the
    response completes."""
    server = asgi()
    peer = RawPeer(server.address)
    for i, name in enumerate(sorted(MISUSE_ERRORS), 1):
        peer.send(request(i, env("/misuse/" + name), flags=KEEP))
        status, body, app_status, _, _ = peer.response(i)
        assert (status, body, app_status) == (200, b"done", 0), name
        line = "misuse %s: %s" % (name, json.dumps(MISUSE_ERRORS[name]))
        assert wait_until(lambda: line in server.log(), 5), (line, server.log()[-2000:])
    peer.close()
    assert "Traceback" not in server.log()


def test_asgi_send_run_as_a_task(asgi):
    """send(message) is a coroutine on both cores: an application may hand
    it to asyncio.create_task."""
    server = asgi()
    peer = RawPeer(server.address)
    peer.send(request(1, env("/send_in_tasks"), flags=KEEP))
    assert peer.response(1)[:3] == (200, b"from tasks", 0)
    peer.close()
    assert "Traceback" not in server.log()


def test_asgi_send_is_a_coroutine_function(asgi, core_id):
    """asgiref's async_to_sync(send) takes send without a warning on both
    cores: the compiled send, a function returning an awaitable, carries
    the mark of a coroutine function (inspect's own test sees the mark
    from 3.12; before, asgiref asks asyncio's)."""
    server = asgi()
    peer = RawPeer(server.address)
    peer.send(request(1, env("/send_marked"), flags=KEEP))
    status, body = peer.response(1)[:2]
    peer.close()
    assert status == 200
    said = json.loads(body)
    marked = True
    if core_id == "c":
        # Cython before 3.1 (what Python 3.6 and 3.7 build with) has no
        # mark to set; its functions' type is in the module "_cython_3_0_12".
        import fastfcgi
        built_with = type(fastfcgi._ASGIResponseCore.send).__module__.split("_")[2:4]
        marked = tuple(map(int, built_with)) >= (3, 1)
    assert said["asgiref"] == ([] if marked else
                               ["async_to_sync was passed a non-async-marked callable"])
    assert said["inspect"] is (core_id == "py" or sys.version_info >= (3, 12))
    assert said["asyncio"] is (None if sys.version_info >= (3, 14) else marked)


@pytest.mark.skipif(sys.version_info < (3, 8), reason="tasks have names from Python 3.8")
def test_asgi_request_task_is_named(asgi):
    """A request runs in a task named "fastfcgi request" (asyncio.all_tasks()
    and a task's repr say what it is), eager (3.12+) or not."""
    server = asgi()
    peer = RawPeer(server.address)
    for request_id in (1, 2):
        peer.send(request(request_id, env("/task_name"), flags=KEEP))
        assert peer.response(request_id)[:2] == (200, b"fastfcgi request")
    peer.close()


def test_asgi_limits_are_answered(asgi):
    server = asgi("--max-body", "1k", "--max-param-size", "100")
    peer = RawPeer(server.address)
    peer.send(request(1, env("/upload", "POST"), b"x" * 5000, flags=KEEP, split=1000))
    assert peer.response(1)[0] == 413
    peer.close()
    peer = RawPeer(server.address)
    peer.send(request(1, env("/hello", HTTP_X="y" * 101), flags=KEEP))
    assert peer.response(1)[0] == 431
    peer.close()
    peer = RawPeer(server.address)
    peer.send(request(1, env("/hello"), flags=0))
    assert peer.response(1)[:2] == (200, b"Hello, world!")
    peer.close()


# -- lifespan, signals ------------------------------------------------------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
def test_asgi_lifespan_startup_failure_is_one_clear_error_and_exit_1(core_id, tmp_path, workers):
    server = FastCGIProcess(core_id, "asgi_apps:fail_startup", "--asgi", "--workers", workers,
                            tmpdir=str(tmp_path))
    try:
        assert server.proc.wait(20) == 1
        log = server.log()
        assert "the database is down" in log, log
    finally:
        server.stop()


def test_asgi_without_lifespan_support_is_served(asgi):
    server = asgi(app="asgi_apps:no_lifespan")
    peer = RawPeer(server.address)
    peer.send(request(1, env("/"), flags=0))
    assert peer.response(1)[:2] == (200, b"served without lifespan")
    peer.close()
    assert "does not use the ASGI lifespan protocol" in server.log()


def test_asgi_term_finishes_running_requests_and_runs_lifespan_shutdown(asgi):
    server = asgi()
    peer = RawPeer(server.address)
    peer.send(request(1, env("/sleep?500-a"), flags=KEEP))
    time.sleep(0.1)
    server.signal(signal.SIGTERM)
    assert peer.response(1)[:2] == (200, b"500-a")
    peer.close()
    assert server.proc.wait(10) == 0
    assert "lifespan shutdown ran" in server.log()


def test_asgi_async_raw_application(start):
    """--raw with an async def callable runs on the asyncio server, with
    the AsyncRequest (await read_stdin_bytes, print_stdout, drain)."""
    server = start("--raw", "--access-log", app="asgi_apps:raw_echo")
    peer = RawPeer(server.address)
    peer.send(request(1, env("/echo", "POST", CONTENT_LENGTH="5"), b"hello", flags=0))
    status, body, _, _, _ = peer.response(1)
    assert (status, body) == (200, b"POST /echo 5\nHELLO")
    peer.close()
    # The status the application printed is logged.
    assert wait_until(lambda: '"POST /echo HTTP/1.1" 200 ' in server.log(), 5), server.log()


def test_asgi_timeout_logs_the_oldest_request_task_and_replaces_the_worker(asgi):
    server = asgi("--timeout", "1")
    first = worker_pid(server)
    peer = RawPeer(server.address, timeout=20)
    peer.send(request(1, env("/stuck"), flags=KEEP))
    assert peer.closed()                # the worker was killed
    peer.close()
    log = server.log()
    assert "over --timeout" in log
    assert "the oldest request, 1 GET /stuck" in log and "asgi_apps.py" in log, log
    assert wait_until(lambda: worker_pid(server) != first, 10)


def test_asgi_pathsend_sends_files_by_sendfile_between_other_responses(asgi, tmp_path):
    """http.response.pathsend: the file goes by sendfile(2) inside STDOUT
    records; on a multiplexed connection the other requests' records wait
    behind it, so every response arrives whole."""
    server = asgi()
    files = {}
    for i, size in [(1, 3 << 20), (3, 100001), (5, 0)]:
        path = tmp_path / ("f%d" % i)
        path.write_bytes(os.urandom(size))
        files[i] = path
    peer = RawPeer(server.address, timeout=30)
    out = b""
    for i in (1, 3, 5):
        out += request(i, env("/pathsend?%s" % files[i]), flags=KEEP)
        out += request(i + 1, env("/chunks?20"), flags=KEEP)
    peer.send(out)
    done, _ = responses(peer, [1, 2, 3, 4, 5, 6])
    for i in (1, 3, 5):
        assert done[i][:3] == (200, files[i].read_bytes(), 0)
        assert done[i + 1][:2] == (200, b"".join(b"%099d\n" % n for n in range(20)))
    peer.send(request(1, env("/pathsend?/no/such/file"), flags=KEEP))
    assert peer.response(1)[0] == 500
    peer.close()


@pytest.mark.parametrize("app", ["apps:raw_http", "asgi_apps:raw_http"])
def test_as_http_request_and_send_http_response(start, app):
    """Net::Async::FastCGI's pair, on the blocking Request and the async one:
    a plain request object in, a status / headers / body response out.  A
    body past the stdin high-water mark is read whole too (the read that
    waits for more lifts the pause)."""
    server = start("--raw", "--access-log", app=app)
    peer = RawPeer(server.address)
    peer.send(request(1, env("/x", "PUT", REQUEST_URI="/x?q=1", QUERY_STRING="q=1",
                             HTTP_X_THING="thing", CONTENT_LENGTH="4"), b"data", flags=KEEP))
    status, body, app_status, _, _ = peer.response(1)
    assert (status, body, app_status) == (201, b"PUT /x?q=1 thing HTTP/1.1 b'data'", 0)
    big = b"b" * 400000
    peer.send(request(1, env("/x", "PUT", CONTENT_LENGTH=str(len(big))), big, flags=0,
                      split=65528))
    status, body, _, _, _ = peer.response(1)
    assert status == 201 and body.endswith(b"b" * 100 + b"'") and len(body) > 400000
    peer.close()
    assert wait_until(lambda: server.log().count('"PUT /x HTTP/1.1" 201 ') == 1 and
                      '"PUT /x?q=1 HTTP/1.1" 201 ' in server.log(), 5), server.log()


def test_asgi_a_protocol_error_is_http_disconnect_and_the_worker_serves_on(asgi):
    """A malformed record on the connection: the running request's receive()
    gives http.disconnect (its input is over), and the worker serves on."""
    server = asgi()
    peer = RawPeer(server.address)
    peer.send(request(1, env("/wait_disconnect", "POST", CONTENT_LENGTH="2"), b"ab", flags=KEEP))
    time.sleep(0.2)
    peer.send(b"\x02" + b"\x00" * 7)            # version 2: PROTO
    assert wait_until(lambda: "wait_disconnect: http.disconnect after" in server.log(), 5)
    assert wait_until(lambda: "PROTO (-3)" in server.log(), 5)
    peer.close()
    other = RawPeer(server.address)
    other.send(request(1, env("/hello"), flags=0))
    assert other.response(1)[:2] == (200, b"Hello, world!")
    other.close()


def test_asgi_filter_role(asgi):
    """FILTER (spec 6.4): the body is stdin, the file to filter comes as
    FCGI_DATA; an ASGI application reads it through the AsyncRequest."""
    server = asgi()
    peer = RawPeer(server.address)
    data = b"filter me " * 50000
    peer.send(begin(1, role=3) + params_records(1, env("/filter_upper"))
              + stdin_records(1, b"") + b"".join(rec(8, 1, data[i:i + 65528])
                                                 for i in range(0, len(data), 65528))
              + rec(8, 1, b""))
    status, body, _, _, _ = peer.response(1)
    assert (status, body) == (200, data.upper())
    peer.close()


def test_asgi_a_request_behind_a_refused_one_is_not_served_on_a_closing_connection(asgi):
    """431 for the first request: the connection is half-closed and
    drained; what came behind it is dropped, without an error."""
    server = asgi("--max-param-size", "100")
    peer = RawPeer(server.address)
    peer.send(request(1, env("/hello", HTTP_X="y" * 101), flags=0)
              + request(2, env("/hello"), flags=KEEP))
    assert peer.response(1)[0] == 431
    assert peer.closed()
    peer.close()
    time.sleep(0.3)
    assert "Traceback" not in server.log() and "exception" not in server.log().lower(), \
        server.log()


def test_asgi_management_records_from_a_peer_that_never_reads(asgi):
    """GET_VALUES from a peer that never reads the answers: once the
    answers back up, the worker stops reading; its memory stays bounded."""
    server = asgi()
    pid = worker_pid(server)
    before = rss_kib(pid)
    peer = RawPeer(server.address)
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    question = get_values("FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS") * 1000
    sent = 0
    peer.sock.settimeout(2)
    try:
        while sent < 200 << 20:
            peer.sock.sendall(question)
            sent += len(question)
    except OSError:         # the worker stopped reading: our send timed out
        pass
    assert sent < 200 << 20
    assert rss_kib(pid) - before < 16384
    peer.close()
    other = RawPeer(server.address)
    other.send(request(1, env("/hello"), flags=0))
    assert other.response(1)[:2] == (200, b"Hello, world!")
    other.close()
