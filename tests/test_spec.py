"""The FastCGI spec, exactly, on every connection: raw records to a running
server (both cores), and what comes back.  Each test names the rule.

The helpers (RawPeer, conftest's ``start`` fixture) take any server address,
so the same tests can run against every server fastfcgi has.
"""

import json
import hashlib
import socket
import struct
import time

import pytest

import fastfcgi_py
from conftest import starting, begin, end_reply, get_values, params_records, rec, request, stdin_records
from servers import wait_until

FCGI_STDOUT, FCGI_STDERR, FCGI_END_REQUEST = 6, 7, 3
KEEP = 1


def env(path, method="GET", **extra):
    e = {"REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path,
         "REQUEST_URI": path, "QUERY_STRING": "", "SERVER_NAME": "test", "SERVER_PORT": "80",
         "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1"}
    if "?" in path:
        e["PATH_INFO"], e["QUERY_STRING"] = path.split("?", 1)
    e.update(extra)
    return e


class RawPeer(object):
    """A web server's side of one connection, record by record."""

    def __init__(self, address, timeout=10):
        family, where = fastfcgi_py.parse_address(address)
        self.sock = socket.socket(family)
        self.sock.settimeout(timeout)
        self.sock.connect(where)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def wait_for_bytes(self):
        """Block until the server has sent something (left unread)."""
        while not self.buf:
            data = self.sock.recv(65536)
            assert data, "closed"
            self.buf += data

    def record(self):
        """The next record (type, request id, content); None once closed."""
        while True:
            if len(self.buf) >= 8:
                _, rtype, rid, clen, pad = struct.unpack_from("!BBHHBx", self.buf)
                if len(self.buf) >= 8 + clen + pad:
                    content = self.buf[8:8 + clen]
                    self.buf = self.buf[8 + clen + pad:]
                    return rtype, rid, content
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data

    def response(self, request_id):
        """Records up to request_id's END_REQUEST: (status, body, app status,
        protocol status, the other ids' records seen meanwhile)."""
        stdout = b""
        others = []
        while True:
            record = self.record()
            assert record is not None, "closed before END_REQUEST of %d" % request_id
            rtype, rid, content = record
            if rid != request_id:
                others.append(record)
            elif rtype == FCGI_STDOUT:
                stdout += content
            elif rtype == FCGI_END_REQUEST:
                app_status, protocol_status = struct.unpack("!LB3x", content)
                head, _, body = stdout.partition(b"\r\n\r\n")
                status = int(head[8:11]) if head.startswith(b"Status: ") else None
                return status, body, app_status, protocol_status, others

    def closed(self):
        """True once the server closed the connection (nothing more came)."""
        try:
            return self.record() is None
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


@pytest.fixture(params=["wsgi", "asgi"])
def server_kind(request):
    """Each rule holds on the blocking WSGI server and on the asyncio one."""
    return request.param


@pytest.fixture
def start(core_id, tmp_path, server_kind):
    """conftest's start(), serving the same test applications as WSGI
    (tests/apps.py) or as ASGI on the asyncio server (tests/asgi_apps.py)."""
    if server_kind == "wsgi":
        with starting(core_id, tmp_path) as start:
            yield start
        return
    with starting(core_id, tmp_path, ["--asgi"]) as start:
        def start_asgi(*args, app="dispatch:app", **kw):
            assert app == "dispatch:app"
            return start(*args, app="asgi_apps:app", **kw)
        yield start_asgi


def hello(peer, request_id=1, flags=KEEP):
    peer.send(request(request_id, env("/hello"), flags=flags))
    status, body, app_status, protocol_status, _ = peer.response(request_id)
    assert (status, body, app_status, protocol_status) == (200, b"Hello, world!", 0, 0)


# -- spec 3.3: request ids ---------------------------------------------------------

def test_spec_3_3_records_of_inactive_ids_are_ignored(start):
    """ "While a request ID R is inactive, the application ignores records
    with requestId == R, except for FCGI_BEGIN_REQUEST records." """
    server = start()
    peer = RawPeer(server.address)
    peer.send(rec(5, 5, b"stdin of a request never begun") + params_records(6, env("/x"))
              + rec(8, 7, b"data") + rec(2, 9)          # ABORT_REQUEST of an unknown id
              + rec(6, 10, b"stdout") + rec(3, 11, b"\0" * 8) + rec(9, 12, b""))
    hello(peer)
    # Request 1 is inactive again: its late records are ignored too.
    peer.send(stdin_records(1, b"late") + rec(2, 1))
    hello(peer)
    peer.close()
    assert "PROTO" not in server.log(), server.log()


def test_spec_5_1_cant_mpx_conn_at_once_and_the_first_request_completes(start, server_kind):
    """A second BEGIN_REQUEST while a request's input is still coming, on a
    connection that does not multiplex: END_REQUEST(CANT_MPX_CONN) at once
    (before the first request's body is complete), and the first request
    is served.  The asyncio server multiplexes: the second is served at
    once, while the first still waits for its body."""
    server = start()
    if server_kind == "asgi":
        peer = RawPeer(server.address)
        peer.send(begin(1, flags=KEEP)
                  + params_records(1, env("/upload", "POST", CONTENT_LENGTH="6"))
                  + rec(5, 1, b"abc"))
        hello(peer, 2)
        peer.send(rec(5, 1, b"def") + rec(5, 1, b""))
        status, body, _, _, _ = peer.response(1)
        assert (status, json.loads(body)["size"]) == (200, 6)
        peer.close()
        return
    peer = RawPeer(server.address)
    peer.send(begin(1, flags=KEEP) + params_records(1, env("/upload", "POST", CONTENT_LENGTH="6"))
              + rec(5, 1, b"abc"))
    peer.send(request(2, env("/hello"), flags=KEEP))
    assert peer.record() == (FCGI_END_REQUEST, 2, struct.pack("!LB3x", 0, 1))
    peer.send(rec(5, 1, b"def") + rec(5, 1, b""))
    status, body, app_status, _, others = peer.response(1)
    assert (status, json.loads(body)["size"], app_status, others) == (200, 6, 0, [])
    hello(peer, 2)          # the id refused before is free for a new request
    peer.close()


@pytest.mark.parametrize("when", ["with the first", "while the first is answered"])
def test_spec_next_request_before_END_REQUEST_is_served(start, when, server_kind):
    """A web server may send the next request on a kept connection as soon
    as it has the previous response's body (HAProxy does): it is served
    after the first, never dropped."""
    server = start()
    peer = RawPeer(server.address)
    first = request(1, env("/chunks?30"), flags=KEEP)
    second = request(3, env("/hello"), flags=KEEP)
    if when == "with the first":
        peer.send(first + second)
    else:
        peer.send(first)
        peer.wait_for_bytes()           # the response has begun
        peer.send(second)
    status, body, app_status, _, others = peer.response(1)
    # The asyncio server runs both at once: 3's records may come first.
    assert (status, len(body), app_status) == (200, 3000, 0)
    if server_kind == "wsgi":
        assert others == []
        status, body, _, _, _ = peer.response(3)
    else:
        peer.buf = b"".join(struct.pack("!BBHHBx", 1, t, i, len(c), 0) + c
                            for t, i, c in others) + peer.buf
        status, body, _, _, _ = peer.response(3)
    assert (status, body) == (200, b"Hello, world!")
    hello(peer, 5)
    peer.close()


def test_spec_5_4_abort_mid_stdin_ends_the_request_and_the_connection_serves_on(start):
    """FCGI_ABORT_REQUEST while the body streams in: the application's read
    fails, the request ends with END_REQUEST, and the kept connection
    carries the next request."""
    server = start()
    peer = RawPeer(server.address)
    peer.send(begin(1, flags=KEEP)
              + params_records(1, env("/upload", "POST", CONTENT_LENGTH="100000"))
              + rec(5, 1, b"x" * 5000))
    time.sleep(0.2)                 # the application is reading the body
    peer.send(rec(2, 1))
    status, body, app_status, protocol_status, _ = peer.response(1)
    assert (status, body, protocol_status) == (None, b"", 0)
    peer.send(rec(5, 1, b"late stdin of the aborted request"))
    hello(peer)
    peer.close()
    assert wait_until(lambda: "ABORT (-6)" in server.log(), 5), server.log()
    assert server.log().count("ABORT (-6)") == 1, server.log()


def test_spec_5_4_abort_before_the_params_on_a_kept_connection(start):
    server = start()
    peer = RawPeer(server.address)
    peer.send(begin(1, flags=KEEP) + rec(4, 1, b"\x01\x01ab") + rec(2, 1))
    assert peer.record() == (FCGI_END_REQUEST, 1, struct.pack("!LB3x", 1, 0))
    hello(peer)
    peer.close()


@pytest.mark.parametrize("split", [None, 2])
def test_spec_body_longer_than_content_length_is_cut_there(start, split):
    """PEP 3333: the application reads CONTENT_LENGTH bytes and no more; the
    rest is dropped, with one log line, and the connection serves on."""
    server = start()
    peer = RawPeer(server.address)
    peer.send(request(1, env("/upload", "POST", CONTENT_LENGTH="3"), b"abcdef", flags=KEEP,
                      split=split))
    status, body, app_status, _, _ = peer.response(1)
    assert (status, json.loads(body)["size"], json.loads(body)["sha256"]) == \
        (200, 3, hashlib.sha256(b"abc").hexdigest())
    hello(peer)
    peer.close()
    assert wait_until(lambda: "past CONTENT_LENGTH" in server.log(), 5), server.log()
    assert server.log().count("past CONTENT_LENGTH") == 1


def test_spec_5_1_without_keep_conn_the_connection_ends_after_the_response(start):
    """ "If this bit is zero, the application closes the connection after
    responding to this request": what the peer sends after it is not read
    (a GET_VALUES here gets no answer)."""
    server = start()
    peer = RawPeer(server.address)
    peer.send(request(1, env("/hello"), flags=0) + get_values("FCGI_MAX_CONNS"))
    status, body, _, _, _ = peer.response(1)
    assert (status, body) == (200, b"Hello, world!")
    assert peer.closed()
    peer.close()


def test_spec_4_2_unknown_record_type_of_an_active_request(start):
    server = start()
    peer = RawPeer(server.address)
    peer.send(begin(1, flags=KEEP) + rec(99, 1, b"?") + params_records(1, env("/hello"))
              + stdin_records(1, b""))
    assert peer.record() == (11, 0, bytes((99,)) + b"\0" * 7)       # FCGI_UNKNOWN_TYPE
    status, body, _, _, _ = peer.response(1)
    assert (status, body) == (200, b"Hello, world!")
    peer.close()


def test_spec_over_a_limit_before_the_params_is_answered_and_logged(start):
    """A per-request failure: 431 for the params over --max-param-size,
    one log line; the worker serves the next connection."""
    server = start("--max-param-size", "100")
    peer = RawPeer(server.address)
    peer.send(request(1, env("/hello", HTTP_X="y" * 101), flags=KEEP))
    status, _, _, protocol_status, _ = peer.response(1)
    assert (status, protocol_status) == (431, 0)
    peer.close()
    assert wait_until(lambda: "PLEN (-4)" in server.log(), 5)
    assert server.log().count("PLEN (-4)") == 1
    peer = RawPeer(server.address)
    hello(peer)
    peer.close()


# -- what a review of the connection layer found ------------------------------------

def test_spec_3_3_the_id_is_inactive_once_END_REQUEST_is_sent(start):
    """The web server may reuse the id as soon as it has END_REQUEST, and stop
    sending the rest of a body the application did not read: the new
    request is served at once (not PROTO, not a worker waiting for the old
    body)."""
    server = start()
    peer = RawPeer(server.address)
    peer.send(begin(1, flags=KEEP)
              + params_records(1, env("/hello", "POST", CONTENT_LENGTH="100000"))
              + rec(5, 1, b"x" * 1000))
    status, body, _, _, _ = peer.response(1)
    assert (status, body) == (200, b"Hello, world!")
    hello(peer)             # id 1 again, the old body never finished
    peer.close()
    assert "PROTO" not in server.log()


def test_spec_reading_the_body_after_the_answer_ends_at_once(start):
    """An application whose close() reads wsgi.input after its response:
    the read ends (the request is over), the worker serves on."""
    server = start()
    peer = RawPeer(server.address)
    peer.send(request(1, env("/read_in_close", "POST", CONTENT_LENGTH="100000"),
                      b"y" * 100000, flags=0))
    status, body, _, _, _ = peer.response(1)
    assert (status, body) == (200, b"answered")
    peer.close()
    peer = RawPeer(server.address, timeout=5)
    hello(peer)
    peer.close()


def test_spec_5_1_a_refused_request_without_keep_conn_ends_the_connection(start, server_kind):
    """CANT_MPX_CONN for a request without FCGI_KEEP_CONN: the connection
    closes once the first request is answered (spec 5.1), though that one
    asked to keep it."""
    if server_kind == "asgi":
        pytest.skip("the asyncio server multiplexes: nothing is refused")
    server = start()
    peer = RawPeer(server.address)
    peer.send(begin(1, flags=KEEP) + params_records(1, env("/upload", "POST", CONTENT_LENGTH="2")))
    peer.send(request(2, env("/hello"), flags=0))
    assert peer.record() == (FCGI_END_REQUEST, 2, struct.pack("!LB3x", 0, 1))
    peer.send(stdin_records(1, b"ab"))
    status, _, _, _, _ = peer.response(1)
    assert status == 200
    assert peer.closed()
    peer.close()


def test_spec_a_stray_record_on_a_kept_connection_does_not_hold_the_worker(start):
    """A kept connection that brings only records to ignore (a late record
    of an answered request) is read and left: the one worker serves the
    next connection at once."""
    server = start()
    kept = RawPeer(server.address)
    hello(kept)
    kept.send(rec(5, 1, b"late stdin") + rec(2, 1))
    time.sleep(0.2)
    other = RawPeer(server.address, timeout=5)
    hello(other)
    other.close()
    hello(kept, 3)          # and the kept one still serves
    kept.close()


def test_spec_6_4_data_records_belong_to_the_filter_role(start):
    """FCGI_DATA for a RESPONDER is a protocol error (it could otherwise
    pile up unread); a FILTER's data counts against --max-body."""
    server = start("--max-body", "1k")
    peer = RawPeer(server.address)
    peer.send(begin(1, flags=KEEP) + params_records(1, env("/hello")) + rec(8, 1, b"data")
              + stdin_records(1, b""))
    status, _, _, _, _ = peer.response(1)       # it was running: it answers
    assert status == 200 and peer.closed()
    peer.close()
    assert wait_until(lambda: "PROTO (-3)" in server.log(), 5)
    peer = RawPeer(server.address)
    peer.send(begin(1, role=3) + params_records(1, env("/filter_upper")) + stdin_records(1, b"")
              + rec(8, 1, b"d" * 1000) + rec(8, 1, b"d" * 1000))
    status, _, _, _, _ = peer.response(1)
    assert status == 413
    peer.close()
