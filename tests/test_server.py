"""The server process on both cores: real signals, worker lifecycle, and bad
input over raw sockets.  After every fault the next request must succeed."""

import json
import os
import signal
import socket
import struct
import threading
import time

import pytest

import fastfcgi_py
from conftest import begin, params_records, rec, stdin_records
from servers import FastCGIProcess, Nginx, need_nginx, send_then_stall, wait_until

ENV = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "SERVER_NAME": "test", "SERVER_PORT": "80",
       "SERVER_PROTOCOL": "HTTP/1.1", "QUERY_STRING": "", "REMOTE_ADDR": "127.0.0.1"}


def env(path, **extra):
    e = dict(ENV, PATH_INFO=path, REQUEST_URI=path)
    e.update(extra)
    return e


def get(server, path, body=b"", **extra):
    with fastfcgi_py.Client(server.address, timeout=30) as client:
        return client.request(env(path, **extra), body)


def assert_serving(server):
    response = get(server, "/hello")
    assert (response.status, response.body) == (200, b"Hello, world!"), server.log()




# -- signals ----------------------------------------------------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
def test_Server_term_lets_the_request_in_flight_complete(start, workers):
    server = start("--workers", workers)
    results = []
    thread = threading.Thread(target=lambda: results.append(get(server, "/slow", QUERY_STRING="1.5")))
    thread.start()
    assert wait_until(lambda: "slow: started" in server.log(), 10), server.log()
    server.signal(signal.SIGTERM)
    thread.join(30)
    assert results and results[0].body == b"slept"
    assert server.proc.wait(30) == 0
    assert "stopped" in server.log()


def _load(nginx, stop, failures, count):
    while not stop.is_set():
        try:
            status, _, body = nginx.request("GET", "/keep/hello", timeout=30)
            if (status, body) != (200, b"Hello, world!"):
                failures.append((status, body))
        except Exception as exc:      # any failed request counts
            failures.append(repr(exc))
        count.append(1)


@pytest.mark.frontend
@pytest.mark.parametrize("workers", ["1", "2"])
def test_Server_hup_under_load_drops_nothing(start, workers):
    need_nginx()
    server = start("--workers", workers)
    nginx = Nginx(server.address)
    try:
        boot_before = json.loads(nginx.request("GET", "/environ")[2])["boot_id"]
        stop, failures, count = threading.Event(), [], []
        threads = [threading.Thread(target=_load, args=(nginx, stop, failures, count))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for _ in range(2):
            time.sleep(0.7)
            server.signal(signal.SIGHUP)
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(60)
        errors = [l.split(", client")[0] for l in nginx.error_log().splitlines() if "[error]" in l]
        assert failures == [], "%d failed\n%s\n%s" % (len(failures), "\n".join(errors[:6]), server.log())
        assert len(count) > 20
        assert wait_until(lambda: json.loads(nginx.request("GET", "/environ")[2])["boot_id"]
                          != boot_before, 10), "the application was not imported again"
        assert "reload" in server.log()
    finally:
        nginx.stop()


def test_Server_dead_worker_is_replaced(start):
    server = start("--workers", "2")
    with pytest.raises(ConnectionError):
        get(server, "/crash")
    assert wait_until(lambda: "died" in server.log(), 10), server.log()
    for _ in range(5):
        assert_serving(server)


def test_Server_max_requests_recycles_the_worker(start):
    server = start("--max-requests", "3")
    pids = [get(server, "/pid").body for _ in range(7)]
    assert len(set(pids)) >= 2, pids
    assert pids[0] == pids[1] == pids[2] and pids[3] != pids[2]
    assert "--max-requests" in server.log()


def test_Server_max_requests_range_is_parsed(start):
    server = start("--max-requests", "2:4", "--workers", "2")
    assert len({get(server, "/pid").body for _ in range(12)}) >= 3


def test_Server_timeout_kills_a_stuck_request_with_its_traceback(start):
    server = start("--timeout", "1")
    with pytest.raises(ConnectionError):
        get(server, "/slow", QUERY_STRING="30")
    log = server.log()
    assert "over --timeout" in log
    assert "apps.py" in log and "time.sleep" in log, log     # where it was stuck
    assert_serving(server)


def test_Server_timeout_never_counts_an_idle_kept_connection(start):
    server = start("--timeout", "1")
    with fastfcgi_py.Client(server.address) as client:
        first = client.request(env("/pid"), keep_conn=True).body
        time.sleep(2.5)              # idle, kept: must survive
        assert client.request(env("/pid"), keep_conn=True).body == first
    assert "over --timeout" not in server.log()


def test_Server_timeout_covers_a_peer_that_stalls_mid_request(start):
    """A peer that sends BEGIN_REQUEST and stalls holds the worker's read:
    --timeout counts from the first read, so that worker is replaced (the
    traceback shows the read), and an idle worker never counts."""
    server = start("--timeout", "1")
    # BEGIN_REQUEST and part of the params; then the worker is killed.
    send_then_stall(*fastfcgi_py.parse_address(server.address),
                    begin(1) + params_records(1, env("/hello"))[:20])
    log = server.log()
    assert log.count("over --timeout") == 2, log     # the supervisor's line, the worker's
    assert "next_request" in log, log
    assert_serving(server)
    time.sleep(2.5)                                  # served, then idle: must survive
    assert server.log().count("over --timeout") == 2, server.log()
    assert_serving(server)


def test_Server_app_that_fails_to_import_exits_nonzero_once(core_id, tmp_path):
    for args in ([], ["--workers", "3"]):
        server = FastCGIProcess(core_id, "no_such_module:app", *args, tmpdir=str(tmp_path))
        try:
            assert server.proc.wait(20) != 0
        finally:
            server.stop()
        log = server.log()
        assert "No module named 'no_such_module'" in log
        assert log.count("cannot load the application") <= (3 if args else 1), log


# -- bad input ----------------------------------------------------------------------

def raw_exchange(server, data, read=True, half_close=False):
    """Send raw bytes (then half-close if asked: the web server went away),
    and read until the server closes (or 10 s)."""
    family, address = fastfcgi_py.parse_address(server.address)
    sock = socket.socket(family)
    sock.settimeout(10)
    sock.connect(address)
    out = b""
    try:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        while read:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
        return out
    except ConnectionResetError:      # closed with our bytes unread: a reset
        return out
    finally:
        sock.close()


def records_of(data):
    out = []
    while len(data) >= 8:
        _, rtype, rid, clen, pad = struct.unpack_from("!BBHHBx", data)
        out.append((rtype, rid, data[8:8 + clen]))
        data = data[8 + clen + pad:]
    return out


def test_Server_malformed_record_closes_the_connection_and_logs_PROTO(start):
    server = start()
    assert raw_exchange(server, rec(1, 1, struct.pack("!HB5x", 1, 0), version=9)) == b""
    assert wait_until(lambda: "PROTO (-3)" in server.log(), 5), server.log()
    assert_serving(server)


def test_Server_oversized_params_get_431(start):
    server = start("--max-param-size", "1000")
    out = raw_exchange(server, begin(1) + params_records(1, env("/hello", HTTP_X="y" * 1001))
                       + stdin_records(1, b""))
    response = fastfcgi_py.ClientResponse(
        b"".join(c for t, _, c in records_of(out) if t == 6), b"", 0, 0, [])
    assert response.status == 431
    assert records_of(out)[-1][0] == 3         # END_REQUEST
    assert wait_until(lambda: "PLEN (-4)" in server.log(), 5)
    assert_serving(server)


def test_Server_body_over_max_body_gets_413(start):
    server = start("--max-body", "1k")
    response = get(server, "/upload", b"x" * 2000)       # CONTENT_LENGTH says too much
    assert response.status == 413
    assert wait_until(lambda: "CLEN (-5)" in server.log(), 5)
    # No CONTENT_LENGTH (a relayed chunked upload): found while streaming.
    out = raw_exchange(server, begin(1) + params_records(1, env("/upload"))
                       + stdin_records(1, b"y" * 5000, split=500))
    body = b"".join(c for t, _, c in records_of(out) if t == 6)
    assert body.startswith(b"Status: 413")
    assert_serving(server)


def test_Server_invalid_content_length_is_CLEN(start):
    server = start()
    response = get(server, "/upload", b"abc", CONTENT_LENGTH="3x")
    assert response.status == 413
    assert wait_until(lambda: "CLEN (-5)" in server.log(), 5)
    assert_serving(server)


@pytest.mark.parametrize("cut", [3, 12, 40])
def test_Server_truncated_stream_is_EOF(start, cut):
    server = start()
    data = begin(1) + params_records(1, env("/hello")) + stdin_records(1, b"")
    assert raw_exchange(server, data[:cut], half_close=True) == b""
    assert wait_until(lambda: "EOF (-1)" in server.log(), 5), server.log()
    assert_serving(server)


def test_Server_client_vanishing_mid_body(start):
    server = start()
    data = begin(1) + params_records(1, env("/upload", CONTENT_LENGTH="100000")) \
        + rec(5, 1, b"x" * 5000)
    raw_exchange(server, data, read=False)
    assert wait_until(lambda: "EOF (-1)" in server.log(), 5), server.log()
    assert_serving(server)


def test_Server_abort_request_is_answered(start):
    server = start()
    out = raw_exchange(server, begin(1, flags=0) + rec(2, 1))
    assert records_of(out)[-1][0] == 3
    assert_serving(server)


def test_Server_error_after_head_ends_with_nonzero_app_status(start):
    server = start()
    response = get(server, "/fail_after_head")
    assert response.body == b"partial" and response.app_status != 0
    response = get(server, "/fail_before_head")
    assert response.status == 500 and response.app_status != 0
    assert_serving(server)


def test_Server_get_values_and_unknown_role(start):
    server = start("--workers", "2")
    with fastfcgi_py.Client(server.address) as client:
        values = client.get_values()
        assert values == {"FCGI_MAX_CONNS": str(2 * fastfcgi_py.MAX_KEPT_CONNECTIONS),
                          "FCGI_MAX_REQS": "1", "FCGI_MPXS_CONNS": "0"}
        response = client.request(env("/hello"), role=9, keep_conn=True)
        assert response.protocol_status == fastfcgi_py.FCGI_UNKNOWN_ROLE
        response = client.request(env("/hello"), keep_conn=True)
        assert response.body == b"Hello, world!"


def test_Server_cant_mpx_conn(start):
    server = start()
    out = raw_exchange(server, begin(1, flags=0) + begin(2) + params_records(1, env("/hello"))
                       + stdin_records(1, b""))
    recs = records_of(out)
    assert (3, 2, struct.pack("!LB3x", 0, 1)) in recs       # CANT_MPX_CONN for id 2
    assert recs[-1][:2] == (3, 1)


def test_Server_allow_list_closes_other_peers(start):
    server = start("--allow", "10.1.2.3,192.168.0.0/16")
    assert raw_exchange(server, begin(1) + params_records(1, env("/hello"))) == b""
    assert wait_until(lambda: "not in --allow" in server.log(), 5)
    server2 = start("--allow", "127.0.0.0/8")
    assert_serving(server2)


def test_Server_unix_socket_mode_and_cleanup(start, tmp_path):
    path = str(tmp_path / "s.sock")
    open(path, "w").close()
    os.unlink(path)
    # A stale socket file is replaced.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    server = start("--socket-mode", "600", address="unix:" + path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert_serving(server)
    assert server.stop() == 0
    assert not os.path.exists(path)


def test_Server_raw_request_api(start):
    server = start("--raw", app="apps:raw_echo")
    response = get(server, "/p", b"h\xc3\xa9llo", REQUEST_METHOD="POST", HTTP_X_TEST="t")
    assert response.body.decode("utf-8") == "POST /p HTTP/1.1|t|h\xe9llo"
    assert response.stderr == b"raw request served\n"


@pytest.mark.parametrize("app, query, logged", [
    ("raw_status", "status", 404),      # Status after another header
    ("raw_status", "location", 302),    # RFC 3875 6.2.3: a client redirect
    ("raw_status", "plain", 200),
    ("raw_status", "lf", 503),          # lines ended by LF alone
    ("raw_http", "", 201),              # send_http_response
    ("raw_status", "superscript", None),
    ("raw_status", "unended", None),
])
def test_Server_raw_responses_are_logged_and_counted_with_their_status(start, app, query,
                                                                        logged):
    """--raw: the status of the head the application printed reaches the
    access log and the status page's counts; a head without a status of
    three ASCII digits, or one that never ends, is "-" and "other"."""
    server = start("--raw", "--access-log", "--status-path", "/fpm-status", app="apps:" + app)
    response = get(server, "/r", QUERY_STRING=query)
    if query not in ("location", "superscript", "unended"):
        assert response.status == logged
    line = '"GET /r HTTP/1.1" %s ' % (logged or "-")
    assert wait_until(lambda: line in server.log(), 5), server.log()
    status = json.loads(get(server, "/fpm-status", QUERY_STRING="json").body)
    counted = "%dxx" % (logged // 100) if logged else "other"
    assert status["responses_total"][counted] == 1, status["responses_total"]
    assert "Traceback" not in server.log()


def test_Server_access_log(start):
    server = start("--access-log")
    get(server, "/hello")
    assert wait_until(lambda: '"GET /hello HTTP/1.1" 200' in server.log(), 5), server.log()


def test_Server_version_names_the_core(core_id):
    import subprocess
    import sys
    from servers import ROOT
    environment = dict(os.environ, FASTFCGI_PURE="1" if core_id == "py" else "0")
    out = subprocess.run([sys.executable, "-c", "import sys, fastfcgi_py; sys.exit(fastfcgi_py.main())",
                          "--version"], stdout=subprocess.PIPE, env=environment, cwd=ROOT,
                         check=True).stdout.decode()
    assert ("compiled core" if core_id == "c" else "pure core") in out


def test_Server_filter_role_exposes_the_data_stream(start):
    server = start()
    with fastfcgi_py.Client(server.address) as client:
        for _ in range(2):          # twice on one kept connection
            response = client.request(env("/filter_upper", FCGI_DATA_LENGTH="11"), b"in",
                                      role=fastfcgi_py.FCGI_FILTER, data=b"hello world",
                                      keep_conn=True)
            assert response.body == b"stdin=2 role=FILTER\nHELLO WORLD"


def test_Server_authorizer_role_convention(start):
    server = start()
    with fastfcgi_py.Client(server.address) as client:
        ok = client.request(env("/token_authorizer", QUERY_STRING="token=good"),
                            role=fastfcgi_py.FCGI_AUTHORIZER, keep_conn=True)
        assert ok.status == 200
        assert ("Variable-AUTH_USER", "alice") in ok.headers
        denied = client.request(env("/token_authorizer", QUERY_STRING="token=bad"),
                                role=fastfcgi_py.FCGI_AUTHORIZER, keep_conn=True)
        assert (denied.status, denied.body) == (403, b"Forbidden\n")
        expired = client.request(env("/token_authorizer", QUERY_STRING="token=expired"),
                                 role=fastfcgi_py.FCGI_AUTHORIZER)
        assert expired.status == 401 and expired.header("WWW-Authenticate") == 'Bearer realm="test"'


def test_Server_authorizer_gets_no_stdin(start):
    # lighttpd sends an authorizer no STDIN records when the request has a
    # body, only HTTP_CONTENT_LENGTH: reading the input must not wait.
    server = start()
    data = begin(1, role=fastfcgi_py.FCGI_AUTHORIZER) + params_records(
        1, env("/reading_authorizer", HTTP_CONTENT_LENGTH="10"))
    with fastfcgi_py.Client(server.address, timeout=10) as client:
        client.send_raw(data)
        response = client.read_response(1)
    assert response.status == 200 and ("Variable-READ", "yes") in response.headers


def test_Server_raw_request_api_tour(start):
    server = start("--raw", app="apps:raw_tour")
    with fastfcgi_py.Client(server.address) as client:
        response = client.request(env("/t", REQUEST_METHOD="POST"), "line one\nrest\xe9".encode(),
                                  keep_conn=True)
        assert response.status == 201
        assert response.body == b"first='line one\\n' rest=b'rest\\xc3\\xa9' aborted=False role=1 keep=True\n"
        assert response.app_status == 0
        response = client.request(env("/t", QUERY_STRING="stream"), b"x\n")
        assert response.body.endswith(b"ab") and response.app_status == 3


def test_Server_start_response_with_exc_info_replaces_the_head(start):
    server = start()
    response = get(server, "/exc_info_app")
    assert (response.status, response.body) == (503, b"unavailable")


@pytest.mark.parametrize("family", ["tcp", "unix"])
@pytest.mark.parametrize("how", ["systemd", "fd 0"])
def test_Server_serves_an_inherited_listening_socket(core_id, tmp_path, how, family):
    """LISTEN_FDS/LISTEN_PID: the socket comes as fd 3 from the service
    manager; or a web server spawned us with it on fd 0 (spec 2.2).  Either
    family, on every interpreter (3.6 does not detect a descriptor's
    family by itself)."""
    import subprocess
    import sys
    from servers import ROOT, TESTS
    if family == "unix":
        path = str(tmp_path / "inherited.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        address = "unix:" + path
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        address = "127.0.0.1:%d" % listener.getsockname()[1]
    listener.listen(16)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
    if core_id == "py":
        environment["FASTFCGI_PURE"] = "1"
    fd = listener.fileno()
    log_path = str(tmp_path / "inherited.log")
    program = 'import sys, fastfcgi_py; sys.exit(fastfcgi_py.main())'
    with open(log_path, "w") as log:
        if how == "systemd":
            environment["LISTEN_FDS"] = "1"
            # sh sets LISTEN_PID to its own pid, which exec hands to Python.
            proc = subprocess.Popen(
                ["sh", "-c", 'LISTEN_PID=$$ exec "$0" -c "%s" dispatch:app' % program,
                 sys.executable],
                env=environment, cwd=TESTS, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=(fd, 3), preexec_fn=lambda: os.dup2(fd, 3))
        else:
            proc = subprocess.Popen([sys.executable, "-c", program, "dispatch:app"],
                                    env=environment, cwd=TESTS, stdin=listener,
                                    stdout=log, stderr=subprocess.STDOUT)
    listener.close()
    try:
        class Where(object):
            pass
        where = Where()
        where.address = address
        assert wait_until(lambda: "serving" in open(log_path).read(), 15), open(log_path).read()
        assert "on " + address in open(log_path).read()
        assert_serving(where)
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_Server_allow_from_FCGI_WEB_SERVER_ADDRS(start):
    server = start(env={"FCGI_WEB_SERVER_ADDRS": "10.9.9.9"})
    assert raw_exchange(server, begin(1) + params_records(1, env("/hello"))) == b""
    assert wait_until(lambda: "not in --allow" in server.log(), 5)


def test_Server_repeated_crashes_back_off(start):
    server = start("--workers", "2")
    for _ in range(5):
        with pytest.raises(ConnectionError):
            get(server, "/crash")       # waits in the backlog for a new worker
    assert wait_until(lambda: "workers keep dying" in server.log(), 10), server.log()
    assert wait_until(lambda: _serves(server), 20), server.log()


def _serves(server):
    try:
        return get(server, "/hello").body == b"Hello, world!"
    except OSError:
        return False


def test_Server_graceful_timeout_bounds_the_stop(start):
    server = start("--workers", "2", "--graceful-timeout", "1")
    results = []

    def slow():
        try:
            results.append(get(server, "/slow", QUERY_STRING="30").body)
        except OSError as exc:
            results.append(exc)
    thread = threading.Thread(target=slow)
    thread.start()
    assert wait_until(lambda: "slow: started" in server.log(), 10)
    server.signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0
    thread.join(60)
    # The request wanted 30 s; the stop did not wait for it.
    assert results and isinstance(results[0], OSError), results
    assert "graceful timeout" in server.log()


def test_Server_ipv6_address_and_allow(start):
    probe = socket.socket(socket.AF_INET6)
    try:
        probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip("no IPv6 loopback here: %s" % exc)
    finally:
        probe.close()
    from servers import free_port
    server = start("--allow", "::1,127.0.0.1", address="[::1]:%d" % free_port())
    assert_serving(server)
    assert "serving dispatch:app on [::1]:" in server.log()


def reset(sock):
    """Close with an RST, as a balancer dropping a connection does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_kept_connection_reset_between_requests_is_no_warning(start):
    """HAProxy drops kept connections it no longer wants with an RST: not
    worth a warning a second.  A reset in the middle of a request is."""
    server = start()
    client = fastfcgi_py.Client(server.address, timeout=30)
    assert client.request(env("/hello"), keep_conn=True).status == 200
    reset(client.sock)
    assert_serving(server)
    client = fastfcgi_py.Client(server.address, timeout=30)
    client.send_raw(begin(1) + rec(fastfcgi_py.FCGI_PARAMS, 1, b"\x0b\x05PATH_I"))
    time.sleep(0.2)         # the worker has read the half record
    reset(client.sock)
    assert wait_until(lambda: "IO (-2): read error" in server.log(), 5), server.log()
    assert_serving(server)
    assert server.log().count("IO (-2)") == 1, server.log()


def test_connections_before_any_worker_runs_get_tcp_nodelay():
    """bind_listener(tune=True), as main() calls it, tunes the listener
    before listen(): a connection the kernel takes while the workers
    still load inherits TCP_NODELAY (else a response's last record waits
    for the web server's delayed ACK)."""
    listener = fastfcgi_py.bind_listener("127.0.0.1:0", tune=True)
    client = socket.create_connection(listener.getsockname())
    client.sendall(b"x")        # TCP_DEFER_ACCEPT: accept() sees it once data came
    try:
        conn, _ = listener.accept()
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        conn.close()
    finally:
        client.close()
        listener.close()
