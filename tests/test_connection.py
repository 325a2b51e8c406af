"""Connection: accepting, reading, sending and closing, on both cores.

The compiled Connection works on the accepted file descriptor and makes the
socket object only when asked for it; these tests hold it to what the pure
one (a socket object from the start) does, over real sockets.
"""

import errno
import gc
import os
import select
import socket
import struct
import sys
import threading
import time
import types

import pytest

import fastfcgi_py
from conftest import begin, end_reply, get_values, params_records, rec, request
from conftest import request as fcgi_request
from servers import read_to_end, wait_until

HELLO = b"Hello, world!"


def hello_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(HELLO)))])
    return [HELLO]


def listener(family, tmp_path, timeout=0.0):
    if family == socket.AF_UNIX:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(tmp_path / "l.sock"))
    elif family == socket.AF_INET6:
        sock = socket.socket(socket.AF_INET6)
        sock.bind(("::1", 0))
    else:
        sock = socket.socket(socket.AF_INET)
        sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(timeout)
    return sock


def connect(lsock):
    client = socket.socket(lsock.family)
    client.settimeout(10)
    client.connect(lsock.getsockname())
    return client


FAMILIES = [pytest.param(socket.AF_UNIX, id="unix"), pytest.param(socket.AF_INET, id="tcp"),
            pytest.param(socket.AF_INET6, id="tcp6")]


def skip_without_ipv6(family):
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")


@pytest.mark.parametrize("family", FAMILIES)
def test_Connection_accept_gives_the_peer_as_socket_accept(core, family, tmp_path):
    skip_without_ipv6(family)
    with listener(family, tmp_path) as lsock:
        first = connect(lsock)
        second = connect(lsock)
        conn = core.Connection.accept(lsock)
        reference, reference_peer = lsock.accept()     # what socket.accept() says
        try:
            if family == socket.AF_UNIX:
                assert conn.peer == reference_peer == ""
            else:
                assert reference_peer == second.getsockname()
                assert conn.peer == first.getsockname()
                assert len(conn.peer) == len(reference_peer)
                assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert type(conn.peer) is type(reference_peer)
            assert conn.parser is None and conn.writer is None
            assert not conn.drain and not conn.registered and conn.send_file is None
            assert conn.peer_text == ("unix" if family == socket.AF_UNIX
                                      else "%s:%s" % first.getsockname()[:2])
        finally:
            conn.close()
            reference.close()
            first.close()
            second.close()


@pytest.mark.parametrize("family", FAMILIES[1:])
def test_Connection_accept_nodelay_false_leaves_TCP_NODELAY_to_the_listener(core, family,
                                                                           tmp_path):
    skip_without_ipv6(family)
    with listener(family, tmp_path) as lsock:
        client = connect(lsock)
        conn = core.Connection.accept(lsock, False)
        assert not conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        conn.close()
        client.close()
        inherits = fastfcgi_py.tune_listener(lsock)
        assert lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert inherits == sys.platform.startswith("linux")
        client = connect(lsock)
        client.sendall(b"x")        # TCP_DEFER_ACCEPT: accept() waits for bytes
        assert select.select([lsock], [], [], 5.0)[0]
        conn = core.Connection.accept(lsock, not inherits)
        assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        conn.close()
        client.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_Server_connections_have_TCP_NODELAY_as_the_application_sees_them(core, family,
                                                                         tmp_path):
    """A streamed response's small chunks must not wait for the web
    server's delayed ACKs: every TCP connection the Server accepts has
    TCP_NODELAY, set on it or inherited from the listener."""
    skip_without_ipv6(family)
    seen = []

    def app(environ, start_response):
        sock = environ["fastcgi.request"].connection.sock
        if sock.family != socket.AF_UNIX:
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        else:
            seen.append("unix")
        return hello_app(environ, start_response)

    with listener(family, tmp_path) as lsock:
        server = core.Server(core.WSGIGateway(app), lsock)
        server._poller = fastfcgi_py._Poller()
        clients = [connect(lsock) for _ in range(3)]
        for client in clients:
            client.sendall(fcgi_request(1, {"REQUEST_METHOD": "GET"}))
        server._accept()
        for client in clients:
            assert HELLO in client.recv(65536)
            client.close()
        server._poller.close()
    assert len(seen) == 3
    assert all(flag == "unix" for flag in seen) if family == socket.AF_UNIX else all(seen)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_DEFER_ACCEPT is Linux's")
@pytest.mark.parametrize("family", FAMILIES[1:])
def test_Server_leaves_a_silent_TCP_peer_in_the_kernel(core, family, tmp_path):
    """The web server speaks first, so the Server's TCP listener defers
    accepting until a connection's first bytes are in: a peer that
    connects and sends nothing never reaches the worker (whose recv() it
    would otherwise hold), and the request behind it is served."""
    skip_without_ipv6(family)
    with listener(family, tmp_path) as lsock:
        server = core.Server(core.WSGIGateway(hello_app), lsock)
        assert lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
        server._poller = fastfcgi_py._Poller()
        silent = connect(lsock)
        client = connect(lsock)
        client.sendall(fcgi_request(1, {"REQUEST_METHOD": "GET"}))
        assert select.select([lsock], [], [], 5.0)[0]
        # Were the silent peer accepted, its recv() would hold the worker
        # until this timer ends it; the test would then fail, not hang.
        release = threading.Timer(3.0, silent.shutdown, (socket.SHUT_WR,))
        release.start()
        server._accept()
        held = release.finished.is_set()
        release.cancel()
        assert not held, "the worker waited on the silent connection"
        assert server.served == 1
        assert HELLO in client.recv(65536)
        client.close()
        with pytest.raises(BlockingIOError):
            core.Connection.accept(lsock)       # still in the kernel
        silent.sendall(fcgi_request(1, {"REQUEST_METHOD": "GET"}))
        assert select.select([lsock], [], [], 5.0)[0]
        server._accept()
        assert server.served == 2
        assert HELLO in silent.recv(65536)
        silent.close()
        server._poller.close()


def read_to_eof(sock, timeout):
    """What ``sock`` receives up to its EOF; None if no EOF within ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except socket.timeout:
        return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MSG_MORE is Linux's")
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("made", ["accepted", "from_socket"])
def test_Connection_send_last_sends_all_then_the_end(core, family, made, tmp_path):
    """send_last sends everything (here more than a socket buffer holds);
    over TCP the peer then reads the EOF at once.  On a unix socket there
    is no segment to save, so the connection stays open until close()."""
    skip_without_ipv6(family)
    data = os.urandom(3 << 20)
    with listener(family, tmp_path) as lsock:
        client = connect(lsock)
        if made == "accepted":
            assert select.select([lsock], [], [], 5.0)[0]
            conn = core.Connection.accept(lsock)
        else:
            conn = core.Connection(lsock.accept()[0], None, None)
        got = []
        reader = threading.Thread(target=lambda: got.append(
            read_to_eof(client, 0.5 if family == socket.AF_UNIX else 5.0)))
        reader.start()
        conn.send_last(data)
        reader.join()
        if family == socket.AF_UNIX:
            assert got == [None]
            conn.close()
            assert read_to_eof(client, 5.0) == b""
        else:
            assert got[0] == data
            conn.close()
        client.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MSG_MORE is Linux's")
@pytest.mark.parametrize("family", FAMILIES[1:])
@pytest.mark.parametrize("keep_conn", [False, True], ids=["close", "keep_conn"])
def test_Server_ends_a_TCP_connection_with_its_last_response(core, family, keep_conn, tmp_path):
    """Without KEEP_CONN the response leaves with the FIN (one segment, see
    Connection.send_last): the web server sees the connection end with the
    response, even while the application's close() still runs.  A kept
    connection stays open."""
    skip_without_ipv6(family)
    seen = []
    with listener(family, tmp_path) as lsock:
        server = core.Server(core.WSGIGateway(lambda environ, start_response: Body(
            start_response)), lsock)
        server._poller = fastfcgi_py._Poller()
        client = connect(lsock)

        class Body(object):
            def __init__(self, start_response):
                start_response("200 OK", [("Content-Type", "text/plain"),
                                          ("Content-Length", str(len(HELLO)))])

            def __iter__(self):
                return iter([HELLO])

            def close(self):
                # The worker is still in the application: what has the
                # web server received by now?
                seen.append(read_to_eof(client, 0.3 if keep_conn else 5.0))

        client.sendall(fcgi_request(1, flags=fastfcgi_py.FCGI_KEEP_CONN if keep_conn else 0))
        assert select.select([lsock], [], [], 5.0)[0]
        server._accept()
        assert server.served == 1
        if keep_conn:
            assert seen == [None]           # no EOF: the connection serves on
            assert len(server._kept) == 1
        else:
            assert seen[0] is not None, "no EOF until the application's close() returned"
            assert HELLO in seen[0] and seen[0].endswith(bytes(fastfcgi_py.Writer().end_request(1, 0)))
            assert not server._kept
        client.close()
        server._poller.close()


@pytest.mark.parametrize("family", FAMILIES[1:])
def test_Server_serves_on_when_the_last_response_finds_the_peer_gone(core, family, tmp_path):
    """A web server that resets the connection before the answer: the last
    send (Connection.send_last) fails, the request is aborted, and the
    worker serves the next connection."""
    skip_without_ipv6(family)
    outcome = []
    with listener(family, tmp_path) as lsock:
        gone = connect(lsock)

        def handler(request):
            if not outcome:
                gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                gone.close()                # a reset, not a FIN
                time.sleep(0.05)
                request.finish(0, b"Status: 200 OK\r\n\r\n" + HELLO)
                outcome.append(request.is_aborted)
            else:
                request.finish(0, b"Status: 200 OK\r\n\r\n" + HELLO)

        server = core.Server(handler, lsock)
        server._poller = fastfcgi_py._Poller()
        gone.sendall(fcgi_request(1))
        assert select.select([lsock], [], [], 5.0)[0]
        server._accept()
        assert outcome == [True]
        client = connect(lsock)
        client.sendall(fcgi_request(1))
        assert select.select([lsock], [], [], 5.0)[0]
        server._accept()
        assert server.served == 2
        assert HELLO in read_to_eof(client, 5.0)
        client.close()
        server._poller.close()


def test_Connection_accept_with_none_waiting_raises_BlockingIOError(core, tmp_path):
    with listener(socket.AF_UNIX, tmp_path) as lsock:
        with pytest.raises(BlockingIOError):
            core.Connection.accept(lsock)


def test_Connection_accept_on_a_listener_with_a_timeout_waits_it_out(core, tmp_path):
    with listener(socket.AF_UNIX, tmp_path, timeout=0.05) as lsock:
        with pytest.raises(socket.timeout):
            core.Connection.accept(lsock)
        client = connect(lsock)
        conn = core.Connection.accept(lsock)
        conn.sendall(b"ping")
        assert client.recv(10) == b"ping"
        conn.close()
        client.close()


def test_Connection_reads_a_request_and_sends_on_the_accepted_socket(core, tmp_path):
    with listener(socket.AF_UNIX, tmp_path) as lsock:
        client = connect(lsock)
        client.sendall(fcgi_request(1, {"REQUEST_METHOD": "GET"}, body=b"abc"))
        conn = core.Connection.accept(lsock)
        conn.parser = core.Parser()
        assert conn.read_request() == core.OK
        assert conn.params == {"REQUEST_METHOD": "GET"}
        assert conn.read_event() == (core.FCGI_STDIN, 1, b"abc")
        assert conn.read_event() == (core.FCGI_STDIN, 1, b"")
        conn.sendall(bytearray(b"x" * 3000))        # any buffer
        assert client.recv(65536) == b"x" * 3000
        client.close()
        conn.end_request(1)
        assert conn.read_request() == core.NOREQ
        conn.close()


def test_Connection_sendall_lets_a_signal_handler_raise(core, tmp_path):
    """A signal that cuts a blocked sendall short runs its handler, whose
    exception propagates (as socket.sendall's does), even when the send
    it interrupted had sent some bytes."""
    import signal

    class Alarm(Exception):
        pass

    def on_alarm(signum, frame):
        raise Alarm()

    with listener(socket.AF_UNIX, tmp_path) as lsock:
        client = connect(lsock)
        conn = core.Connection.accept(lsock)
        old = signal.signal(signal.SIGALRM, on_alarm)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Alarm):
                conn.sendall(b"x" * 50000000)   # never read: blocks
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            conn.close()
            client.close()


def test_Connection_sock_is_the_accepted_socket_whenever_asked(core, tmp_path):
    with listener(socket.AF_UNIX, tmp_path) as lsock:
        client = connect(lsock)
        conn = core.Connection.accept(lsock)
        fd = conn.fileno()
        sock = conn.sock
        assert sock.fileno() == fd and conn.sock is sock and conn.fileno() == fd
        assert sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
        assert sock.gettimeout() is None        # blocking, as accept4() gives it
        conn.sendall(b"via the socket")
        assert client.recv(100) == b"via the socket"
        conn.close()
        assert sock.fileno() == -1
        assert client.recv(100) == b""
        client.close()


def test_Connection_sock_can_be_replaced_and_the_old_descriptor_closes(core, tmp_path):
    """``conn.sock`` is an attribute on both cores: setting it gives the
    connection another socket, and the accepted descriptor is closed as
    the pure core's dropped socket object closes it."""
    with listener(socket.AF_UNIX, tmp_path) as lsock:
        client = connect(lsock)
        conn = core.Connection.accept(lsock)
        old_fd = conn.fileno()
        a, b = socket.socketpair()
        conn.sock = a
        gc.collect()        # PyPy closes a dropped socket object when it is collected
        assert conn.sock is a and conn.fileno() == a.fileno()
        assert client.recv(100) == b""          # the accepted socket closed
        conn.sendall(b"on the new socket")
        assert b.recv(100) == b"on the new socket"
        if old_fd != a.fileno():
            with pytest.raises(OSError):
                os.fstat(old_fd)
        conn.close()
        b.close()
        client.close()


NODELAY_FAILS_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
/* setsockopt(TCP_NODELAY) fails with ENOBUFS, as a kernel may. */
int setsockopt(int fd, int level, int name, const void *value, socklen_t len) {
    static int (*real)(int, int, int, const void *, socklen_t);
    if (level == IPPROTO_TCP && name == TCP_NODELAY) { errno = ENOBUFS; return -1; }
    if (!real) real = dlsym(RTLD_NEXT, "setsockopt");
    return real(fd, level, name, value, len);
}
"""

NODELAY_PROBE = r"""
import socket, sys
sys.path[:0] = [sys.argv[2], sys.argv[3]]
core = __import__(sys.argv[1])
lsock = socket.socket()
lsock.bind(("127.0.0.1", 0))
lsock.listen(4)
lsock.setblocking(False)
client = socket.create_connection(lsock.getsockname())
import select
select.select([lsock], [], [], 5)
try:
    core.Connection.accept(lsock)
except OSError as exc:
    client.settimeout(5)
    print("OSError", exc.errno, repr(client.recv(10)))
else:
    print("accepted")
"""


def test_Connection_accept_raises_when_TCP_NODELAY_cannot_be_set(core, tmp_path):
    """Both cores raise the setsockopt error (and close the accepted
    socket) instead of serving without TCP_NODELAY; the failure comes from
    the real libc call, wrapped by a preloaded library."""
    import shutil
    import subprocess
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the preloaded library")
    (tmp_path / "nodelay.c").write_text(NODELAY_FAILS_C)
    lib = str(tmp_path / "nodelay.so")
    subprocess.check_call([cc, "-shared", "-fPIC", "-o", lib, str(tmp_path / "nodelay.c"),
                           "-ldl"])
    (tmp_path / "probe.py").write_text(NODELAY_PROBE)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, LD_PRELOAD=lib)
    out = subprocess.run([sys.executable, str(tmp_path / "probe.py"), core.__name__,
                          os.path.dirname(core.__file__), root],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         timeout=60, universal_newlines=True)
    assert out.stdout.split() == ["OSError", str(errno.ENOBUFS), "b''"], out.stderr


def test_Connection_sendall_to_a_peer_that_went_away_raises_OSError(core, tmp_path):
    with listener(socket.AF_UNIX, tmp_path) as lsock:
        client = connect(lsock)
        conn = core.Connection.accept(lsock)
        client.close()
        with pytest.raises(OSError) as info:
            for _ in range(10):
                conn.sendall(b"x" * 100000)
        assert info.value.errno in (errno.EPIPE, errno.ECONNRESET)
        conn.close()
        conn.close()                            # idempotent
        with pytest.raises(OSError):
            conn.sendall(b"closed")


def test_Connection_close_closes_the_descriptor(core, tmp_path):
    with listener(socket.AF_UNIX, tmp_path) as lsock:
        client = connect(lsock)
        conn = core.Connection.accept(lsock)
        fd = conn.fileno()
        conn.close()
        with pytest.raises(OSError) as info:
            os.fstat(fd)
        assert info.value.errno == errno.EBADF
        client.close()


def test_Connection_made_from_a_socket_uses_it(core):
    a, b = socket.socketpair()
    conn = core.Connection(a, core.Parser(), core.Writer(), "peer")
    assert conn.sock is a and conn.fileno() == a.fileno() and conn.peer_text == "peer"
    b.sendall(fcgi_request(7, {"A": "b"}))
    assert conn.read_request() == core.OK and conn.request_id == 7
    conn.sendall(b"out")
    assert b.recv(10) == b"out"
    conn.close()
    assert a.fileno() == -1
    b.close()


def exchange_through_server(core, tmp_path, stream, flags=0):
    """Send ``stream`` to a core's Server over a unix socket; return what
    came back, all of it, and whether the connection was kept."""
    lsock = listener(socket.AF_UNIX, tmp_path)
    server = core.Server(core.WSGIGateway(hello_app), lsock)
    server._poller = fastfcgi_py._Poller()
    client = connect(lsock)
    try:
        client.sendall(stream)
        server._accept()
        kept = len(server._kept)
        for conn in list(server._kept.values()):
            server._close(conn)
        for draining in list(server._draining.values()):
            server._end_drain(draining)
        return read_to_end(client), kept
    finally:
        client.close()
        server._poller.close()
        lsock.close()


@pytest.mark.parametrize("case", ["get", "keep", "post", "unknown-role", "proto"])
def test_Server_on_either_core_answers_with_the_same_bytes(tmp_path, case):
    """Differential: the compiled Server (Connection on the fd) and the pure
    one give the web server the same bytes."""
    import conftest
    if conftest.fastfcgi is None:
        pytest.skip("compiled core not built")
    flags = 1 if case == "keep" else 0
    body = b"field=value" if case == "post" else b""
    env = {"REQUEST_METHOD": "POST" if body else "GET", "CONTENT_LENGTH": str(len(body) or "")}
    stream = fcgi_request(1, env, body=body, flags=flags)
    if case == "unknown-role":
        stream = stream[:8] + b"\x02" + stream[9:]          # role 0x0201
    elif case == "proto":
        stream = stream[:16] + b"\x02" + stream[17:]        # a version 2 record
    results = []
    for core, name in ((conftest.fastfcgi, "c"), (fastfcgi_py, "py")):
        (tmp_path / name).mkdir()
        results.append(exchange_through_server(core, tmp_path / name, stream))
    assert results[0] == results[1]
    got, kept = results[0]
    if case == "unknown-role":
        assert got == b"\x01\x03\x00\x01\x00\x08\x00\x00" + bytes((0, 0, 0, 0, 3, 0, 0, 0))
    elif case == "proto":
        assert got == b""
    else:
        assert HELLO in got and got.endswith(b"\x01\x03\x00\x01\x00\x08\x00\x00" + bytes(8))
        assert kept == (1 if case == "keep" else 0)


# -- the Server's poller -------------------------------------------------------

@pytest.mark.parametrize("kind", ["epoll", "selectors"])
def test_Poller_reports_the_readable_fds(kind, monkeypatch):
    """epoll where there is one, selectors elsewhere: the same answers."""
    if kind == "selectors":
        # The module as fastfcgi_py sees it, without epoll (selectors keeps
        # the real one: on 3.6 its DefaultSelector needs it).
        monkeypatch.setattr(fastfcgi_py, "select", types.SimpleNamespace())
    elif not hasattr(fastfcgi_py.select, "epoll"):
        pytest.skip("no epoll here")
    poller = fastfcgi_py._Poller()
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for a, _ in pairs:
            poller.register(a.fileno())
        assert poller.poll(0) == []
        pairs[0][1].send(b"x")
        pairs[2][1].send(b"x")
        assert sorted(fd for fd, _ in poller.poll(1.0)) == sorted([pairs[0][0].fileno(),
                                                                   pairs[2][0].fileno()])
        poller.unregister(pairs[0][0].fileno())
        assert [fd for fd, _ in poller.poll(1.0)] == [pairs[2][0].fileno()]
        with pytest.raises(KeyError):
            poller.unregister(pairs[0][0].fileno())
    finally:
        poller.close()
        for a, b in pairs:
            a.close()
            b.close()


def close_all(server, clients, lsock):
    """Close what a test that drives ``server`` by hand opened."""
    for conn in list(server._kept.values()):
        server._close(conn)
    server._poller.close()
    for client in clients:
        client.close()
    lsock.close()


def test_Server_skips_a_stale_event_whose_fd_a_new_connection_took(core, tmp_path, monkeypatch):
    """An event the poller reported for a kept connection that was closed
    earlier in the same batch (the least recently used one, for a new
    connection) is not served on the connection that took its fd number:
    that read would block the worker."""
    lsock = listener(socket.AF_UNIX, tmp_path)
    server = core.Server(core.WSGIGateway(hello_app), lsock, max_conns=1)
    server._poller = fastfcgi_py._Poller()
    clients = []
    try:
        clients.append(connect(lsock))
        clients[0].sendall(fcgi_request(1, {"REQUEST_METHOD": "GET"}, flags=1))
        server._accept()
        assert HELLO in clients[0].recv(65536)
        (old_fd, old_conn), = server._kept.items()
        # Two new connections: the first closes the old one, the second
        # gets its fd number.  (A kept connection's event is served without
        # waiting, so a wrong read would find nothing, not block.)
        for _ in range(2):
            client = connect(lsock)
            client.sendall(fcgi_request(1, {"REQUEST_METHOD": "GET"}, flags=1))
            clients.append(client)
        server._dispatch([(lsock.fileno(), 1), (old_fd, 1)], lsock.fileno())
        assert HELLO in clients[1].recv(65536) and HELLO in clients[2].recv(65536)
        (new_fd, new_conn), = server._kept.items()
        assert new_fd == old_fd and new_conn is not old_conn, "the fd was not reused"
        assert new_conn.parser.buffered == 0
    finally:
        close_all(server, clients, lsock)


def test_Server_holds_max_conns_kept_connections_and_says_so(core, tmp_path):
    """``max_conns`` is enforced: a third kept connection closes the least
    recently used of two; FCGI_MAX_CONNS answers max_conns * workers."""
    lsock = listener(socket.AF_UNIX, tmp_path)
    server = core.Server(core.WSGIGateway(hello_app), lsock, max_conns=2, workers=3)
    server._poller = fastfcgi_py._Poller()
    clients = []
    try:
        for _ in range(3):
            client = connect(lsock)
            client.sendall(fcgi_request(1, {"REQUEST_METHOD": "GET"}, flags=1))
            clients.append(client)
            server._accept()
            assert HELLO in client.recv(65536)
        assert len(server._kept) == 2
        assert clients[0].recv(100) == b""              # the oldest was closed
        clients[2].sendall(get_values("FCGI_MAX_CONNS"))
        server._dispatch(server._poller.poll(5.0))
        assert b"FCGI_MAX_CONNS6" in clients[2].recv(100)
    finally:
        close_all(server, clients, lsock)


async def hello_asgi(scope, receive, send):
    if scope["type"] != "http":
        raise ValueError("no lifespan")         # served without it
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(HELLO)).encode())]})
    await send({"type": "http.response.body", "body": HELLO})


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_AsyncServer_holds_max_conns_connections_and_accepts_again(core, tmp_path, loop):
    """Past ``max_conns`` the asyncio worker stops accepting: a third kept
    connection waits in the listen queue, and is served once one of the
    two closes."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    lsock = listener(socket.AF_UNIX, tmp_path)
    started = []

    def serve():        # the loop is made in the thread it runs in
        server = core.AsyncServer(core.ASGIGateway(hello_asgi), lsock, core=core,
                                  max_conns=2, loop=loop)
        started.append(server)
        server.serve_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    clients = []
    try:
        assert wait_until(lambda: started, 10)
        for _ in range(3):
            client = connect(lsock)
            client.sendall(fcgi_request(1, {"REQUEST_METHOD": "GET"}, flags=1))
            clients.append(client)
        assert HELLO in clients[0].recv(65536) and HELLO in clients[1].recv(65536)
        clients[2].settimeout(0.5)
        with pytest.raises(socket.timeout):
            clients[2].recv(65536)          # not accepted: the worker holds two
        assert len(started[0].connections) == 2
        clients[0].close()
        clients[2].settimeout(10)
        assert HELLO in clients[2].recv(65536)
        clients[1].sendall(fcgi_request(2, {"REQUEST_METHOD": "GET"}, flags=1))
        assert HELLO in clients[1].recv(65536)          # the kept one serves on
    finally:
        if started:
            started[0].stop()
        thread.join(10)
        assert not thread.is_alive()
        for client in clients:
            client.close()
        lsock.close()


# -- FU's blocking reader over real sockets (moved from the Parser) -------------------

@pytest.fixture
def sockpair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def connection(core, sock, **kw):
    return core.Connection(sock, core.Parser(**kw), core.Writer())


def test_Connection_read_request_and_stdin_over_a_socket(core, sockpair):
    app, web = sockpair
    env = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "6"}
    web.sendall(request(1, env, b"abcdef", flags=1, split=4) + get_values("FCGI_MAX_CONNS")
                + request(1, {"N": "2"}, b"unread", flags=1))
    conn = connection(core, app, max_conns=3)
    assert conn.read_request() == core.OK
    assert (conn.request_id, conn.role, conn.flags, conn.keep_conn,
            conn.params) == (1, 1, 1, True, env)
    assert conn.read_event() == (5, 1, b"abcd")
    assert conn.read_event() == (5, 1, b"ef")
    assert conn.read_event() == (5, 1, b"")
    conn.end_request(1)
    assert conn.read_request() == core.OK
    assert conn.params == {"N": "2"}
    # The management reply went out while reading.
    web.settimeout(5)
    assert web.recv(100) == core.Writer().get_values_result({"FCGI_MAX_CONNS": "3"})
    conn.end_request(1)             # its stdin was never read: skipped
    web.sendall(request(1, {"N": "3"}, b"", flags=0))
    assert conn.read_request() == core.OK
    assert conn.params == {"N": "3"} and not conn.keep_conn
    conn.end_request(1)
    assert conn.read_request() == core.NOREQ    # spec 5.1: it did not keep the connection
    assert conn.read_request() == core.NOREQ


def test_Connection_read_request_abort_and_unknown_role(core, sockpair):
    app, web = sockpair
    web.sendall(begin(1, role=7, flags=1) + begin(2, flags=1) + rec(2, 2)
                + request(3, {"N": "3"}))
    conn = connection(core, app)
    assert conn.read_request() == core.ABORT
    assert conn.request_id == 2
    conn.end_request(2)
    assert conn.read_request() == core.OK
    assert conn.request_id == 3
    web.settimeout(5)
    assert web.recv(100) == end_reply(1, 3)


def test_Connection_read_request_while_reading_stdin_raises(core, sockpair):
    app, web = sockpair
    web.sendall(request(1, {}, b"abc"))
    conn = connection(core, app)
    assert conn.read_request() == core.OK
    with pytest.raises(RuntimeError):
        conn.read_request()


def test_Connection_read_error_is_IO(core):
    # A TCP reset: the peer closes with SO_LINGER 0 while we wait for data.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    web = socket.create_connection(listener.getsockname())
    app, _ = listener.accept()
    web.sendall(begin(1))
    web.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    web.close()
    conn = connection(core, app)
    try:
        assert conn.read_request() == core.IO
        assert conn.error == core.IO
        assert conn.read_request() == core.IO
    finally:
        app.close()
        listener.close()


def test_Connection_write_error_is_SEND(core, sockpair):
    app, web = sockpair
    web.sendall(get_values("FCGI_MAX_CONNS"))
    web.close()                     # the reply has nowhere to go: EPIPE
    conn = connection(core, app)
    assert conn.read_request() == core.SEND
    assert conn.read_request() == core.SEND


def test_Connection_read_on_closed_socket_is_IO(core):
    a, b = socket.socketpair()
    b.close()
    fileno_holder = socket.socket(fileno=a.detach())
    fileno_holder.close()           # fileno() is now -1: the read fails
    assert connection(core, fileno_holder).read_request() == core.IO


def test_Connection_keeps_what_route_gave_while_a_request_read(core, sockpair):
    """On a multiplexing parser, a request that comes while another reads
    its stdin is kept (pending) for the next next_request, not lost."""
    app, web = sockpair
    web.sendall(begin(1, flags=1) + params_records(1, {"N": "1"}) + rec(5, 1, b"ab")
                + request(2, {"N": "2"}, b"", flags=1) + rec(5, 1, b""))
    conn = core.Connection(app, core.Parser(mpxs_conns=True, max_reqs=2), core.Writer())
    first = conn.next_request()
    assert first.params == {"N": "1"}
    assert first.read_stdin_bytes() == b"ab"        # request 2 arrived meanwhile
    second = conn.next_request(False)
    assert (second.request_id, second.params) == (2, {"N": "2"})


@pytest.mark.parametrize("server_class", ["Server", "AsyncServer"])
def test_servers_keep_under_the_shared_instance_keys_limit(core, server_class):
    """CPython shares the keys of a class's instance dicts (and specialises
    self.x) up to 30 attributes; past that every attribute read on the
    request path costs more (a 31st Server attribute cost 1k instructions a
    request under callgrind).  New settings go into a grouping object."""
    gateway = core.WSGIGateway(lambda environ, start_response: []) \
        if server_class == "Server" else core.ASGIGateway(None)
    with socket.socket(socket.AF_UNIX) as lsock:
        server = getattr(core, server_class)(gateway, lsock)
        assert len(vars(server)) <= 30, sorted(vars(server))


def test_AcceptedSocket_duplicates_as_socket_dup_does():
    """The asyncio worker's accepted socket: family and type plain ints,
    and dup() (which calls the class again) works."""
    import socket
    a, b = socket.socketpair()
    try:
        sock = fastfcgi_py._AcceptedSocket(a.family, a.type, 0, a.detach())
        copy = sock.dup()
        assert (type(sock.family), sock.family, sock.type) == (int, socket.AF_UNIX,
                                                               socket.SOCK_STREAM)
        copy.sendall(b"ping")
        assert b.recv(4) == b"ping"
        copy.close()
        sock.close()
    finally:
        b.close()
