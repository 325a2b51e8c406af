"""Differential tests: both cores get the same bytes, split at the same
random points, and must give identical events, codes and output bytes.

Also checks a property of each core alone: events do not depend on where the
input was split.
"""

import io
import os
import platform
import socket
import struct
import tempfile
import threading
import time
import types

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fastfcgi_py
from conftest import (begin, end_after_stdin, fastfcgi, get_values, nv, params_records, request,
                      rec, run, stdin_records)

needs_both = pytest.mark.skipif(fastfcgi is None, reason="compiled core not built")

# Many examples locally; fewer in the CI matrix (one run per interpreter).
SETTINGS = settings(max_examples=100 if os.environ.get("HYPOTHESIS_PROFILE") == "ci" else 600,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

small_bytes = st.binary(max_size=40)
names = st.sampled_from(["CONTENT_LENGTH", "REQUEST_METHOD", "HTTP_HOST", "A", "",
                         "FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS", "X" * 130,
                         "SEND_FILE"])
values = st.one_of(st.sampled_from(["", "0", "3", "10", "5x", "GET", "\xe9", "1" * 20,
                                    "bytes"]),
                   st.text(alphabet=st.characters(max_codepoint=255), max_size=140))
request_ids = st.sampled_from([0, 1, 1, 1, 2, 3, 65535])


@st.composite
def a_record(draw):
    """One record: mostly meaningful ones, sometimes anything at all."""
    rid = draw(request_ids)
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return begin(rid, draw(st.sampled_from([1, 2, 3, 0, 9])), draw(st.sampled_from([0, 1])))
    if kind in (1, 2):
        env = draw(st.dictionaries(names, values, max_size=4))
        return params_records(rid, env, split=draw(st.sampled_from([None, 1, 5, 50])))
    if kind in (3, 4):
        return stdin_records(rid, draw(small_bytes), split=draw(st.sampled_from([None, 3, 16])))
    if kind == 5:
        return get_values(*draw(st.lists(names, max_size=3)))
    if kind == 6:
        return rec(2, rid)
    if kind == 7:
        return rec(8, rid, draw(small_bytes))
    return rec(draw(st.integers(0, 255)), rid, draw(small_bytes), pad=draw(st.integers(0, 12)),
               version=draw(st.sampled_from([1, 1, 1, 0, 2])))


@st.composite
def a_stream(draw):
    """Records, possibly mutated and truncated, and the points to split at."""
    data = bytearray(b"".join(draw(st.lists(a_record(), max_size=8))))
    for _ in range(draw(st.integers(0, 2))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if data and draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    chunks = [bytes(data[a:b]) for a, b in zip([0] + cuts, cuts + [len(data)])]
    return bytes(data), [c for c in chunks if c]    # b"" would mean EOF


parser_options = st.fixed_dictionaries({}, optional={
    "max_param_size": st.integers(0, 200),
    "max_params_size": st.integers(0, 400),
    "max_body": st.one_of(st.none(), st.integers(0, 60)),
    "max_conns": st.integers(1, 100),
    "max_reqs": st.integers(1, 3),
    "mpxs_conns": st.booleans(),
})


def outcome(module, chunks, options, hook):
    return run(module.Parser(**options), chunks, on_event=hook)


@needs_both
@SETTINGS
@given(stream=a_stream(), options=parser_options, answer=st.booleans())
def test_Parser_cores_agree_on_any_stream(stream, options, answer):
    data, chunks = stream
    hook = end_after_stdin if answer else None
    compiled = outcome(fastfcgi, chunks, options, hook)
    pure = outcome(fastfcgi_py, chunks, options, hook)
    assert compiled == pure
    # Splitting never changes the events.
    assert outcome(fastfcgi_py, [data], options, hook) == pure


@SETTINGS
@given(stream=a_stream(), options=parser_options)
def test_Parser_pure_events_do_not_depend_on_splits(stream, options):
    data, chunks = stream
    assert outcome(fastfcgi_py, chunks, options, end_after_stdin) == \
        outcome(fastfcgi_py, [data], options, end_after_stdin)


def result_or_error(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except (TypeError, ValueError) as exc:
        return type(exc)


header_text = st.text(alphabet=st.sampled_from(
    list("aZ09-_ :;/\t\r\n\0\x7f\xe9\xff") + ["\u20ac", "\u0663"]), max_size=12)


@needs_both
@SETTINGS
@given(rid=st.integers(-2, 65537), data=st.binary(max_size=70000),
       app_status=st.integers(-2 ** 33, 2 ** 33), status=header_text,
       headers=st.lists(st.tuples(header_text, header_text), max_size=3))
def test_Writer_cores_agree(rid, data, app_status, status, headers):
    c, p = fastfcgi.Writer(), fastfcgi_py.Writer()
    for method, args, kw in [("stdout", (rid, data), {}), ("stderr", (rid, data), {}),
                             ("end_stdout", (rid,), {}), ("end_request", (rid, app_status), {}),
                             ("finish", (rid, data), {"app_status": app_status}),
                             ("head", (status, headers), {}),
                             ("head", ("200 " + status, headers), {}),
                             ("response", (rid, status, headers, data[:100]), {})]:
        assert result_or_error(getattr(c, method), *args, **kw) == \
            result_or_error(getattr(p, method), *args, **kw), method


def serve_bytes(data):
    """A socket whose peer sends ``data`` in small pieces, then closes."""
    app, web = socket.socketpair()

    def send():
        try:
            for i in range(0, len(data), 7):
                web.sendall(data[i:i + 7])
        except OSError:
            # The reader may stop early (a request without KEEP_CONN ends
            # the connection) and close while pieces are still on the way.
            web.close()
            return
        # Half-close, then read the replies off before closing: whether a
        # reply meets a closed socket must not depend on timing.
        web.shutdown(socket.SHUT_WR)
        web.settimeout(10)
        try:
            while web.recv(65536):
                pass
        except OSError:
            pass
        web.close()
    thread = threading.Thread(target=send)
    thread.start()
    return app, thread


def read_all_events(module, data):
    app, thread = serve_bytes(data)
    conn = module.Connection(app, module.Parser(), module.Writer())
    events = []
    try:
        while True:
            event = conn.read_event()
            events.append(event)
            if type(event) is int:
                break
            end_after_stdin(conn, event)
    finally:
        app.close()
        thread.join()
    return events


@needs_both
@pytest.mark.parametrize("data", [
    begin(1, flags=1) + params_records(1, {"A": "b"}) + stdin_records(1, b"x" * 300, split=100)
    + get_values("FCGI_MAX_CONNS") + begin(1) + params_records(1, {}) + rec(5, 1, b"")
    + rec(5, 2, b""),
    begin(1) + rec(4, 1, nv("K", "v")) + b"\x01\x04\x00",
    b"",
])
def test_Connection_read_event_cores_agree_over_a_socket(data):
    assert read_all_events(fastfcgi, data) == read_all_events(fastfcgi_py, data)


def test_struct_layout_of_test_helpers():
    # The helpers build records independently of the cores; keep them honest.
    assert begin(258, 3, 1) == struct.pack("!BBHHBx", 1, 1, 258, 8, 0) + b"\0\x03\x01" + b"\0" * 5




@st.composite
def a_request_stream(draw):
    """Whole requests as web servers send them (GETs, bodies that match
    CONTENT_LENGTH or not, aborts), between records of any kind; sometimes
    cut short."""
    data = b""
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 3)) == 0:
            data += draw(a_record())
            continue
        rid = draw(st.sampled_from([1, 1, 2]))
        env = {"REQUEST_METHOD": "GET"}
        length = draw(st.sampled_from([None, "0", "3", "5"]))
        if length is not None:
            env["CONTENT_LENGTH"] = length
        data += begin(rid, draw(st.sampled_from([1, 1, 2, 3])), draw(st.sampled_from([0, 1])))
        data += params_records(rid, env)
        if draw(st.booleans()):
            data += rec(2, rid)                 # ABORT_REQUEST
        data += stdin_records(rid, draw(st.sampled_from([b"", b"abc", b"abcde"])))
    if draw(st.integers(0, 3)) == 0:
        data = data[:draw(st.integers(0, len(data)))]
    return data


def taking_stdin_end(taken):
    """An on_event hook: after each request event, try take_stdin_end on
    its id and on the next id, as Request does, and note in ``taken`` what
    it said; then answer as end_after_stdin."""
    def hook(parser, event):
        if type(event) is tuple:
            said = [parser.take_stdin_end(event[1]), parser.take_stdin_end(event[1] + 1)]
            taken.append((event[:2], said, parser.buffered))
        end_after_stdin(parser, event)
    return hook


@needs_both
@SETTINGS
@given(data=a_request_stream(), options=parser_options, split=st.booleans())
def test_Parser_take_stdin_end_cores_agree(data, options, split):
    """take_stdin_end after every event: both cores take the same records
    and go on with the same events."""
    chunks = [data[i:i + 7] for i in range(0, len(data), 7)] if split else [data]
    results = []
    for module in (fastfcgi, fastfcgi_py):
        taken = []
        results.append((run(module.Parser(**options), [c for c in chunks if c],
                            on_event=taking_stdin_end(taken)), taken))
    assert results[0] == results[1]


# -- the WSGI gateway: both cores' Servers answer the same bytes alike --------
#
# The compiled core runs a request's hot path (the Request, the environ,
# start_response, a list body's one send) in C and falls back to the pure
# code for the rest; each case here must give the web server the same bytes
# and the application the same environ on both.

class _AppFailed(Exception):
    pass


def _wsgi_app(behaviour, seen):
    status, headers, body_kind, chunks = behaviour

    def app(environ, start_response):
        seen.append(sorted((k, v) for k, v in environ.items()
                           if isinstance(v, (str, bool, tuple))))
        if body_kind == "read":
            data = environ["wsgi.input"].read()
            chunks_ = [data] + list(chunks)
        else:
            chunks_ = list(chunks)
        if body_kind == "none":
            return chunks_              # before start_response
        if body_kind == "raise-first":
            raise _AppFailed("before the head")
        write = start_response(status, headers)
        if body_kind == "again":
            start_response(status, headers)
        if body_kind == "write":
            for chunk in chunks_:
                write(chunk)
            return []
        if body_kind == "stderr":
            environ["wsgi.errors"].write("warning\n")
        if body_kind == "gen" or body_kind == "gen-raise":
            def gen():
                for chunk in chunks_:
                    yield chunk
                if body_kind == "gen-raise":
                    raise _AppFailed("after the head")
            return gen()
        return chunks_
    return app


behaviours = st.tuples(
    st.sampled_from(["200 OK", "404 Not Found", "204", "999 X", "2000 Bad", "200 OK\n"]),
    st.lists(st.tuples(st.sampled_from(["Content-Type", "X-A", "Bad Name", "X-\xe9"]),
                       st.sampled_from(["text/plain", "", "v\r\nw", "\xe9", "a" * 70])),
             max_size=3),
    st.sampled_from(["list", "list", "gen", "write", "stderr", "read", "none",
                     "raise-first", "gen-raise", "again"]),
    st.lists(st.one_of(st.binary(max_size=20), st.sampled_from([b"", "text", bytearray(b"ba")])),
             max_size=3))

request_params = st.fixed_dictionaries({"REQUEST_METHOD": st.sampled_from(["GET", "HEAD", "POST"])},
                                       optional={
    "HTTPS": st.sampled_from(["on", "ON", "1", "off"]),
    "REQUEST_SCHEME": st.sampled_from(["https", "http"]),
    "HTTP_CONTENT_TYPE": st.sampled_from(["text/plain"]),
    "HTTP_CONTENT_LENGTH": st.sampled_from(["3", "-1"]),
    "CONTENT_LENGTH": st.sampled_from(["3", "-1", ""]),
    "PATH_INFO": st.sampled_from(["/a", ""]),
})


def serve_wsgi(module, app, data):
    """What ``module``'s Server sends back for ``data`` on one connection."""
    sock, thread = serve_bytes_collecting(data)
    lsock = socket.socket(socket.AF_UNIX)       # the Server wants a listener
    try:
        server = module.Server(module.WSGIGateway(app), lsock)
        conn = module.Connection(sock, None, None, "")
        server.new_connection(conn)
        server.serve_connection(conn)
    finally:
        sock.close()
        lsock.close()
        thread.join(10)
    return thread.received


def serve_bytes_collecting(data, half_close=False):
    """A socket whose peer sends ``data`` and keeps what it reads (it stays
    open, as a web server waiting for the answer does; with ``half_close``
    it then shuts its sending side, as one that has no more requests)."""
    app, web = socket.socketpair()
    return app, collecting_peer(web, data, half_close)


def collecting_peer(web, data, half_close=False):
    """The web server's side of a connection, in a thread: sends ``data``,
    keeps what it reads in ``.received`` until the end, then closes.

    With ``half_close`` it shuts its sending side once the server (this
    process's main thread) sits in a blocking read, that is once it has
    done all it can with ``data``.  Sooner, the end of the input could meet
    a request still running: the server rightly takes that for a web server
    gone away (spec 3.5 leaves the connection to the web server), and what
    it answers would depend on timing, not on the bytes."""
    server_thread = os.getpid()     # the main thread's id is the process's

    class Peer(threading.Thread):
        received = b""

        def run(self):
            try:
                web.sendall(data)       # the server may close before all of it
                waiting = half_close
                give_up = time.monotonic() + 10
                web.settimeout(0.002 if waiting else 20)
                while True:
                    try:
                        got = web.recv(65536)
                    except socket.timeout:
                        if waits_for_input(server_thread) or time.monotonic() > give_up:
                            web.shutdown(socket.SHUT_WR)
                            web.settimeout(20)
                        continue
                    if not got:
                        break
                    self.received += got
            except OSError:
                pass
            web.close()
    thread = Peer()
    thread.start()
    return thread


# The system calls a thread blocked reading a socket sits in, by machine.
_READ_CALLS = {"x86_64": {0: "read", 45: "recvfrom", 47: "recvmsg"},
               "aarch64": {63: "read", 207: "recvfrom", 212: "recvmsg"}}


def waits_for_input(tid):
    """True while thread ``tid`` of this process is blocked reading a socket
    (Linux /proc; where that cannot be told, True: do not wait).  Seen
    twice, so that a read just returning is not taken for one waiting."""
    calls = _READ_CALLS.get(platform.machine())
    if calls is None:
        return True
    for _ in range(2):
        try:
            with open("/proc/self/task/%d/syscall" % tid) as f:
                fields = f.read().split()
        except OSError:
            return True
        if len(fields) < 5 or not fields[0].isdigit() or int(fields[0]) not in calls:
            return False        # "running", or another call
        if calls[int(fields[0])] == "recvfrom" and int(fields[4], 16) & socket.MSG_DONTWAIT:
            return False        # a look without waiting
        try:
            if not os.readlink("/proc/self/fd/%d" % int(fields[1], 16)).startswith("socket:"):
                return False
        except OSError:
            return False
        time.sleep(0.001)
    return True


@needs_both
@SETTINGS
@given(behaviour=behaviours, env=request_params, body=st.sampled_from([b"", b"abc"]),
       flags=st.sampled_from([0, 1]))
def test_WSGIGateway_cores_agree(behaviour, env, body, flags):
    data = request(1, dict(env, SCRIPT_NAME=""), body, flags=flags)
    out = {}
    for module in (fastfcgi, fastfcgi_py):
        seen = []
        out[module.__name__] = (serve_wsgi(module, _wsgi_app(behaviour, seen), data), seen)
    assert out["fastfcgi"] == out["fastfcgi_py"]
    assert out["fastfcgi"][0]       # something was answered


# -- the connection layer: whole record streams through both cores' servers --
#
# Any interleaving of records (several ids, aborts, management records,
# broken limits, garbage) sent on one connection, served to its end by each
# core's Server: the web server must get the same bytes, and the log the
# same lines.

def _echo_app(environ, start_response):
    """Answers what it was given: the params, stdin, and the FILTER data;
    with SEND_FILE, through wsgi.file_wrapper (a real file, sent with
    sendfile(2), or with SEND_FILE=bytes an in-memory one, read in blocks)."""
    body = environ["wsgi.input"].read()
    if environ["fastcgi.role"] == "FILTER":
        body += b"|" + environ["fastcgi.data"].read()
    params = sorted((k, v) for k, v in environ.items() if isinstance(v, str))
    out = repr(params).encode("utf-8", "backslashreplace") + b"|" + body
    if "SEND_FILE" in environ:
        start_response("200 OK", [("Content-Type", "text/x-python")])
        with open(__file__, "rb") as f:
            source = f.read(5000)
        if environ["SEND_FILE"] == "bytes":
            return environ["wsgi.file_wrapper"](io.BytesIO(out + source), 700)
        f = open(__file__, "rb")
        f.seek(1000)                # sendfile from where the file stands
        return environ["wsgi.file_wrapper"](f, 700)
    start_response("200 OK", [("Content-Length", str(len(out)))])
    return [out]


def serve_connection_to_its_end(module, data, limits, accepted=False, tmp_dir=None):
    """Every byte ``module``'s Server answers to ``data`` (then the web
    server's half-close) on one connection, and the log lines.  With
    ``accepted`` the connection comes from ``Connection.accept`` on a unix
    listener, as in a worker (the compiled core's then works on the bare
    descriptor); otherwise it wraps one end of a socketpair."""
    import logging
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    log = logging.getLogger("fastfcgi")
    log.addHandler(handler)
    lsock = socket.socket(socket.AF_UNIX)       # the Server wants a listener
    app = None
    try:
        if accepted:
            path = tempfile.mktemp(prefix="diff-", suffix=".sock", dir=tmp_dir)
            lsock.bind(path)
            lsock.listen(1)
            web = socket.socket(socket.AF_UNIX)
            web.connect(path)
            os.unlink(path)
            thread = collecting_peer(web, data, half_close=True)
            conn = module.Connection.accept(lsock)
        else:
            app, thread = serve_bytes_collecting(data, half_close=True)
            conn = module.Connection(app, None, None, "")
        server = module.Server(module.WSGIGateway(_echo_app), lsock, **limits)
        server.new_connection(conn)
        while server.serve_connection(conn):
            pass
        conn.close()
    finally:
        log.removeHandler(handler)
        if app is not None:
            app.close()
        lsock.close()
        thread.join(30)
    return thread.received, [line.split("\n")[0] for line in lines]


server_limits = st.fixed_dictionaries({}, optional={
    "max_param_size": st.integers(0, 200),
    "max_params_size": st.integers(0, 400),
    "max_body": st.one_of(st.none(), st.integers(0, 60)),
})


@st.composite
def interleaved_requests(draw):
    """Requests on one connection, their records interleaved: mostly well
    formed (so that many are served), with aborts, other ids, management
    records and now and then a broken record."""
    streams = []
    for _ in range(draw(st.integers(1, 4))):
        rid = draw(st.sampled_from([1, 1, 2, 3]))
        env = draw(st.dictionaries(names, values, max_size=3))
        body = draw(small_bytes)
        flags = draw(st.sampled_from([1, 1, 0]))
        role = draw(st.sampled_from([1, 1, 1, 2, 3, 7]))
        records = [begin(rid, role, flags), params_records(rid, env, split=draw(
            st.sampled_from([None, 3]))), stdin_records(rid, body, split=draw(
                st.sampled_from([None, 5])))]
        if role == 3:
            records.append(rec(8, rid, body[:3]) + rec(8, rid, b""))
        if draw(st.integers(0, 5)) == 0:
            records.insert(draw(st.integers(1, len(records))), rec(2, rid))   # ABORT_REQUEST
        streams.append(records)
    merged = []
    while any(streams):
        pick = draw(st.sampled_from([s for s in streams if s]))
        merged.append(pick.pop(0))
        if draw(st.integers(0, 7)) == 0:
            merged.append(draw(a_record()))         # anything at all
    return b"".join(merged)


@needs_both
@SETTINGS
@given(data=interleaved_requests(), limits=server_limits, accepted=st.booleans())
def test_Server_cores_agree_on_interleaved_record_streams(data, limits, accepted):
    compiled = serve_connection_to_its_end(fastfcgi, data, limits, accepted)
    pure = serve_connection_to_its_end(fastfcgi_py, data, limits, accepted)
    assert compiled == pure


# The cases the random streams reach only now and then, each on its own:
# both cores, on an accepted and on a wrapped connection, must send the same
# bytes and log the same lines, and what they send is what the case is about.

PLAIN = {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/p"}
NAMED_CASES = {
    "a second request on a kept connection": (
        request(1, PLAIN, b"first", flags=1) + request(1, PLAIN, b"second", flags=1), {},
        [b"|first", b"|second"], None),
    "AUTHORIZER": (
        request(1, {"REMOTE_USER": "u"}, role=2), {}, [b"'AUTHORIZER'"], None),
    "FILTER with its data stream": (
        begin(1, role=3) + params_records(1, dict(PLAIN, FCGI_DATA_LENGTH="4"))
        + stdin_records(1, b"in") + rec(8, 1, b"data") + rec(8, 1, b""), {},
        [b"'FILTER'", b"|in|data"], None),
    "FileWrapper of a real file (sendfile)": (
        request(1, dict(PLAIN, SEND_FILE="file")), {}, [b"test_differential"], None),
    "FileWrapper of a BytesIO": (
        request(1, dict(PLAIN, SEND_FILE="bytes"), b"abc"), {}, [b"|abc", b"import"], None),
    "413: a body over max_body": (
        request(1, dict(PLAIN, CONTENT_LENGTH="100"), b"x" * 100, flags=1), {"max_body": 10},
        [b"Status: 413"], "413"),
    "431: one param over max_param_size": (
        request(1, dict(PLAIN, HTTP_X_BIG="y" * 300), flags=1), {"max_param_size": 100},
        [b"Status: 431"], "431"),
    "431: the params over max_params_size": (
        request(1, dict(PLAIN, HTTP_A="a" * 40, HTTP_B="b" * 40), flags=1),
        {"max_params_size": 80}, [b"Status: 431"], "431"),
}


@needs_both
@pytest.mark.parametrize("accepted", [False, True], ids=["wrapped", "accepted"])
@pytest.mark.parametrize("case", sorted(NAMED_CASES))
def test_Server_cores_agree_case_by_case(case, accepted, tmp_path):
    data, limits, expected, logged = NAMED_CASES[case]
    compiled = serve_connection_to_its_end(fastfcgi, data, limits, accepted, str(tmp_path))
    pure = serve_connection_to_its_end(fastfcgi_py, data, limits, accepted, str(tmp_path))
    assert compiled == pure
    sent, lines = pure
    for part in expected:
        assert part in sent, (part, sent[:300])
    if logged is not None:
        assert any(logged in line for line in lines), lines


# -- the scoreboard row: the compiled twin stores what the pure one stores ---------

row_calls = st.lists(st.one_of(
    st.tuples(st.just("busy"), st.sampled_from([0.0, -1.0, 12.5])),
    st.tuples(st.just("done"), st.one_of(st.none(), st.sampled_from(
        ["200 OK", "404 Not Found", "999 X", "0 x", "503"]), st.integers(100, 999)),
        st.floats(0, 20, allow_nan=False)),
    st.tuples(st.just("finished"), st.sampled_from([None, "302 Found", 500])),
    st.tuples(st.just("connection")), st.tuples(st.just("rejected")),
    st.tuples(st.just("queued"), st.floats(0, 1e6, allow_nan=False)),
    st.tuples(st.just("queue_dropped")),
    st.tuples(st.just("cost"), st.one_of(st.just(-1.0), st.floats(0, 1e3, allow_nan=False)),
              st.integers(0, 2 ** 64 - 1)),
    st.tuples(st.just("recycling"), st.sampled_from([0, 1])),
    st.tuples(st.just("began"), st.builds(
        lambda params, start: dict(params, **start),
        st.dictionaries(
            st.sampled_from(["REQUEST_METHOD", "REQUEST_URI", "PATH_INFO", "REMOTE_ADDR"]),
            st.one_of(st.text(max_size=300), st.sampled_from(["\ud800/x", "\xe9" * 200,
                                                              "a" * 300, ""]))),
        # Starts in the future (waits of 0 s) or no times: no clock in the comparison.
        st.dictionaries(st.just("HTTP_X_REQUEST_START"), st.sampled_from(
            ["t=4000000000.5", "4000000000500", "t=", "t=abc", "nan", "t=inf", "\ud800"]))),
        st.booleans(), st.booleans())), max_size=30)


@needs_both
@SETTINGS
@given(calls=row_calls)
def test_WorkerRow_cores_agree(calls):
    board = fastfcgi_py.Scoreboard(2)
    rows = [fastfcgi.WorkerRow(board, 0), fastfcgi_py.WorkerRow(board, 1)]
    results = []
    for row in rows:
        results.append([])
        for call in calls:
            name, args = call[0], list(call[1:])
            if name == "began":
                args[0] = types.SimpleNamespace(params=args[0])
            if name == "finished":
                row.busy(0.0)       # no duration from the clock: it differs between rows
            results[-1].append(getattr(row, name)(*args))
    assert results[0] == results[1]
    size = 8 * fastfcgi_py._ROW
    compiled, pure = (bytes(board.memory[board._base(i) * 8:board._base(i) * 8 + size])
                      for i in (0, 1))
    assert compiled == pure


# -- the ASGI scope ----------------------------------------------------------------------
#
# fastfcgi.asgi_scope is the typed twin of fastfcgi_py's: any params (the
# latin-1 str the parser makes, and anything else a Request may carry) give
# the same scope, or the same exception.

scope_keys = st.sampled_from([
    "SCRIPT_NAME", "PATH_INFO", "REQUEST_URI", "QUERY_STRING", "HTTPS", "REQUEST_SCHEME",
    "SERVER_PROTOCOL", "REQUEST_METHOD", "CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_CONTENT_TYPE",
    "HTTP_CONTENT_LENGTH", "REMOTE_ADDR", "REMOTE_PORT", "SERVER_ADDR", "SERVER_NAME",
    "SERVER_PORT", "HTTP_HOST", "HTTP_X_A_B", "HTTP_", "HTTP", "HTTPX", "http_host",
    "HTTP_\xe9", "HTTP_\u0100", "HTTP_CONTENT_TYPEX"])
scope_values = st.one_of(
    st.sampled_from(["", "-1", "1", "on", "ON", "https", "HTTP/2.0", "HTTP/1.0", "HTTP/",
                     "/a?b", "?", "/caf\xc3\xa9", "%C3%A9", "80", "x", "\xff\xfe",
                     # ports as int() reads them, and does not
                     "0080", "8_0", " 80", "1234567890", "\u0661\u0662", "-80"]),
    st.text(alphabet=st.characters(max_codepoint=255), max_size=30),
    st.text(max_size=5))
scope_params = st.dictionaries(st.one_of(scope_keys, st.text(max_size=8)), scope_values,
                               max_size=12)


def _scope_or_error(module, request, state):
    try:
        return module.asgi_scope(request, state)
    except Exception as exc:        # noqa: BLE001 - the same error from both
        return type(exc), str(exc)


@needs_both
@SETTINGS
@given(params=scope_params, role=st.sampled_from([1, 2, 3, 7]),
       state=st.sampled_from([None, {}, {"a": 1}]))
def test_asgi_scope_cores_agree(params, role, state):
    request = types.SimpleNamespace(params=params, role=role)
    compiled = _scope_or_error(fastfcgi, request, state)
    assert compiled == _scope_or_error(fastfcgi_py, request, state)
    if isinstance(compiled, dict):
        # Header order follows the params'; bytes are bytes.
        assert all(type(n) is bytes and type(v) is bytes for n, v in compiled["headers"])
    # The compiled core reuses a header's pair while its value repeats:
    # the same names with new values (and equal ones, as new objects) again.
    # (Values past 1 KB are not kept.)
    for changed in ({k: v + "x" for k, v in params.items() if isinstance(v, str)},
                    {k: "".join(list(v)) for k, v in params.items() if isinstance(v, str)},
                    {k: v * 100 for k, v in params.items() if isinstance(v, str)},
                    params):
        request = types.SimpleNamespace(params=changed, role=role)
        assert _scope_or_error(fastfcgi, request, state) == \
            _scope_or_error(fastfcgi_py, request, state)


# The compiled Parser keeps the last request's params as a template: a
# block with the template's names, pair for pair, is a copy of it with the
# changed values set.  Series of blocks that share names, as a web
# server's do, and their variants must decode as the pure core decodes
# them, in the same order, whatever the requests did to the dicts they
# were given.

block_names = st.sampled_from(["REQUEST_METHOD", "HTTP_HOST", "HTTP_X", "A", "", "\xe9",
                               "N" * 65, "N" * 130, "HTTP_COOKIE"])
block_values = st.sampled_from(["", "GET", "POST", "1", "\xe9t\xe9", "v" * 64, "v" * 65,
                                "v" * 130])


@st.composite
def block_series(draw):
    """(name-value block, max_param_size): a shape, then that shape again
    and its variants (other values, a name changed, a pair more or fewer,
    a name twice, bytes after the pairs), sometimes another shape."""
    shapes = [draw(st.lists(st.tuples(block_names, block_values), max_size=6))
              for _ in range(draw(st.integers(1, 2)))]
    # Enough of the first shape, sometimes, that it becomes the template
    # (after 16 blocks of other names, TEMPLATE_AFTER_MISSES).
    blocks = [b"".join(nv(name, value) for name, value in shapes[0])] * draw(st.sampled_from(
        [0, 1, 17]))
    for _ in range(draw(st.integers(1, 8))):
        pairs = list(draw(st.sampled_from(shapes)))
        change = draw(st.sampled_from(["same", "same", "values", "name", "more", "fewer",
                                       "twice", "tail"]))
        at = draw(st.integers(0, len(pairs)))
        if change == "values" and pairs:
            pairs = [(name, draw(block_values)) for name, _ in pairs]
        elif change == "name" and at < len(pairs):
            pairs[at] = (draw(block_names), pairs[at][1])
        elif change == "more":
            pairs.insert(at, (draw(block_names), draw(block_values)))
        elif change == "fewer" and at < len(pairs):
            del pairs[at]
        elif change == "twice" and at < len(pairs):
            pairs.insert(at, (pairs[at][0], draw(block_values)))
        body = b"".join(nv(name, value) for name, value in pairs)
        if change == "tail":
            body += draw(st.binary(min_size=1, max_size=6))
        blocks.append(body)
    return [(body, draw(st.sampled_from([1000, 1000, 0, 1, 64, 130]))) for body in blocks]


def decoded_blocks(module, blocks):
    """What a parser gives each block, as a request on a new connection:
    its events, the params as ordered items; each dict is changed after.
    The compiled core starts without a template."""
    if module is fastfcgi:
        fastfcgi._forget_params_template()
    out = []
    for body, max_param_size in blocks:
        parser = module.Parser(max_param_size=max_param_size)
        data = begin(1, 1, 0) + rec(4, 1, body) + rec(4, 1, b"") + rec(5, 1, b"")
        events, _ = run(parser, [data], eof=False)
        shown = []
        for event in events:
            if type(event) is tuple and event and type(event[-1]) is dict:
                params = event[-1]
                shown.append(event[:-1] + (list(params.items()),))
                # What an application may do to its dict (the environ is a copy).
                params["REQUEST_METHOD"] = "CHANGED"
                params.pop("HTTP_HOST", None)
                params["NEW"] = "x"
            else:
                shown.append(event)
        out.append(shown)
    return out


@needs_both
@SETTINGS
@given(blocks=block_series())
def test_Parser_cores_agree_on_blocks_that_repeat_their_names(blocks):
    assert decoded_blocks(fastfcgi, blocks) == decoded_blocks(fastfcgi_py, blocks)


# fastfcgi._asgi_head is the typed twin of fastfcgi_py's: any headers an
# application may send (bytes pairs, lists, and the wrong types or
# characters) give the same head, or the same exception.

head_names = st.one_of(st.sampled_from([b"content-type", b"x-a", b"", b"bad name", b"\xe9",
                                        b"a:b", "str-name"]),
                       st.binary(max_size=6))
head_values = st.one_of(st.sampled_from([b"", b"text/plain", b"a\tb", b"\xe9\xff", b"a\r\nb",
                                         b"\x7f", b"\x00", "str"]),
                        st.binary(max_size=8))
head_pairs = st.one_of(st.tuples(head_names, head_values),
                       st.lists(head_values, min_size=1, max_size=3),
                       st.just(b"ab"), st.just(None))


@needs_both
@SETTINGS
@given(status=st.sampled_from(["200 OK", "404 Not Found", "299", "2000", "20x", "200 \xe9",
                               "200 a\r\n", "200 \u0100", b"200"]),
       headers=st.lists(head_pairs, max_size=5), as_tuple=st.booleans(),
       writer=st.sampled_from(["compiled", "pure"]))
def test_asgi_head_cores_agree(status, headers, as_tuple, writer):
    headers = tuple(headers) if as_tuple else headers
    writer = fastfcgi.Writer() if writer == "compiled" else fastfcgi_py.Writer()
    out = []
    # The pure one twice: the second time from the lines it keeps.
    for module in (fastfcgi, fastfcgi_py, fastfcgi_py):
        try:
            out.append(module._asgi_head(writer, status, headers))
        except Exception as exc:        # noqa: BLE001 - the same error from both
            out.append((type(exc), str(exc)))
    assert out[0] == out[1] == out[2]
