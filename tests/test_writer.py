"""Writer behaviour on both cores: framing, padding, heads, send_file."""

import os
import socket
import struct
import tempfile

import pytest

from conftest import PURE_ONLY_REASON, COMPILED_IMPORT_ERROR, FASTFCGI_MODULE, fastfcgi


def test_compiled_core_loaded():
    """Fails when the extension should have been built and was not."""
    if PURE_ONLY_REASON:
        pytest.skip("pure run: %s" % PURE_ONLY_REASON)
    assert fastfcgi is not None, "compiled core did not import: %s" % COMPILED_IMPORT_ERROR
    assert type(fastfcgi.Parser).__name__ == "type"
    assert fastfcgi.Parser.__module__ == "fastfcgi"
    assert fastfcgi.Writer.__module__ == "fastfcgi"
    assert fastfcgi.__file__.endswith((".so", ".pyd")), fastfcgi.__file__
    # The servers of the compiled module really run on the compiled core:
    # fastfcgi_py's classes, with the compiled core as their default.
    import socket
    listener = socket.socket()
    try:
        server = fastfcgi.Server(fastfcgi.WSGIGateway(None), listener)
        assert (server.parser_class, server.writer_class, server.connection_class,
                server.request_class) == (fastfcgi.Parser, fastfcgi.Writer,
                                          fastfcgi.Connection, fastfcgi.Request)
        assert server.gateway.response_class is fastfcgi._Response
        assert fastfcgi.WSGIGateway.__mro__[1] is fastfcgi._py.WSGIGateway
        assert set(vars(fastfcgi.Server)) <= {"core", "__module__", "__doc__"}
        assert set(vars(fastfcgi.AsyncServer)) <= {"core", "__module__", "__doc__"}
        # The gateway's one typed twin is its __call__ (see fastfcgi.pyx).
        assert set(vars(fastfcgi.WSGIGateway)) <= {"core", "__module__", "__doc__",
                                                   "__call__"}
    finally:
        listener.close()


def test_import_fastfcgi_gives_the_whole_API_in_every_tree():
    """``import fastfcgi`` is the extension where it is built and
    fastfcgi.py (the pure module's names) where not; CORE says which, and
    the documented API is there either way."""
    import fastfcgi_py
    module = FASTFCGI_MODULE
    assert module.CORE == ("compiled" if fastfcgi is not None else "pure")
    assert module.__version__ == fastfcgi_py.__version__
    assert set(fastfcgi_py.__all__) <= set(vars(module))
    if module.CORE == "pure":
        assert module.__file__.endswith("fastfcgi.py"), module.__file__
        for name in fastfcgi_py.__all__:
            assert getattr(module, name) is getattr(fastfcgi_py, name), name
    for name in ("Client", "Request", "authorizer", "Server", "AsyncServer", "WSGIGateway"):
        assert callable(getattr(module, name)), name


def test_cores_share_the_constants(core):
    import fastfcgi_py
    assert (core.OK, core.EOF, core.IO, core.PROTO, core.PLEN, core.CLEN, core.ABORT,
            core.NOREQ, core.SEND) == (0, -1, -2, -3, -4, -5, -6, -7, -8)
    for name in fastfcgi_py.__all__:
        if name == "CORE":
            assert core.CORE == ("pure" if core is fastfcgi_py else "compiled")
        elif name not in ("Parser", "Writer", "Connection", "Request", "AsyncRequest",
                          "WorkerRow",  # its own
                          "asgi_scope",
                          "WSGIGateway", "ASGIGateway", "Server", "HTTPServer",
                          "AsyncServer"):  # the core as default
            assert getattr(core, name) is getattr(fastfcgi_py, name), name
        elif name.endswith(("Gateway", "Server")):
            assert getattr(core, name).__mro__[1 if core is not fastfcgi_py else 0] \
                is getattr(fastfcgi_py, name), name


def split_records(data):
    """Parse records back: [(type, id, content, padding)]; checks framing."""
    out = []
    i = 0
    while i < len(data):
        version, rtype, rid, clen, pad = struct.unpack_from("!BBHHBx", data, i)
        assert version == 1
        content = data[i + 8:i + 8 + clen]
        padding = data[i + 8 + clen:i + 8 + clen + pad]
        assert len(content) == clen and len(padding) == pad
        out.append((rtype, rid, content, padding))
        i += 8 + clen + pad
    return out


@pytest.mark.parametrize("size", [0, 1, 7, 8, 13, 65527, 65528, 65529, 65535, 65536, 200001])
def test_Writer_stdout_records_at_most_65535_padded_to_8(core, size):
    data = os.urandom(size)
    out = core.Writer().stdout(300, data)
    records = split_records(out)
    assert b"".join(r[2] for r in records) == data
    for rtype, rid, content, padding in records:
        assert (rtype, rid) == (6, 300)
        assert 0 < len(content) <= 65535
        assert (len(content) + len(padding)) % 8 == 0 and padding == b"\0" * len(padding)
    assert len(out) % 8 == 0
    err = split_records(core.Writer().stderr(2, data))
    assert [r[2] for r in err] == [r[2] for r in records]
    assert all(r[0] == 7 and r[1] == 2 for r in err)


def test_Writer_accepts_bytes_like_only(core):
    w = core.Writer()
    assert w.stdout(1, bytearray(b"ab")) == w.stdout(1, b"ab") == w.stdout(1, memoryview(b"ab"))
    for bad in ("text", 5, None, [1, 2]):
        with pytest.raises(TypeError):
            w.stdout(1, bad)
        with pytest.raises(TypeError):
            w.finish(1, bad)


def test_Writer_terminators_and_end_request(core):
    w = core.Writer()
    assert w.end_stdout(1) == b"\x01\x06\x00\x01\x00\x00\x00\x00"
    assert w.end_stderr(258) == b"\x01\x07\x01\x02\x00\x00\x00\x00"
    assert w.end_request(1) == b"\x01\x03\x00\x01\x00\x08\x00\x00" + b"\0" * 8
    assert w.end_request(1, 3, 2) == b"\x01\x03\x00\x01\x00\x08\x00\x00\x00\x00\x00\x03\x02\0\0\0"
    assert w.end_request(1, -1)[8:12] == b"\xff\xff\xff\xff"   # exit status mod 2**32
    assert w.end_request(1, 2 ** 32 + 5)[8:12] == b"\0\0\0\x05"
    with pytest.raises(ValueError):
        w.end_request(1, 0, 256)
    for bad_id in (-1, 65536):
        with pytest.raises(ValueError):
            w.stdout(bad_id, b"x")
        with pytest.raises(ValueError):
            w.end_request(bad_id)


def test_Writer_finish_is_one_buffer(core):
    w = core.Writer()
    out = w.finish(1, b"Hello, world!", app_status=7)
    assert out == w.stdout(1, b"Hello, world!") + w.end_stdout(1) + w.end_request(1, 7)
    assert w.finish(2) == w.end_stdout(2) + w.end_request(2)
    assert split_records(out)[0][3] == b"\0" * 3


def test_Writer_head_and_response(core):
    w = core.Writer()
    head = w.head("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                    ("X-Latin", "caf\xe9"), ("Set-Cookie", "a=1\tb")])
    assert head == (b"Status: 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"X-Latin: caf\xe9\r\nSet-Cookie: a=1\tb\r\n\r\n")
    assert w.head("204", []) == b"Status: 204\r\n\r\n"
    assert w.response(1, "200 OK", [("A", "b")], b"body") == w.finish(
        1, b"Status: 200 OK\r\nA: b\r\n\r\nbody")


@pytest.mark.parametrize("status,headers", [
    ("200 OK\r\nSet-Cookie: x", []),
    ("20", []), ("2000 OK", []), ("abc OK", []), ("\u0663\u0660\u0660 OK", []), ("", []),
    ("200 OK", [("X", "a\r\nInjected: 1")]),
    ("200 OK", [("X", "a\nb")]), ("200 OK", [("X", "a\rb")]), ("200 OK", [("X", "a\0b")]),
    ("200 OK", [("X", "\x7f")]), ("200 OK", [("X", "\u20ac")]),
    ("200 OK", [("Bad Name", "v")]), ("200 OK", [("Bad:Name", "v")]), ("200 OK", [("", "v")]),
    ("200 OK", [("N\xe9", "v")]), ("200 OK", [("X\r\nY", "v")]),
])
def test_Writer_head_rejects_response_splitting(core, status, headers):
    with pytest.raises(ValueError):
        core.Writer().head(status, headers)
    with pytest.raises(ValueError):
        core.Writer().response(1, status, headers, b"")


@pytest.mark.parametrize("status,headers", [
    (b"200 OK", []), (200, []), ("200 OK", [(b"X", "v")]), ("200 OK", [("X", b"v")]),
    ("200 OK", [("X", 1)]),
])
def test_Writer_head_wants_str(core, status, headers):
    with pytest.raises(TypeError):
        core.Writer().head(status, headers)


def test_Writer_management_records(core):
    w = core.Writer()
    assert w.get_values_result({"FCGI_MAX_CONNS": "10"}) == \
        b"\x01\x0a\x00\x00\x00\x12\x06\x00\x0e\x02FCGI_MAX_CONNS10" + b"\0" * 6
    assert w.unknown_type(99) == b"\x01\x0b\x00\x00\x00\x08\x00\x00\x63" + b"\0" * 7
    with pytest.raises(ValueError):
        w.unknown_type(256)
    with pytest.raises(ValueError):
        w.get_values_result({"N": "v" * 70000})


def test_send_file_sends_a_region_inside_stdout_records(core):
    data = os.urandom(200000)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        a, b = socket.socketpair()
        try:
            sent = core.send_file(a, 5, f.fileno(), 1000, 150000)
            assert sent == 150000
            a.close()
            received = b""
            while True:
                chunk = b.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
        finally:
            a.close()
            b.close()
    records = split_records(received)
    assert b"".join(r[2] for r in records) == data[1000:151000]
    assert all(r[0] == 6 and r[1] == 5 and len(r[2]) <= 65535 for r in records)


def test_send_file_zero_fills_a_file_shorter_than_promised(core):
    with tempfile.TemporaryFile() as f:
        f.write(b"short")
        f.flush()
        a, b = socket.socketpair()
        try:
            assert core.send_file(a, 1, f.fileno(), 0, 20) == 5
            a.shutdown(socket.SHUT_WR)
            records = split_records(b.recv(100))
        finally:
            a.close()
            b.close()
    assert records == [(6, 1, b"short" + b"\0" * 15, b"\0" * 4)]


def test_send_file_write_error_is_SEND(core):
    with tempfile.TemporaryFile() as f:
        f.write(b"x" * 1000)
        f.flush()
        a, b = socket.socketpair()
        b.close()
        try:
            assert core.send_file(a, 1, f.fileno()) == core.SEND
        finally:
            a.close()
