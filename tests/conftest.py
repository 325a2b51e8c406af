"""Shared fixtures: the two cores, and helpers to build and feed records.

Every behaviour test takes the ``core`` fixture, so it runs against the
compiled module (id "c") and the pure one (id "py").  When the compiled core
was expected but did not import, the "c" tests skip and
``test_compiled_core_loaded`` fails, so a broken build cannot pass quietly.
"""

import contextlib
import os
import platform
import struct
import sys

import pytest
from hypothesis import settings

# The matrix runs every interpreter; fewer examples there keep CI short.
settings.register_profile("ci", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import fastfcgi_py  # noqa: E402

import fastfcgi  # noqa: E402  (the extension, or fastfcgi.py standing in for it)

# ``import fastfcgi`` works in every tree: where the extension is not built,
# fastfcgi.py gives the pure module's API under that name.  The "c" tests
# want the compiled core.
FASTFCGI_MODULE = fastfcgi
if fastfcgi.CORE == "compiled":
    COMPILED_IMPORT_ERROR = None
else:  # reported by test_compiled_core_loaded
    COMPILED_IMPORT_ERROR = "the extension is not built: fastfcgi is %s" % fastfcgi.__file__
    fastfcgi = None

# Where no compiled core is expected: asked for a pure run, or an interpreter
# the extension does not support (PyPy, CPython < 3.8).
PURE_ONLY_REASON = (
    "FASTFCGI_NO_EXT=1" if os.environ.get("FASTFCGI_NO_EXT") == "1" else
    "FASTFCGI_PURE=1" if os.environ.get("FASTFCGI_PURE") == "1" else
    "PyPy" if platform.python_implementation() == "PyPy" else
    "Python < 3.8" if sys.version_info < (3, 8) else
    None)

CORES = [fastfcgi, fastfcgi_py]


@pytest.fixture(params=CORES, ids=["c", "py"])
def core(request):
    """The core module under test: compiled ``fastfcgi`` or ``fastfcgi_py``."""
    if request.param is None:
        pytest.skip("compiled core not built (%s)"
                    % (PURE_ONLY_REASON or COMPILED_IMPORT_ERROR))
    return request.param


# -- building records (independently of the cores) ---------------------------

def rec(rtype, request_id, content=b"", pad=None, version=1):
    """One record; padding to a multiple of 8 unless ``pad`` is given."""
    if pad is None:
        pad = -len(content) & 7
    return struct.pack("!BBHHBx", version, rtype, request_id, len(content),
                       pad) + content + b"\xAA" * pad  # non-zero padding: it must be skipped, not read


def nv(name, value):
    """One name-value pair (spec 3.4) from bytes or latin-1 str."""
    if isinstance(name, str):
        name = name.encode("latin-1")
    if isinstance(value, str):
        value = value.encode("latin-1")
    out = b""
    for n in (len(name), len(value)):
        out += bytes((n,)) if n < 128 else struct.pack("!L", n | 0x80000000)
    return out + name + value


def pairs(mapping):
    return b"".join(nv(k, v) for k, v in mapping.items())


def begin(request_id=1, role=1, flags=0):
    return rec(1, request_id, struct.pack("!HB5x", role, flags))


def params_records(request_id, mapping, split=None):
    """PARAMS records for ``mapping`` (cut every ``split`` bytes), then the
    empty PARAMS record."""
    body = pairs(mapping)
    out = b""
    if body:
        step = split or 65535
        for i in range(0, len(body), step):
            out += rec(4, request_id, body[i:i + step])
    return out + rec(4, request_id, b"")


def stdin_records(request_id, body, split=None):
    out = b""
    step = split or 65535
    for i in range(0, len(body), step):
        out += rec(5, request_id, body[i:i + step])
    return out + rec(5, request_id, b"")


def request(request_id=1, env=None, body=b"", role=1, flags=0, split=None):
    """A whole request as a web server sends it."""
    env = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/"} if env is None else env
    return (begin(request_id, role, flags) + params_records(request_id, env, split)
            + stdin_records(request_id, body, split))


def end_reply(request_id, protocol_status, app_status=0):
    """The END_REQUEST record an application sends."""
    return rec(3, request_id, struct.pack("!LB3x", app_status, protocol_status))


def get_values(*names):
    return rec(9, 0, b"".join(nv(n, "") for n in names))


# -- feeding a parser --------------------------------------------------------

def drain(parser, events, on_event=None):
    """Collect events until the parser needs data, calling ``on_event(parser,
    event)`` after each one as a server would; True once a code ends it."""
    while True:
        event = parser.next_event()
        if event is None:
            return False
        events.append(event)
        if type(event) is int:
            return True
        if on_event is not None:
            on_event(parser, event)


def run(parser, chunks, eof=True, on_event=None):
    """Feed ``chunks`` (then EOF), collecting events and replies.

    ``on_event(parser, event)`` may act on events (e.g. end_request).
    Returns (events, replies): the final code, if any, is the last event.
    """
    events = []
    replies = b""
    for chunk in list(chunks) + ([b""] if eof else []):
        parser.feed(chunk)
        done = drain(parser, events, on_event)
        replies += parser.data_to_send()
        if done:
            break
    return events, replies


def end_after_stdin(parser, event):
    """on_event hook: answer each request once its stdin ended or its input
    failed (the ABORT_REQUEST event: ABORT, PLEN or CLEN)."""
    if type(event) is tuple and (event[0] == 2 or (event[0] == 5 and event[2] == b"")):
        parser.end_request(event[1])


TRAILER = get_values("FCGI_MAX_CONNS")


def ways(data):
    """The three ways every reader test feeds its input (h11's tr()):
    whole, one byte at a time, and with trailing data (a GET_VALUES record,
    which must not change what came before)."""
    return [("whole", [data], False),
            ("bytewise", [data[i:i + 1] for i in range(len(data))], False),
            ("trailing", [data + TRAILER], True)]


def keeps_connection(data):
    """Whether every BEGIN_REQUEST in ``data`` asks to keep the connection:
    only then does the parser read what follows the requests (spec 5.1: a
    request without FCGI_KEEP_CONN ends the connection once answered)."""
    i = 0
    while i + 8 <= len(data):
        _, rtype, request_id, clen, pad = struct.unpack_from("!BBHHBx", data, i)
        if rtype == 1 and request_id and i + 11 <= len(data) and not data[i + 10] & 1:
            return False
        i += 8 + clen + pad
    return True


def check_three_ways(core, data, expected_events, expected_replies=b"",
                     on_event=end_after_stdin, trailing=True, **kw):
    """Feed ``data`` the three ways and compare with the expected results.

    ``trailing=False`` for inputs cut mid-record, where bytes after them
    would change their meaning.  The trailer is answered when the parser
    reads that far: no error stopped it, and the connection is kept (or no
    request was answered, so none ended it).
    """
    trailer_reply = core.Writer().get_values_result(
        {"FCGI_MAX_CONNS": str(kw.get("max_conns", 1))})
    for name, chunks, trailing_way in ways(data):
        if trailing_way and not trailing:
            continue
        events, replies = run(core.Parser(**kw), chunks, on_event=on_event)
        assert events == expected_events, name
        if trailing_way and (on_event is None or keeps_connection(data)) and not (
                expected_events and type(expected_events[-1]) is int
                and expected_events[-1] not in (-1, -7)):
            # The trailer arrives before EOF, so it is answered unless an
            # error stopped the parser first.
            assert replies == expected_replies + trailer_reply, name
        else:
            assert replies == expected_replies, name


# -- front ends: the web servers the integration tests put in front of us ------
#
# Tests that need one (nginx, lighttpd, Apache, Caddy, h2o, HAProxy, uwsgi,
# cgi-fcgi, spawn-fcgi), or a program that reads what we serve (Prometheus,
# Chromium), carry the ``frontend`` marker, so ``pytest -m "not frontend"``
# runs the rest with no system package at all.  need_frontend()
# records which front ends ran and which could not, and the summary at the
# end of the run lists both.  tests/run.sh installs them all and sets
# FASTFCGI_REQUIRE_FRONTENDS=1: a missing one then fails its tests instead
# of skipping them quietly.

FRONTENDS_STARTED = {}      # name -> how many times a test started it
FRONTENDS_SKIPPED = {}      # name -> why it could not run


def need_frontend(name, missing=None, installable=True, skip=True):
    """Go on when front end ``name`` can run (``missing`` is None), else
    skip the test with ``missing`` as the reason (or, without ``skip``, let
    it go on without that part); fail it instead when
    FASTFCGI_REQUIRE_FRONTENDS=1 and the front end is a package that was
    to be installed (``installable``) rather than one this machine cannot
    run (mod_fcgid as root without user namespaces, say)."""
    if missing is None:
        FRONTENDS_STARTED[name] = FRONTENDS_STARTED.get(name, 0) + 1
        return
    FRONTENDS_SKIPPED[name] = missing
    if installable and os.environ.get("FASTFCGI_REQUIRE_FRONTENDS") == "1":
        pytest.fail("%s: %s, but FASTFCGI_REQUIRE_FRONTENDS=1 says tests/run.sh installed "
                    "it" % (name, missing), pytrace=False)
    if skip:
        pytest.skip(missing)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "frontend: needs a web server or another system package "
        "(deselect with -m 'not frontend')")


def pytest_terminal_summary(terminalreporter):
    if not (FRONTENDS_STARTED or FRONTENDS_SKIPPED):
        return
    terminalreporter.section("front ends")
    for name in sorted(FRONTENDS_STARTED):
        count = FRONTENDS_STARTED[name]
        terminalreporter.line("ran      %-12s started %d time%s" % (name, count, "s"[count == 1:]))
    for name in sorted(FRONTENDS_SKIPPED):
        terminalreporter.line("skipped  %-12s %s" % (name, FRONTENDS_SKIPPED[name]))


def core_id_or_skip(core_id):
    if core_id == "c" and fastfcgi is None:
        pytest.skip("compiled core not built (%s)" % (PURE_ONLY_REASON or COMPILED_IMPORT_ERROR))
    return core_id


@pytest.fixture(params=["c", "py"])
def core_id(request):
    """The core id ("c" or "py") for tests that run the server as a process."""
    return core_id_or_skip(request.param)


@contextlib.contextmanager
def starting(core_id, tmp_path, options=()):
    """The ``start`` fixture's function, with ``options`` before the
    test's own (the spec tests add --asgi)."""
    from servers import FastCGIProcess
    started = []

    def start(*args, app="dispatch:app", **kw):
        server = FastCGIProcess(core_id, app, *(tuple(options) + args), tmpdir=str(tmp_path),
                                **kw).wait_ready()
        started.append(server)
        return server
    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def start(core_id, tmp_path):
    """start(*args, app=..., address=...): fastfcgi serving ``app`` (default
    the integration stack's dispatch:app) on the test's core, ready; all of
    them are stopped after the test."""
    with starting(core_id, tmp_path) as start:
        yield start
