"""fastfcgi_py: a FastCGI application server for Python, in one file.

Standard library only, Python 3.6+.  This module is the whole product in pure
Python (protocol, connections, Request, gateways, servers, CLI) and the
reference for the compiled module ``fastfcgi``, which re-implements only the
hot parts (below) and imports everything else from here.  Copy this file
into a project to vendor fastfcgi.

Table of contents: ``grep -n '^# .*####' fastfcgi_py.py``.

One request's path, section by section (data-flow order)::

    Servers     Server._accept: Connection.accept, new_connection (a Parser)
                Server.serve_connection: Connection.next_request
    Connection  Connection.read_event: recv into the Parser; management
                replies (GET_VALUES, CANT_MPX_CONN...) sent as they arise
    Parser      Parser.next_event: records into events; inactive ids
                ignored, one request at a time, limits (FastCGI 3.3, 5.1)
    Connection  Connection.route, the demultiplexer: PARAMS make a Request;
                STDIN, DATA, ABORT go to theirs; a code ends them all
    Request     Request.__init__: the GET's empty STDIN taken at once
    Servers     Server.handle: the gateway on the Request
    Gateways    WSGIGateway.__call__: _wsgi_environ, _Response.start_response,
                the application, then _send_list (a list body) or _send;
                Gateway's policy answers errors, limits and aborts
    Request     read_stdin*, wsgi.input: _pull, Connection.read_event + route
    Writer      Writer.finish / stdout: the STDOUT records and END_REQUEST
    Request     Request.finish: Connection.send_last or sendall, then
                Connection.end_request (the id is inactive again)
    Servers     serve_connection: the next request, the poller (KEEP_CONN),
                or close (drained when input was left unread)

The compiled core runs typed twins of the hot steps: Parser, Writer, the
Connection's read loop, next_request and end_request, the Request's state
and finish, _wsgi_environ, _Response and _send_list; the rest is this file.
"""

import asyncio
import errno
import logging
import os
import random
import select
import signal
import socket
import _socket
import struct
import sys
import time
import traceback
from bisect import bisect_left

__version__ = "0.1.0"
# Which core this module's classes are: "pure" here, "compiled" in the
# extension module fastfcgi (whose `import fastfcgi` falls back to this
# module's API in a pure install).
CORE = "pure"

log = logging.getLogger("fastfcgi")

__all__ = [
    # return codes
    "OK", "EOF", "IO", "PROTO", "PLEN", "CLEN", "ABORT", "NOREQ", "SEND",
    "CODE_NAMES",
    # FastCGI 1.0 constants
    "FCGI_VERSION_1", "FCGI_HEADER_LEN", "FCGI_MAX_CONTENT",
    "FCGI_BEGIN_REQUEST", "FCGI_ABORT_REQUEST", "FCGI_END_REQUEST",
    "FCGI_PARAMS", "FCGI_STDIN", "FCGI_STDOUT", "FCGI_STDERR", "FCGI_DATA",
    "FCGI_GET_VALUES", "FCGI_GET_VALUES_RESULT", "FCGI_UNKNOWN_TYPE",
    "FCGI_RESPONDER", "FCGI_AUTHORIZER", "FCGI_FILTER", "FCGI_KEEP_CONN",
    "FCGI_REQUEST_COMPLETE", "FCGI_CANT_MPX_CONN", "FCGI_OVERLOADED",
    "FCGI_UNKNOWN_ROLE", "ROLE_NAMES",
    "DEFAULT_MAX_PARAM_SIZE", "DEFAULT_MAX_PARAMS_SIZE",
    # protocol core
    "Parser", "Writer", "encode_params", "send_file",
    # request, gateways, servers, client, CLI
    "Request", "RequestError", "Connection", "WSGIGateway", "RawGateway", "FileWrapper",
    "Offload", "HTTPRequest", "request_headers", "AsyncRequest", "ASGIGateway", "AsyncRawGateway", "AsyncServer", "asgi_scope",
    "Server", "HTTPServer", "Supervisor", "WORKER_BOOT_ERROR", "parse_address", "bind_listener",
    "tune_listener", "AccessLog", "ACCESS_LOG_FIELDS", "ACCESS_LOG_COMMON",
    # status
    "Scoreboard", "WorkerRow", "DURATION_BUCKETS", "listen_queue", "serve_status_connection",
    "queue_wait", "POOL_STATES", "close_the_door",
    "Client", "ClientResponse", "main", "client_main", "select_core", "load_app",
    "authorizer", "CORE",
]


##############################################################################
# Constants and records  ######################################################
##############################################################################
#
# FastCGI 1.0 (Open Market, 1996), section 8: every record starts with an
# 8-byte header: version, type, request id (2 bytes), content length (2
# bytes), padding length, reserved.  All integers are big-endian.

# Return codes of the reading functions (DESIGN.md).  Peer faults are codes,
# never exceptions; caller faults raise.
OK = 0        # a complete request was read
EOF = -1      # the peer closed mid-record or mid-request
IO = -2       # a read error on the socket
PROTO = -3    # a FastCGI protocol violation
PLEN = -4     # a param name/value, or all params together, over the limit
CLEN = -5     # the body is over the limit, or CONTENT_LENGTH is invalid
ABORT = -6    # FCGI_ABORT_REQUEST, or stdin shorter than CONTENT_LENGTH
NOREQ = -7    # the peer closed cleanly between requests
SEND = -8     # a write error while answering

CODE_NAMES = {OK: "OK", EOF: "EOF", IO: "IO", PROTO: "PROTO", PLEN: "PLEN",
              CLEN: "CLEN", ABORT: "ABORT", NOREQ: "NOREQ", SEND: "SEND"}

FCGI_VERSION_1 = 1
FCGI_HEADER_LEN = 8
FCGI_MAX_CONTENT = 65535

# Record types (spec 8).
FCGI_BEGIN_REQUEST = 1
FCGI_ABORT_REQUEST = 2
FCGI_END_REQUEST = 3
FCGI_PARAMS = 4
FCGI_STDIN = 5
FCGI_STDOUT = 6
FCGI_STDERR = 7
FCGI_DATA = 8
FCGI_GET_VALUES = 9
FCGI_GET_VALUES_RESULT = 10
FCGI_UNKNOWN_TYPE = 11

# Roles and flags of FCGI_BEGIN_REQUEST (spec 5.1).
FCGI_RESPONDER = 1
FCGI_AUTHORIZER = 2
FCGI_FILTER = 3
ROLE_NAMES = {FCGI_RESPONDER: "RESPONDER", FCGI_AUTHORIZER: "AUTHORIZER",
              FCGI_FILTER: "FILTER"}
FCGI_KEEP_CONN = 1

# protocolStatus of FCGI_END_REQUEST (spec 5.5).
FCGI_REQUEST_COMPLETE = 0
FCGI_CANT_MPX_CONN = 1
FCGI_OVERLOADED = 2
FCGI_UNKNOWN_ROLE = 3

# Limits.  One name or value: the longest header line mainstream front ends
# forward by default is 8 KiB (Apache) to 64 KiB (nginx with raised
# large_client_header_buffers).  All params together: 1 MiB leaves room for
# a hundred such headers while bounding what one connection can make us hold.
DEFAULT_MAX_PARAM_SIZE = 65536
DEFAULT_MAX_PARAMS_SIZE = 1 << 20
# Records we emit carry at most this much content: the largest multiple of 8
# under 65535, so full records need no padding.
_CHUNK = 65528
# CONTENT_LENGTH with more digits than this cannot be a real body size and
# would not fit a C long long.
_MAX_CL_DIGITS = 18

_header = struct.Struct("!BBHHBx")
_PAD = b"\0" * 8


def _record(rtype, request_id, content):
    """Return one record (header, content, zero padding) as bytes."""
    n = len(content)
    pad = -n & 7
    return _header.pack(1, rtype, request_id, n, pad) + content + _PAD[:pad]


def _records(rtype, request_id, data, out):
    """Append the records framing ``data`` (at most _CHUNK bytes each) to
    the list ``out``; nothing for empty data."""
    n = len(data)
    if n <= _CHUNK:
        if n:
            pad = -n & 7
            out.append(_header.pack(1, rtype, request_id, n, pad))
            out.append(data)
            if pad:
                out.append(_PAD[:pad])
        return
    view = memoryview(data)
    for start in range(0, n, _CHUNK):
        chunk = view[start:start + _CHUNK]
        size = len(chunk)
        pad = -size & 7
        out.append(_header.pack(1, rtype, request_id, size, pad))
        out.append(chunk)
        if pad:
            out.append(_PAD[:pad])


def _end_request(request_id, app_status, protocol_status):
    return _header.pack(1, FCGI_END_REQUEST, request_id, 8, 0) + struct.pack(
        "!LB3x", app_status & 0xFFFFFFFF, protocol_status)


def encode_params(pairs):
    """Encode name-value pairs (spec 3.4) as the body of a PARAMS record.

    Args:
        pairs: a mapping or an iterable of (name, value); each a str (encoded
            as latin-1) or bytes.
    Returns:
        bytes: lengths below 128 take one byte, longer ones four.
    """
    if hasattr(pairs, "items"):
        pairs = pairs.items()
    out = []
    for name, value in pairs:
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        for n in (len(name), len(value)):
            out.append(bytes((n,)) if n < 128 else struct.pack("!L", n | 0x80000000))
        out.append(name)
        out.append(value)
    return b"".join(out)


def _decode_params(data, max_size):
    """Decode a complete name-value block.

    Returns a dict of latin-1 str, or the code PLEN (a name or value longer
    than max_size) or PROTO (a length running past the end).  The cores
    check in the same order: name length, value length, then the bounds.
    """
    text = data.decode("latin-1")  # slices of this are the str we hand out
    params = {}
    end = len(data)
    i = 0
    while i < end:
        n = data[i]
        if n & 0x80:
            if i + 4 > end:
                return PROTO
            n = ((n & 0x7F) << 24) | (data[i + 1] << 16) | (data[i + 2] << 8) | data[i + 3]
            i += 4
        else:
            i += 1
        if i >= end:
            return PROTO
        v = data[i]
        if v & 0x80:
            if i + 4 > end:
                return PROTO
            v = ((v & 0x7F) << 24) | (data[i + 1] << 16) | (data[i + 2] << 8) | data[i + 3]
            i += 4
        else:
            i += 1
        if n > max_size or v > max_size:
            return PLEN
        j = i + n
        k = j + v
        if k > end:
            return PROTO
        params[text[i:j]] = text[j:k]
        i = k
    return params


##############################################################################
# Parser  #####################################################################
##############################################################################
#
# Theory of operation.  The parser is sans-IO: ``feed(data)`` appends bytes
# (``b""`` means the peer closed; ``get_buffer``/``buffer_updated`` is the
# same for asyncio's buffered protocols), ``next_event()`` consumes whole
# records and returns the first thing the caller must act on:
#
#   None                               need more data (or: the next request
#                                      waits until the active one ends, below)
#   (FCGI_PARAMS, id, role, flags, params)
#                                      a request's params are complete; params
#                                      is a dict of latin-1 str, WSGI-ready
#   (FCGI_STDIN, id, chunk)            one STDIN record's content; b"" = end
#   (FCGI_DATA, id, chunk)             the same for the FILTER role's data
#   (FCGI_ABORT_REQUEST, id, code)     the request's input is over, abnormally:
#                                      ABORT  the peer sent ABORT_REQUEST, or
#                                             stdin ended short of CONTENT_LENGTH
#                                      PLEN   its params broke a limit (no PARAMS
#                                             event came for it)
#                                      CLEN   CONTENT_LENGTH invalid or over
#                                             max_body (no PARAMS event), or the
#                                             body passed max_body
#                                      The request stays active until the
#                                      caller answers it (``end_request``); the
#                                      rest of its records are skipped.
#   an int code                        EOF, NOREQ or PROTO: the connection is
#                                      over, and the parser stays in that
#                                      state (sticky)
#
# Request ids (spec 3.3): "A request ID R becomes active when the application
# receives a record {FCGI_BEGIN_REQUEST, R, ...} and becomes inactive when the
# application sends a record {FCGI_END_REQUEST, R, ...} to the Web server.
# While a request ID R is inactive, the application ignores records with
# requestId == R, except for FCGI_BEGIN_REQUEST records".  The caller says
# when it sent END_REQUEST (``end_request``); from then on the id costs
# nothing.  Per-request failures end one request; only EOF, NOREQ and PROTO
# end the connection.
#
# A connection that does not multiplex (spec 5.1, FCGI_CANT_MPX_CONN) takes
# one request at a time, in order: a BEGIN_REQUEST that arrives while the
# active request's input is still coming is a concurrent request and is
# refused at once with END_REQUEST(CANT_MPX_CONN); one that arrives after all
# of its input (HAProxy sends the next request as soon as it has a response's
# body, before END_REQUEST) stays unread until the active request ends, and
# is then served.
#
# Management records are answered inside the parser: replies (GET_VALUES_
# RESULT, UNKNOWN_TYPE, END_REQUEST with UNKNOWN_ROLE or CANT_MPX_CONN) are
# queued for ``data_to_send()``.  A request without FCGI_KEEP_CONN ends the
# connection once it is answered (spec 5.1): then next_event gives NOREQ.
#
# Events are emitted per whole record, so the events do not depend on how the
# bytes were split: the differential tests rely on that.  Reading from a
# socket is the transport's business (Connection, below).


class _RequestState(object):
    """Per-request parser state."""

    __slots__ = ("role", "flags", "params", "params_buf", "content_length",
                 "stdin_seen", "data_seen", "stdin_done", "data_done", "aborted", "excess")

    def __init__(self, role, flags):
        self.role = role
        self.flags = flags
        self.params = None          # dict once the PARAMS stream ended
        self.params_buf = bytearray()
        self.content_length = -1    # -1: no CONTENT_LENGTH given
        self.stdin_seen = 0
        self.data_seen = 0          # FILTER: FCGI_DATA bytes so far
        self.stdin_done = False
        self.data_done = False
        self.aborted = False        # input over: its records are skipped
        self.excess = 0             # stdin bytes past CONTENT_LENGTH, dropped


def _input_complete(state):
    """Whether all of a request's input is in (or will never come): then a
    BEGIN_REQUEST behind it is the next request, not a concurrent one."""
    if state.aborted:
        return True
    if state.params is None:
        return False
    if state.role == FCGI_AUTHORIZER:
        return True                 # spec 6.3: an authorizer gets no stdin
    return state.stdin_done and (state.data_done or state.role != FCGI_FILTER)


class Parser(object):
    """Sans-IO FastCGI record parser for the application side.

    Args (keyword-only):
        max_param_size: longest allowed param name or value (PLEN past it).
        max_params_size: most bytes of all params of one request (PLEN).
        max_body: most stdin bytes of one request (and FCGI_DATA bytes of a
            FILTER), or None for no limit (CLEN past it, or at once when
            CONTENT_LENGTH says more).
        max_conns, max_reqs, mpxs_conns: what FCGI_GET_VALUES is told
            (spec 4.1).  With mpxs_conns true up to max_reqs requests may be
            active on one connection; otherwise one at a time (see above).

    See the section comment above for the events and codes.
    """

    __slots__ = ("max_param_size", "max_params_size", "max_body", "max_conns",
                 "max_reqs", "mpxs_conns", "_buf", "_pos", "_eof", "_error",
                 "_requests", "_out", "_closing", "_recv_buf", "_lent")

    def __init__(self, *, max_param_size=DEFAULT_MAX_PARAM_SIZE,
                 max_params_size=DEFAULT_MAX_PARAMS_SIZE, max_body=None,
                 max_conns=1, max_reqs=1, mpxs_conns=False):
        if max_param_size < 0 or max_params_size < 0:
            raise ValueError("limits must not be negative")
        if max_body is not None and max_body < 0:
            raise ValueError("max_body must be None or >= 0")
        self.max_param_size = max_param_size
        self.max_params_size = max_params_size
        self.max_body = max_body
        self.max_conns = max_conns
        self.max_reqs = max_reqs
        self.mpxs_conns = bool(mpxs_conns)
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._error = 0
        self._requests = {}      # active request id -> _RequestState
        self._out = []           # queued management replies
        self._closing = False    # a request without KEEP_CONN began
        self._recv_buf = None    # get_buffer's
        self._lent = 0           # the size get_buffer lent, until buffer_updated

    # -- feeding ------------------------------------------------------------

    def feed(self, data):
        """Append bytes received from the web server; ``b""`` marks EOF.

        Raises:
            RuntimeError: data fed after EOF.
        """
        self._lent = 0          # a buffer get_buffer lent is abandoned
        if self._eof:
            if data:
                raise RuntimeError("Parser.feed() after EOF")
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    def get_buffer(self, sizehint=-1):
        """asyncio.BufferedProtocol.get_buffer: a writable buffer for the
        next read, then ``buffer_updated(nbytes)``.  (The compiled core
        hands out its own receive buffer; here it is a scratch buffer.)"""
        size = sizehint if sizehint > 0 else _RECV_FIRST
        if self._eof:
            raise RuntimeError("Parser.get_buffer() after EOF")
        buf = self._recv_buf
        if buf is None or len(buf) < size:
            buf = self._recv_buf = bytearray(size)
        self._lent = size
        return memoryview(buf)[:size]

    def buffer_updated(self, nbytes):
        """``nbytes`` were written into the buffer ``get_buffer`` gave: as
        feed() of those bytes (0 is not EOF here: feed b"" for that).  A
        lent buffer that is never updated (asyncio's read found EOF or an
        error) is simply abandoned: feed() and get_buffer() go on.

        Raises:
            RuntimeError: no get_buffer() before it.
            ValueError: more bytes than the buffer holds.
        """
        if not self._lent:
            raise RuntimeError("Parser.buffer_updated() without get_buffer()")
        if not 0 <= nbytes <= self._lent:
            raise ValueError("nbytes out of range: %r" % (nbytes,))
        self._lent = 0
        if nbytes:
            self._buf += self._recv_buf[:nbytes]

    @property
    def error(self):
        """The sticky code (EOF, NOREQ or PROTO) or 0."""
        return self._error

    @property
    def buffered(self):
        """How many received bytes are not consumed yet."""
        return len(self._buf) - self._pos

    @property
    def keep_conn(self):
        """False once a request without FCGI_KEEP_CONN has begun: the
        connection ends when no request is active (spec 5.1)."""
        return not self._closing

    @property
    def active(self):
        """How many requests are active (begun, not yet ended)."""
        return len(self._requests)

    @property
    def waiting(self):
        """True when the next request has arrived and waits, unread, for
        the active one to end (see the section comment)."""
        buf = self._buf
        pos = self._pos
        if (self._error or len(buf) - pos < 8 or buf[pos + 1] != FCGI_BEGIN_REQUEST
                or buf[pos] != FCGI_VERSION_1 or not (buf[pos + 2] or buf[pos + 3])
                or not self._requests or self.mpxs_conns):
            return False
        return _input_complete(next(iter(self._requests.values())))

    def data_to_send(self):
        """Return (and forget) the queued replies to management records."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out = []
        return out

    def end_request(self, request_id):
        """Mark ``request_id`` answered (its END_REQUEST is sent): it is
        inactive from now on, so its late records (stdin the application
        did not read) are skipped, and a new BEGIN_REQUEST may reuse the id
        (nginx always sends id 1).

        Returns:
            How many stdin bytes past its CONTENT_LENGTH the request was
            sent and the parser dropped (PEP 3333: the application reads
            at most CONTENT_LENGTH bytes): 0 but for a faulty peer.
        """
        state = self._requests.pop(request_id, None)
        return state.excess if state is not None else 0

    def take_stdin_end(self, request_id):
        """Consume the next buffered record if it is the empty STDIN that
        cleanly ends ``request_id``'s stdin (its params are in, all of its
        CONTENT_LENGTH came): True if it did, as if next_event had returned
        ``(FCGI_STDIN, request_id, b"")``.  Otherwise nothing changes.

        nginx sends a GET's empty STDIN with its params; this takes it
        without making an event.
        """
        buf = self._buf
        pos = self._pos
        if (self._error or len(buf) - pos < 8
                or _header.unpack_from(buf, pos) != (FCGI_VERSION_1, FCGI_STDIN, request_id, 0, 0)):
            return False
        state = self._requests.get(request_id)
        if (state is None or state.params is None or state.stdin_done or state.aborted
                or state.stdin_seen < state.content_length):
            return False
        self._pos = pos + 8
        state.stdin_done = True
        return True

    # -- the state machine -------------------------------------------------

    def next_event(self):
        """Consume buffered records up to the next event.

        Returns:
            None (need data), an event tuple, or a sticky code; see the
            section comment.
        """
        if self._error:
            return self._error
        buf = self._buf
        while True:
            if self._closing and not self._requests:
                # Spec 5.1: without FCGI_KEEP_CONN the connection ends
                # after the response; nothing more is read from it.
                return self._fail(NOREQ)
            pos = self._pos
            avail = len(buf) - pos
            if avail < 8:
                if self._eof:
                    if avail or self._requests:
                        return self._fail(EOF)
                    return self._fail(NOREQ)
                if pos:
                    del buf[:pos]
                    self._pos = 0
                return None
            if buf[pos] != FCGI_VERSION_1:
                return self._fail(PROTO)
            rtype = buf[pos + 1]
            request_id = (buf[pos + 2] << 8) | buf[pos + 3]
            if (rtype == FCGI_BEGIN_REQUEST and self._requests and request_id
                    and not self.mpxs_conns
                    and _input_complete(next(iter(self._requests.values())))):
                # The next request: read once this one ends.  If the peer
                # closed meanwhile, the active request is left at EOF.
                return self._fail(EOF) if self._eof else None
            clen = (buf[pos + 4] << 8) | buf[pos + 5]
            end = pos + 8 + clen
            if avail < 8 + clen + buf[pos + 6]:
                if self._eof:
                    return self._fail(EOF)
                if pos:
                    del buf[:pos]
                    self._pos = 0
                return None
            content = bytes(buf[pos + 8:end])
            self._pos = end + buf[pos + 6]
            event = self._dispatch(rtype, request_id, content)
            if event is not None:
                return event

    def _fail(self, code):
        self._error = code
        return code

    def _dispatch(self, rtype, request_id, content):
        if request_id == 0:
            if rtype == FCGI_GET_VALUES:
                return self._on_get_values(content)
            if FCGI_BEGIN_REQUEST <= rtype <= FCGI_DATA:
                return self._fail(PROTO)      # a request record with id 0
            self._out.append(_record(FCGI_UNKNOWN_TYPE, 0, bytes((rtype,)) + b"\0" * 7))
            return None
        if rtype == FCGI_BEGIN_REQUEST:
            return self._on_begin_request(request_id, content)
        state = self._requests.get(request_id)
        if state is None:
            return None         # spec 3.3: an inactive id's record is ignored
        handler = _HANDLERS.get(rtype)
        if handler is None:
            if rtype in _MISPLACED_WITH_ID:
                # A record only applications send, or a management record
                # with a request id: the peer is confused.
                return self._fail(PROTO)
            self._out.append(_record(FCGI_UNKNOWN_TYPE, 0, bytes((rtype,)) + b"\0" * 7))
            return None
        if state.aborted:
            return None         # its input is over: the rest is skipped
        return handler(self, request_id, content, state)

    # One handler per record type (spec 5); each returns an event, a code
    # (through _fail) or None to go on.

    def _on_begin_request(self, request_id, content):
        if len(content) != 8 or request_id in self._requests:
            return self._fail(PROTO)
        role = (content[0] << 8) | content[1]
        flags = content[2]
        if not flags & FCGI_KEEP_CONN:
            self._closing = True
        if role not in (FCGI_RESPONDER, FCGI_AUTHORIZER, FCGI_FILTER):
            reply = FCGI_UNKNOWN_ROLE
        elif self._requests and not self.mpxs_conns:
            reply = FCGI_CANT_MPX_CONN
        elif len(self._requests) >= self.max_reqs:
            # Spec 5.5: a multiplexing application out of a resource (here
            # the requests one connection may run at once) says OVERLOADED.
            reply = FCGI_OVERLOADED
        else:
            self._requests[request_id] = _RequestState(role, flags)
            return None
        # Refused: answered now, and the id stays inactive (its records
        # are ignored).
        self._out.append(_end_request(request_id, 0, reply))
        return None

    def _abort(self, request_id, state, code):
        """A per-request failure: its input is over (see the section)."""
        state.aborted = True
        state.params_buf = None
        return (FCGI_ABORT_REQUEST, request_id, code)

    def _on_abort_request(self, request_id, content, state):
        return self._abort(request_id, state, ABORT)

    def _on_params(self, request_id, content, state):
        if state.params is not None:
            return self._fail(PROTO)
        if content:
            if len(state.params_buf) + len(content) > self.max_params_size:
                return self._abort(request_id, state, PLEN)
            state.params_buf += content
            return None
        params = _decode_params(bytes(state.params_buf), self.max_param_size)
        state.params_buf = None
        if type(params) is int:
            if params == PROTO:
                return self._fail(PROTO)
            return self._abort(request_id, state, params)
        cl = params.get("CONTENT_LENGTH")
        if cl and cl != "-1":   # Caddy 2.6 sends -1 for a body of unknown length
            if len(cl) > _MAX_CL_DIGITS or cl.strip("0123456789"):
                return self._abort(request_id, state, CLEN)
            n = int(cl)
            if self.max_body is not None and n > self.max_body:
                return self._abort(request_id, state, CLEN)
            state.content_length = n
        state.params = params
        return (FCGI_PARAMS, request_id, state.role, state.flags, params)

    def _on_stdin(self, request_id, content, state):
        if state.params is None or state.stdin_done:
            return self._fail(PROTO)
        if not content:
            state.stdin_done = True
            if 0 <= state.content_length and state.stdin_seen < state.content_length:
                return self._abort(request_id, state, ABORT)
            return (FCGI_STDIN, request_id, b"")
        seen = state.stdin_seen + len(content)
        if 0 <= state.content_length < seen:
            # More than CONTENT_LENGTH: PEP 3333 has the server "simulate an
            # end-of-file condition if the application attempts to read past
            # that point", so the rest is dropped (and counted).
            keep = state.content_length - state.stdin_seen
            state.excess += seen - state.content_length
            state.stdin_seen = state.content_length
            if not keep:
                return None
            return (FCGI_STDIN, request_id, content[:keep])
        state.stdin_seen = seen
        if self.max_body is not None and seen > self.max_body:
            return self._abort(request_id, state, CLEN)
        return (FCGI_STDIN, request_id, content)

    def _on_data(self, request_id, content, state):
        # Spec 6.4: only a FILTER has a data stream; it follows the params.
        if state.params is None or state.data_done or state.role != FCGI_FILTER:
            return self._fail(PROTO)
        if not content:
            state.data_done = True
            return (FCGI_DATA, request_id, b"")
        state.data_seen += len(content)
        if self.max_body is not None and state.data_seen > self.max_body:
            return self._abort(request_id, state, CLEN)
        return (FCGI_DATA, request_id, content)

    def _on_get_values(self, content):
        asked = _decode_params(content, FCGI_MAX_CONTENT)  # one record's worth
        if type(asked) is int:
            return self._fail(PROTO)
        known = {"FCGI_MAX_CONNS": str(self.max_conns),
                 "FCGI_MAX_REQS": str(self.max_reqs),
                 "FCGI_MPXS_CONNS": "1" if self.mpxs_conns else "0"}
        answer = [(name, known[name]) for name in asked if name in known]
        self._out.append(_record(FCGI_GET_VALUES_RESULT, 0, encode_params(answer)))
        return None


# What the blocking Connection's recv asks for: a request's first reads are
# small, so a connection that brings one small request never needs a big
# buffer (the compiled core's first allocation, not grown); each read that
# fills its size doubles the next, up to _RECV_SIZE, for a body that streams
# in.
_RECV_FIRST = 16384
_RECV_SIZE = 262144
_ASYNC_RECV_SIZE = 65536        # the asyncio worker's (see _AsyncConnection.get_buffer)

_HANDLERS = {
    FCGI_ABORT_REQUEST: Parser._on_abort_request,
    FCGI_PARAMS: Parser._on_params,
    FCGI_STDIN: Parser._on_stdin,
    FCGI_DATA: Parser._on_data,
}
_MISPLACED_WITH_ID = frozenset((FCGI_END_REQUEST, FCGI_STDOUT, FCGI_STDERR,
                                FCGI_GET_VALUES, FCGI_GET_VALUES_RESULT,
                                FCGI_UNKNOWN_TYPE))


##############################################################################
# Writer  #####################################################################
##############################################################################
#
# Output records (spec 5.3, 5.5): STDOUT and STDERR streams in records of at
# most 65535 content bytes (we cut at 65528 so full records need no padding),
# each padded with zero bytes to a multiple of 8 (spec 3.3 recommends
# 8-byte alignment); an empty record ends a stream; END_REQUEST carries the
# application's exit status and a protocol status.  The Writer only builds
# bytes; sending them is the caller's business, except ``send_file``, which
# has to hand a file descriptor to sendfile(2).

# RFC 9110 5.6.2 token characters: what a header name may be made of.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# RFC 9110 5.5: a field value is visible characters, SP, HTAB and obs-text
# (latin-1 here).  Everything else, CR and LF above all, would let an
# application split the response.
_DIGITS = frozenset("0123456789")
_BAD_VALUE_CHARS = frozenset(chr(c) for c in range(32) if c != 9) | {"\x7f"}


def _check_request_id(request_id):
    if not 0 <= request_id <= 0xFFFF:
        raise ValueError("request id out of range: %r" % (request_id,))


def _as_bytes(data):
    """bytes for any bytes-like object; TypeError for anything else."""
    if type(data) is bytes:
        return data
    return bytes(memoryview(data))


def _check_value(text, what):
    if type(text) is not str:
        raise TypeError("%s must be str, not %s" % (what, type(text).__name__))
    for ch in text:
        if ch in _BAD_VALUE_CHARS or ch > "\xff":
            raise ValueError("invalid character %r in %s %r" % (ch, what, text))


class Writer(object):
    """Builds the records an application sends.  Stateless; every method
    returns bytes ready for one ``send``.

    Raises (every method):
        ValueError: a request id outside 0..65535, or a head that would
            split the response (see ``head``).
        TypeError: data that is not bytes-like, a name or value not str.
    """

    __slots__ = ()

    def stdout(self, request_id, data):
        """STDOUT records carrying ``data``; b"" for empty data (the stream
        terminator is ``end_stdout``)."""
        _check_request_id(request_id)
        out = []
        _records(FCGI_STDOUT, request_id, _as_bytes(data), out)
        return b"".join(out)

    def stderr(self, request_id, data):
        """STDERR records carrying ``data`` (it lands in the web server's
        error log); b"" for empty data."""
        _check_request_id(request_id)
        out = []
        _records(FCGI_STDERR, request_id, _as_bytes(data), out)
        return b"".join(out)

    def end_stdout(self, request_id):
        """The empty STDOUT record that ends the stream."""
        _check_request_id(request_id)
        return _header.pack(1, FCGI_STDOUT, request_id, 0, 0)

    def end_stderr(self, request_id):
        """The empty STDERR record that ends the stream."""
        _check_request_id(request_id)
        return _header.pack(1, FCGI_STDERR, request_id, 0, 0)

    def end_request(self, request_id, app_status=0,
                    protocol_status=FCGI_REQUEST_COMPLETE):
        """END_REQUEST.  ``app_status`` is the exit code (taken modulo
        2**32, as the spec's unsigned 32-bit field); ``protocol_status`` one
        of FCGI_REQUEST_COMPLETE, FCGI_CANT_MPX_CONN, FCGI_OVERLOADED,
        FCGI_UNKNOWN_ROLE."""
        _check_request_id(request_id)
        if not 0 <= protocol_status <= 255:
            raise ValueError("protocol status out of range: %r" % (protocol_status,))
        return _end_request(request_id, app_status, protocol_status)

    def finish(self, request_id, data=b"", *, app_status=0):
        """The end of a response in one buffer: STDOUT records of ``data``,
        the STDOUT terminator and END_REQUEST(app_status, REQUEST_COMPLETE)."""
        _check_request_id(request_id)
        out = []
        _records(FCGI_STDOUT, request_id, _as_bytes(data), out)
        out.append(_header.pack(1, FCGI_STDOUT, request_id, 0, 0))
        out.append(_end_request(request_id, app_status, FCGI_REQUEST_COMPLETE))
        return b"".join(out)

    def head(self, status, headers):
        """The CGI response head: ``Status: <status>`` and the headers, each
        line ending in CRLF, then an empty line, as latin-1 bytes.

        Args:
            status: str such as "200 OK": three digits, then nothing or a
                space and a reason phrase.
            headers: iterable of (name, value) str pairs.
        Raises:
            ValueError: a malformed status, a name that is not an RFC 9110
                token, a value or reason with CR, LF or another control
                character, or a character outside latin-1.
            TypeError: status, a name or a value that is not str.
        """
        if type(status) is not str:
            raise TypeError("status must be str, not %s" % type(status).__name__)
        if not (len(status) >= 3 and _DIGITS.issuperset(status[:3])
                and (len(status) == 3 or status[3] == " ")):
            raise ValueError("invalid status %r" % (status,))
        _check_value(status, "status")
        lines = ["Status: ", status, "\r\n"]
        for name, value in headers:
            if type(name) is not str:
                raise TypeError("header name must be str, not %s" % type(name).__name__)
            if not name or not _TCHAR.issuperset(name):
                raise ValueError("invalid header name %r" % (name,))
            _check_value(value, "header value")
            lines.append(name)
            lines.append(": ")
            lines.append(value)
            lines.append("\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def response(self, request_id, status, headers, body=b"", *, app_status=0):
        """A whole response in one buffer: ``head(status, headers)`` and
        ``body`` in STDOUT records, the terminator and END_REQUEST."""
        return self.finish(request_id, self.head(status, headers) + _as_bytes(body),
                           app_status=app_status)

    def get_values_result(self, pairs):
        """GET_VALUES_RESULT (request id 0) carrying ``pairs`` (a mapping or
        iterable of (name, value))."""
        content = encode_params(pairs)
        if len(content) > FCGI_MAX_CONTENT:
            raise ValueError("GET_VALUES_RESULT content over 65535 bytes")
        return _record(FCGI_GET_VALUES_RESULT, 0, content)

    def unknown_type(self, record_type):
        """UNKNOWN_TYPE (request id 0) naming ``record_type``."""
        if not 0 <= record_type <= 255:
            raise ValueError("record type out of range: %r" % (record_type,))
        return _record(FCGI_UNKNOWN_TYPE, 0, bytes((record_type,)) + b"\0" * 7)


def send_file(sock, request_id, fd, offset=0, count=None):
    """Send ``count`` bytes of the file descriptor ``fd`` from ``offset`` as
    STDOUT records, the content going by ``os.sendfile`` (no copy through
    Python).  ``sock`` is a blocking connected socket.

    Returns:
        The number of bytes of the file sent (records stay well-formed if the
        file turns out shorter than ``count``: the rest is zero-filled), or
        SEND on a write error.
    """
    _check_request_id(request_id)
    if count is None:
        count = max(os.fstat(fd).st_size - offset, 0)
    out_fd = sock.fileno()
    sent_total = 0
    more = getattr(socket, "MSG_MORE", 0)
    try:
        while count > 0:
            size = min(count, _CHUNK)
            pad = -size & 7
            sock.sendall(_header.pack(1, FCGI_STDOUT, request_id, size, pad), more)
            left = size
            while left:
                try:
                    n = os.sendfile(out_fd, fd, offset, left)
                except BlockingIOError:
                    _wait_writable(sock)
                    continue
                if n == 0:  # the file is shorter than promised
                    sock.sendall(b"\0" * left)
                    count = left = 0
                    break
                offset += n
                left -= n
                sent_total += n
            if pad:
                sock.sendall(_PAD[:pad])
            count -= size
    except OSError:
        return SEND
    return sent_total


def _wait_writable(sock):
    select.select([], [sock], [])


##############################################################################
# Connection  #################################################################
##############################################################################
#
# A Connection is one web server connection as the server sees it: the
# transport that moves its bytes (here a blocking socket; the asyncio server
# has its own) and the demultiplexer that hands the parser's events to the
# requests they belong to.
#
# The demultiplexer (``route``) is the one place that decides what an event
# means, whichever transport read it (spec 3.3):
#
#   (FCGI_PARAMS, ...)          a new Request, made with ``request_class``:
#                               the caller runs it
#   (FCGI_STDIN/DATA, id, ...)  given to request ``id`` (its _on_stdin/_on_data)
#   (FCGI_ABORT_REQUEST, id, code)
#                               given to request ``id`` (_on_abort), or, when
#                               the request failed before its params were
#                               complete, returned for the caller to answer
#                               (the gateway's ``reject``)
#   a code                      the connection is over: every request is told
#                               (_on_connection_lost), and the code returned
#
# The blocking server has one request at a time; its Request pulls its stdin
# through ``read_event`` and ``route``, so both servers share one behaviour.


class RequestError(IOError):
    """Reading the request failed; ``code`` is the return code (EOF, ABORT,
    IO, CLEN, PROTO, SEND...)."""

    def __init__(self, code, message=None):
        IOError.__init__(self, message or "request failed: %s" % CODE_NAMES.get(code, code))
        self.code = code


# Linux's send flag that holds the data for what follows: with it the last
# response on a connection leaves together with the FIN (Connection.send_last).
# PyPy's socket module lacks the name, not the flag: Linux's value is fixed.
_MSG_MORE = getattr(socket, "MSG_MORE", 0x8000 if sys.platform.startswith("linux") else 0)


class _Demultiplexer(object):
    """The demultiplexer (see the section comment), shared by every
    transport: it needs ``parser``, ``requests`` (id -> Request),
    ``request_class`` and ``pending`` (what ``route`` gave while a request
    was reading: new requests, failures before params, for the server's
    next ``next_request``)."""

    __slots__ = ()

    def route(self, event):
        """Deliver one parser event (see the section comment).

        Returns:
            A new Request, None (delivered), the event of a request that
            failed before its params, or the code that ended the connection.
        """
        if type(event) is int:
            for request in list(self.requests.values()):
                request._on_connection_lost(event)
            return event
        kind = event[0]
        if kind == FCGI_PARAMS:
            return self.request_class(self, event[1], event[2], event[3], event[4])
        request = self.requests.get(event[1])
        if kind == FCGI_STDIN:
            if request is not None:
                request._on_stdin(event[2])
            return None
        if kind == FCGI_DATA:
            if request is not None:
                request._on_data(event[2])
            return None
        if request is None:
            return event        # FCGI_ABORT_REQUEST before its params
        request._on_abort(event[2])
        return None

    def _keep_pending(self, found):
        if self.pending is None:
            self.pending = []
        self.pending.append(found)

    def end_request(self, request_id):
        """The request's END_REQUEST is sent: forget it, here and in the
        parser.  Returns the parser's ``end_request`` (stdin bytes dropped
        past CONTENT_LENGTH)."""
        self.requests.pop(request_id, None)
        return self.parser.end_request(request_id)


class Connection(_Demultiplexer):
    """A web server's connection on a blocking socket: the socket, the core
    objects that read and write it, and its active requests.

    ``accept`` makes one from a listening socket.  The compiled core's twin
    works on the file descriptor and makes ``sock`` only when asked for it:
    most connections carry one request and never need the socket object.

    The head of the last request ``read_request`` returned OK for is in
    ``request_id``, ``role``, ``flags``, ``keep_conn`` and ``params`` (FU's
    reader); on ABORT, PLEN and CLEN ``request_id`` names the request.
    """

    __slots__ = ("sock", "parser", "writer", "peer", "send_file", "drain", "registered",
                 "retiring", "requests", "request_class", "pending", "request_id", "role",
                 "flags", "params", "error", "_recv_size")

    def __init__(self, sock, parser, writer, peer="", send_file=None, request_class=None):
        self.sock = sock
        self.parser = parser
        self.writer = writer
        self.peer = peer                # the accept() address
        self.send_file = send_file      # None: FastCGI records (module send_file)
        self.drain = False              # unread input: half-close and drain it
        self.registered = False         # in the Server's poller
        self.retiring = False           # RETIRE_RECORD goes with the last send
        self.requests = {}              # active request id -> Request
        self.request_class = request_class or Request
        self.pending = None             # route's results no reader took (a list)
        self.request_id = self.role = self.flags = 0
        self.params = None
        self.error = 0                  # IO or SEND, sticky, once the socket failed
        self._recv_size = _RECV_FIRST

    @classmethod
    def accept(cls, listener, nodelay=True):
        """Accept a connection from ``listener`` (as its accept(): raises
        BlockingIOError when none waits).  TCP connections get TCP_NODELAY
        unless ``nodelay`` is false (the listener has it, and the system
        passes it on: see `tune_listener`); ``parser`` and ``writer``
        are None, for the caller to set."""
        # socket.accept() without its Python-level wrapper: the _socket
        # object has all a connection needs, and costs less to make.
        # accept4() gives a blocking socket: no setblocking() needed.
        fd, peer = listener._accept()
        family = int(listener.family)
        # SOCK_STREAM, not listener.type: on 3.6 that carries SOCK_NONBLOCK
        # from a non-blocking listener, which would make this socket one.
        sock = _socket.socket(family, socket.SOCK_STREAM, 0, fd)
        if nodelay and family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()        # now, not when the traceback is gone
                raise
        return cls(sock, None, None, peer)

    def fileno(self):
        return self.sock.fileno()

    # -- reading: blocking, FU's reader ----------------------------------------

    def read_event(self):
        """Block until the parser's next event; management replies are
        sent as they arise.

        Returns:
            An event tuple or a code: as ``Parser.next_event``, plus IO
            (read error) and SEND (write error), both sticky.
        Raises:
            RuntimeError: the next request waits for the active one to
                end: nothing more will come until it is answered.
        """
        return self._read(True)

    def _read(self, wait):
        """read_event; with ``wait`` false, None instead of waiting while no
        request has begun."""
        if self.error:
            return self.error
        parser = self.parser
        sock = self.sock
        while True:
            event = parser.next_event()
            out = parser.data_to_send()
            if out:
                try:
                    sock.sendall(out)
                except OSError:
                    return self._fail(SEND)
            if event is not None:
                return event
            if parser.waiting:
                raise RuntimeError("read_event(): the next request waits for the active "
                                   "one to be answered")
            size = self._recv_size
            try:
                if wait or parser.active:
                    data = sock.recv(size)
                else:
                    data = sock.recv(size, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return self._fail(IO)
            if len(data) == size and size < _RECV_SIZE:
                self._recv_size = size * 2      # a stream: read more at once
            parser.feed(data)

    def _fail(self, code):
        self.error = code
        return code

    def read_request(self):
        """Block until a request's params are complete (FU's read_req).

        Returns:
            OK, with the request's head set (see the class); ABORT, PLEN or
            CLEN (``request_id`` set) when that request failed before its
            params ended: answer it and ``end_request`` it (whether the
            connection goes on is then ``parser.keep_conn``); or a sticky
            code (NOREQ, EOF, IO, PROTO, SEND).
        Raises:
            RuntimeError: a request's stdin is still coming (read it with
                read_event).
        """
        while True:
            event = self.read_event()
            if type(event) is int:
                return event
            kind = event[0]
            self.request_id = event[1]
            if kind == FCGI_PARAMS:
                self.role = event[2]
                self.flags = event[3]
                self.params = event[4]
                return OK
            if kind == FCGI_ABORT_REQUEST and event[1] not in self.requests:
                self.role = self.flags = 0
                self.params = None
                return event[2]
            raise RuntimeError("read_request() while request %d is being read" % event[1])

    @property
    def keep_conn(self):
        """True when the last request read asked to keep the connection."""
        return bool(self.flags & FCGI_KEEP_CONN)

    def next_request(self, wait=True):
        """The next request (the server's reader): what ``route`` returns
        but None: a new Request, the event of a request that failed before
        its params, or the code that ended the connection.

        With ``wait`` false, only what has arrived is read, unless a request
        has begun (its params are then waited for): None when there is no
        request yet (records of ended requests, management records)."""
        if self.pending:
            return self.pending.pop(0)
        while True:
            event = self._read(wait)
            if event is None:
                return None
            found = self.route(event)
            if found is not None:
                return found

    def poll(self, read=True):
        """Route what the web server sent meanwhile, without waiting for
        input: an ABORT_REQUEST, a closed connection, management records
        (answered: the one send that may wait, as a response's would).
        With ``read``, one non-blocking read first, unless enough is
        buffered already (what a peer sends while a request runs stays in
        the kernel, not in our memory).  New requests and failures before
        params (a multiplexing parser) wait in ``pending``."""
        parser = self.parser
        if read and not self.error and parser.buffered < _RECV_FIRST:
            try:
                data = self.sock.recv(_RECV_FIRST, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = None
                self.route(self._fail(IO))
            if data is not None and not parser.error:
                parser.feed(data)
        while not self.error:
            event = parser.next_event()
            out = parser.data_to_send()
            if out:
                try:
                    self.sock.sendall(out)
                except OSError:
                    event = self._fail(SEND)
            if event is None:
                return
            found = self.route(event)
            if type(found) is int:
                return
            if found is not None:
                self._keep_pending(found)

    # -- writing -----------------------------------------------------------------

    def sendall(self, data):
        """Send all of ``data``; raises OSError as socket.sendall."""
        self.sock.sendall(data)

    def send_last(self, data):
        """Send all of ``data``, the last output the connection carries,
        and half-close it (the caller closes it next).  Over TCP on Linux
        the data goes with MSG_MORE, so it leaves with the FIN in one
        segment: one packet fewer to send, and one fewer for the web server
        to acknowledge, than a send then close().  Elsewhere, as sendall.
        A ``retiring`` connection sends RETIRE_RECORD with it."""
        if self.retiring:
            self.retiring = False
            data = data + RETIRE_RECORD
        sock = self.sock
        if not _MSG_MORE or sock.family == socket.AF_UNIX:
            sock.sendall(data)
            return
        sock.sendall(data, _MSG_MORE)
        sock.shutdown(socket.SHUT_WR)

    def close(self):
        self.sock.close()

    @property
    def peer_text(self):
        peer = self.peer
        return "%s:%s" % peer[:2] if isinstance(peer, tuple) else (peer or "unix")


##############################################################################
# Request  ####################################################################
##############################################################################
#
# One request lives in one object (Net::Async::FastCGI's model): the params,
# the stdin stream (pulled from the connection on demand, so a body of any
# size costs one record of memory), the stdout/stderr streams and the finish
# with an exit code.  On the blocking server, reading stdin blocks on the
# connection (read_event, then route delivers to _on_stdin).
#
# When the web server aborts the request (ABORT_REQUEST) the request is
# aborted: output is dropped from then on, reads raise RequestError(ABORT),
# and finish sends END_REQUEST alone.  When the connection is lost (a write
# fails, EOF, a read error) nothing more can be sent at all.  Either way the
# application unwinds and its close() runs.


class _LineWriter(object):
    """writelines() and a no-op flush() on top of a write()."""

    __slots__ = ()

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass


class _LineReader(object):
    """readlines() and line iteration on top of a readline()."""

    __slots__ = ()

    def readlines(self, hint=-1):
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class _Stream(_LineReader, _LineWriter):
    """File-like view of one of a request's streams (stdin, stdout, stderr)."""

    def __init__(self, request, which, close_finishes=False):
        self._request = request
        self._which = which
        self._close_finishes = close_finishes
        self.closed = False

    # reading (stdin)
    def read(self, size=-1):
        return self._request.read_stdin(None if size is None or size < 0 else size)

    def readline(self, size=-1):
        return self._request.read_stdin_line(None if size is None or size < 0 else size)


    # writing (stdout, stderr)
    def write(self, data):
        if self._which == FCGI_STDOUT:
            self._request.print_stdout(data)
        else:
            self._request.print_stderr(data)
        return len(data)


    def close(self):
        if not self.closed:
            self.closed = True
            if self._close_finishes:
                self._request.finish()

    def readable(self):
        return self._which == FCGI_STDIN

    def writable(self):
        return self._which != FCGI_STDIN


class _DataStream(object):
    """File-like view of the FILTER role's FCGI_DATA stream."""

    def __init__(self, request):
        self._request = request

    def read(self, size=-1):
        return self._request.read_data(None if size is None or size < 0 else size)

    def readable(self):
        return True


class _RequestMethods(object):
    """Request's methods, apart from its state (``Request`` below).  The
    compiled core keeps that state, and its hot methods, in C, and takes the
    rest from here."""

    __slots__ = ()

    # -- what the demultiplexer delivers (Connection.route) ------------------------

    def _on_stdin(self, chunk):
        if chunk:
            self._buffer += chunk
        else:
            self._stdin_done = True

    def _on_data(self, chunk):
        if chunk:
            self._data_buffer += chunk
        else:
            self._data_done = True

    def _on_abort(self, code):
        """The request's input ended with ``code``: ABORT (the web server
        aborted it, or stdin ended short of CONTENT_LENGTH) or CLEN (the
        body passed --max-body).  The next read raises it."""
        self._stdin_done = self._data_done = True
        self._input_error = code
        if code == ABORT:
            self._aborted = True

    def _on_connection_lost(self, code):
        """The connection is over (EOF, IO, SEND, PROTO): the next read
        raises ``code``.  After EOF, IO and SEND nothing can be sent."""
        self._stdin_done = self._data_done = True
        self._input_error = code
        if code in (EOF, IO, SEND):
            self._aborted = self._gone = True

    def _take_buffered_stdin(self):
        """Take the stdin records that came with the params, without
        blocking: nginx sends a GET's empty STDIN record in the same packet,
        and a request known to have no more stdin needs no reading (or
        draining) after its answer."""
        self.connection.poll(False)

    # The file-like views are made when first asked for: most requests never
    # use them, and every request pays for what __init__ builds.

    def _view(self, name, make):
        views = self._views
        if views is None:
            views = self._views = {}
        view = views.get(name)
        if view is None:
            view = views[name] = make()
        return view

    @property
    def stdin(self):
        """File-like stdin (decoded unless set_encoding(None))."""
        return self._view("stdin", lambda: _Stream(self, FCGI_STDIN))

    @property
    def stdout(self):
        """File-like stdout (print_stdout)."""
        return self._view("stdout", lambda: _Stream(self, FCGI_STDOUT))

    @property
    def stderr(self):
        """File-like stderr (print_stderr)."""
        return self._view("stderr", lambda: _Stream(self, FCGI_STDERR))

    @property
    def data(self):
        """FILTER role: the file-like FCGI_DATA stream (bytes)."""
        return self._view("data", lambda: _DataStream(self))

    # -- params ----------------------------------------------------------------

    def param(self, name, default=None):
        """The param ``name``, or ``default``."""
        return self.params.get(name, default)

    @property
    def method(self):
        return self.params.get("REQUEST_METHOD", "GET")

    @property
    def script_name(self):
        return self.params.get("SCRIPT_NAME", "")

    @property
    def path_info(self):
        return self.params.get("PATH_INFO", "")

    @property
    def path(self):
        """SCRIPT_NAME + PATH_INFO, or "/" when both are empty."""
        return (self.script_name + self.path_info) or "/"

    @property
    def query_string(self):
        return self.params.get("QUERY_STRING", "")

    @property
    def protocol(self):
        return self.params.get("SERVER_PROTOCOL", "HTTP/1.0")

    def set_encoding(self, encoding):
        """Text encoding of str read from stdin and printed to stdout/stderr;
        None makes reads return bytes and printing accept bytes only."""
        self.encoding = encoding

    # -- stdin -----------------------------------------------------------------

    def _fill(self):
        """Pull the next stdin chunk into the buffer; False at the end.

        Raises:
            RequestError: the input ended with a code (once; then the end).
        """
        return self._pull(False)

    def _fill_data(self):
        """Pull the next FCGI_DATA chunk (FILTER role); False at the end.
        The rest of stdin is buffered first: the data stream follows it."""
        while self._fill():
            pass
        return self._pull(True)

    def _pull(self, data):
        """Route the connection's events until the stdin (or, with
        ``data``, the FCGI_DATA) buffer grows: True, or False at its end
        (and once the request is finished: what it did not read is
        skipped)."""
        conn = self.connection
        while True:
            if self._input_over(data):
                return False
            size = len(self._data_buffer if data else self._buffer)
            found = conn.route(conn.read_event())
            if found is not None:
                if type(found) is int:
                    self._on_connection_lost(found)
                else:
                    conn._keep_pending(found)       # another request's: the server's
            elif len(self._data_buffer if data else self._buffer) != size:
                return True

    def _input_over(self, data):
        """Before waiting for more stdin (or FCGI_DATA): True at its end, or
        once the request is finished; raises the code that ended it, once."""
        if self._input_error:
            code, self._input_error = self._input_error, 0
            raise RequestError(code)
        return self._finished or (self._data_done if data else self._stdin_done)

    def read_data(self, size=None):
        """FILTER role: read up to ``size`` bytes of the FCGI_DATA stream
        (all of it when None); b"" at the end.  Raises RequestError as
        read_stdin_bytes."""
        if size is None:
            while self._fill_data():
                pass
            size = len(self._data_buffer)
        while len(self._data_buffer) < size and self._fill_data():
            pass
        data = self._data_buffer[:size]
        self._data_buffer = self._data_buffer[size:]
        return data

    def _decode(self, data):
        return data.decode(self.encoding) if self.encoding else data

    def read_stdin_bytes(self, size=None):
        """Read up to ``size`` bytes of stdin (all of it when None), blocking
        until that much arrived or stdin ended.  b"" at the end.

        Raises:
            RequestError: the web server went away or aborted, or the body
                broke a limit (``code`` says which).
        """
        while self._short_of(size) and self._fill():
            pass
        return self._take(size)

    def read_stdin_line_bytes(self, size=None):
        """One line of stdin including its b"\\n" (at most ``size`` bytes)."""
        start = 0
        while self._line_end(start, size) is None:
            start = len(self._buffer)       # searched up to here
            if not self._fill():
                break
        return self._take_line(start, size)

    # The reads' buffer steps, shared with AsyncRequest's awaiting reads.

    def _short_of(self, size):
        """Whether more stdin is wanted for a read of ``size`` (None: all)."""
        return size is None or len(self._buffer) < size

    def _take(self, size):
        if size is None or size >= len(self._buffer):
            data, self._buffer = self._buffer, b""
        else:
            data = self._buffer[:size]
            self._buffer = self._buffer[size:]
        return data

    def _line_end(self, start, size):
        """Where the line ends in the buffer (searched from ``start``), or
        None while more stdin is needed to tell."""
        i = self._buffer.find(b"\n", start)
        if i >= 0:
            return i + 1 if size is None else min(i + 1, size)
        if size is not None and len(self._buffer) >= size:
            return size
        return None

    def _take_line(self, start, size):
        end = self._line_end(start, size)
        return self._take(end if end is not None else size)

    def read_stdin(self, size=None):
        """As read_stdin_bytes, decoded with the request's encoding (str)
        unless set_encoding(None) was called."""
        return self._decode(self.read_stdin_bytes(size))

    def read_stdin_line(self, size=None):
        """One line of stdin, decoded unless set_encoding(None)."""
        return self._decode(self.read_stdin_line_bytes(size))

    def discard_stdin(self):
        """Skip what is left of stdin (and of the FILTER data stream), so the
        connection can carry the next request."""
        self._buffer = b""
        try:
            while self._fill():
                self._buffer = b""
            while self._fill_data():
                self._data_buffer = b""
        except RequestError:
            pass

    # -- output ----------------------------------------------------------------

    def _encode(self, data):
        if isinstance(data, str):
            if not self.encoding:
                raise TypeError("str output needs an encoding (set_encoding)")
            return data.encode(self.encoding)
        return data

    def send(self, data, _last=False):
        """Send already framed bytes; False (and the request is aborted) when
        the web server went away."""
        if self._gone:
            return False
        try:
            if _last:
                self.connection.send_last(data)
            else:
                self.connection.sendall(data)
            return True
        except OSError:
            self._aborted = self._gone = True
            return False

    def print_stdout(self, data):
        """Send ``data`` (str or bytes) in STDOUT records now (dropped once
        the request is aborted)."""
        if self._finished:
            raise RuntimeError("print_stdout() after finish()")
        data = self._encode(data)
        if data and not self._aborted:
            self._stdout_used = True
            if self._stdout_head is None or self._head_open:
                self._see_head(data)
            self.stdout_bytes += len(data)
            self.send(self.connection.writer.stdout(self.request_id, data))

    def _see_head(self, data):
        # stdout's first bytes, kept until the CGI head's end (at most
        # _HEAD_SEEN) for response_status.
        head = self._stdout_head
        seen = bytes(data[:_HEAD_SEEN if head is None else _HEAD_SEEN - len(head)])
        head = seen if head is None else head + seen
        self._stdout_head = head
        self._head_open = len(head) < _HEAD_SEEN and b"\n\n" not in head and \
            b"\r\n\r\n" not in head and head[:1] != b"\n" and head[:2] != b"\r\n"

    def print_stderr(self, data):
        """Send ``data`` (str or bytes) in STDERR records now: it lands in
        the web server's error log."""
        if self._finished:
            raise RuntimeError("print_stderr() after finish()")
        data = self._encode(data)
        if data and not self._aborted:
            self._stderr_used = True
            self.send(self.connection.writer.stderr(self.request_id, data))

    def as_http_request(self):
        """The request as a plain ``HTTPRequest`` (its whole body read)."""
        return HTTPRequest(self, self.read_stdin_bytes())

    def send_http_response(self, status, headers=(), body=b""):
        """Answer with a plain response and finish: ``status`` an int or
        "200 OK", ``headers`` (name, value) str pairs, ``body`` bytes or
        str (encoded with the request's encoding)."""
        status = _status_line(status) if type(status) is int else status
        head = self.connection.writer.head(status, headers)
        if not self._stdout_used:
            self._see_head(head)
        self.finish(0, head + self._encode(body))

    def stdout_with_close(self):
        """A file-like stdout whose close() finishes the request."""
        return _Stream(self, FCGI_STDOUT, close_finishes=True)

    def stream_stdout_then_finish(self, readfn, exit_code=0):
        """Send what ``readfn()`` returns until it returns b"", "" or None
        (or the web server goes away), then finish with ``exit_code``."""
        while not self._aborted:
            data = readfn()
            if not data:
                break
            self.print_stdout(data)
        self.finish(exit_code)

    def send_file(self, fd, offset=0, count=None):
        """Send a file region as STDOUT content via sendfile(2); returns the
        bytes sent (0 if the web server went away)."""
        if self._aborted:
            return 0
        self._stdout_used = True
        sender = self.connection.send_file or send_file
        sent = sender(self.connection.sock, self.request_id, fd, offset, count)
        if sent < 0:
            self._aborted = self._gone = True
            return 0
        self.stdout_bytes += sent
        return sent

    def finish(self, exit_code=0, _tail=b""):
        """End the request: the stream terminators and END_REQUEST with
        ``exit_code`` as the application status (END_REQUEST alone once
        the web server aborted it: spec 5.4).  Idempotent."""
        if self._finished:
            return
        self._finished = True
        conn = self.connection
        writer = conn.writer
        if self._aborted:
            out = writer.end_request(self.request_id, exit_code)
        else:
            out = writer.finish(self.request_id, _tail, app_status=exit_code)
            if self._stderr_used:
                out = writer.end_stderr(self.request_id) + out
            self.stdout_bytes += len(_tail)
        # Without KEEP_CONN, and with the input all read (else the server
        # drains it first), the connection ends here: its last send.
        self.send(out, not self.keep_conn and self._stdin_done and self._data_done)
        # Spec 3.3: the id is inactive once END_REQUEST is sent, and the
        # parser skips the stdin the application left.
        excess = conn.end_request(self.request_id)
        if excess:
            _log_excess(self, excess)

    # -- state, read-only ------------------------------------------------------

    @property
    def finished(self):
        """True once finish() ran (END_REQUEST is sent, or cannot be)."""
        return self._finished

    @property
    def stdin_done(self):
        """True once all of stdin (and the FILTER data) has arrived."""
        return self._stdin_done and self._data_done

    @property
    def stdout_used(self):
        """True once anything was sent on stdout (the head counts)."""
        return self._stdout_used

    @property
    def response_status(self):
        """The status of the CGI head the application sent by
        print_stdout or send_http_response (RFC 3875 6.3.3: its Status
        line, "302 Found" for a Location without one, else "200 OK"), or
        None before a whole head (the web server answers 502 for a head
        that never ends).  Only the head's first 4 KB are looked at."""
        return None if self._head_open else _cgi_status(self._stdout_head)

    @property
    def connection_lost(self):
        """True once the connection can carry nothing more for the request
        (a write failed, or the web server closed it): not even its
        END_REQUEST."""
        return self._gone

    @property
    def unread_error(self):
        """The code that ended the request's input (ABORT, CLEN, PROTO,
        EOF...) if no read raised it yet, else 0."""
        return self._input_error

    @property
    def is_aborted(self):
        """True once the web server aborted the request or went away.

        With stdin read to its end, this also looks at the connection
        without blocking, so an application can notice an abort or a
        closed connection before it writes."""
        if not self._aborted and self._stdin_done and self._data_done:
            self.connection.poll()
        return self._aborted


class HTTPRequest(object):
    """A plain HTTP request, what ``Request.as_http_request()`` gives
    (Net::Async::FastCGI's HTTP::Request): ``method``, ``uri`` (as sent,
    with the query), ``path`` (decoded), ``query_string``, ``protocol``,
    ``headers`` ((lower-case name, value) str pairs) and ``body`` (bytes)."""

    __slots__ = ("method", "uri", "path", "query_string", "protocol", "headers", "body")

    def __init__(self, request, body):
        self.method = request.method
        self.path = request.path
        self.query_string = request.query_string
        self.uri = request.params.get("REQUEST_URI") or (
            self.path + ("?" + self.query_string if self.query_string else ""))
        self.protocol = request.protocol
        self.headers = request_headers(request.params, request.role)
        self.body = body

    def header(self, name, default=None):
        """The first header called ``name`` (any case), or ``default``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def __repr__(self):
        return "<HTTPRequest %s %s, %d body bytes>" % (self.method, self.uri, len(self.body))


# How much of a response's head Request.response_status reads (--raw's status
# in the access log and the status page's counts).
_HEAD_SEEN = 4096


def _cgi_status(head):
    """The status a CGI head gives (see Request.response_status)."""
    if not head:
        return None
    location = False
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break                   # the head's end
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"status":
            status = value.strip()
            # bytes.isdigit: ASCII digits only (the access log makes an int of them)
            return status.decode("latin-1") if status[:3].isdigit() and len(status) >= 3 \
                else None
        location = location or name == b"location"
    return "302 Found" if location else "200 OK"


def _log_excess(request, excess):
    log.warning("request %d %s %s: the web server sent %d body bytes past CONTENT_LENGTH %s; "
                "the application read CONTENT_LENGTH bytes, the rest was dropped",
                request.request_id, request.method, request.params.get("REQUEST_URI", ""),
                excess, request.params.get("CONTENT_LENGTH"))


class Request(_RequestMethods):
    """One FastCGI request.

    Attributes:
        params: dict of the request's params (latin-1 str).
        request_id, role, keep_conn: from FCGI_BEGIN_REQUEST.
        stdin, stdout, stderr: file-like streams.
    """

    __slots__ = ("params", "request_id", "role", "keep_conn", "connection",
                 "encoding", "_buffer", "_stdin_done",
                 "_aborted", "_finished", "_stderr_used", "_stdout_used",
                 "_data_buffer", "_data_done", "stdout_bytes", "_views",
                 "_input_error", "_gone", "_stdout_head", "_head_open")

    def __init__(self, connection, request_id, role, flags, params):
        connection.requests[request_id] = self      # its events come here
        self.connection = connection
        self.request_id = request_id
        self.role = role
        self.keep_conn = bool(flags & FCGI_KEEP_CONN)
        self.params = params
        self.encoding = "utf-8"
        self._buffer = b""          # stdin received but not yet read
        # Spec 6.3: an authorizer gets no stdin (lighttpd sends none, or an
        # empty one the parser skips once the request ends).
        self._stdin_done = role == FCGI_AUTHORIZER
        self._aborted = False       # the web server aborted it, or is gone
        self._finished = False
        self._stderr_used = False
        self._stdout_used = False
        self._stdout_head = None    # the first bytes on stdout (response_status)
        self._head_open = False     # ...and the head's end is not among them yet
        self.stdout_bytes = 0       # body bytes sent (the access log counts them)
        # FILTER role (spec 6.4): the file to filter comes as FCGI_DATA,
        # after stdin.  ``data`` is its file-like view.
        self._data_buffer = b""
        self._data_done = role != FCGI_FILTER
        self._views = None
        self._input_error = 0       # a code the next read raises
        self._gone = False          # the connection is lost: nothing can be sent
        if not self._stdin_done and connection.parser.buffered >= 8:
            if connection.parser.take_stdin_end(request_id):
                self._stdin_done = True     # a GET's empty STDIN, the common case
            else:
                self._take_buffered_stdin()


##############################################################################
# Gateways  ###################################################################
##############################################################################
#
# A gateway runs an application on a Request.  What every gateway does the
# same way, whatever the application's interface, is the policy (Gateway):
# the CGI params as the environ or scope wants them, a limit broken before
# the response answered 413 or 431, an application error answered 500 with
# its traceback in the log, an aborted request ended with END_REQUEST, and
# the access log.  The adapters on top are thin: WSGIGateway (PEP 3333) and
# RawGateway (the Request itself).
#
# PEP 3333 on a Request: the environ is the params as the web server sent
# them (REQUEST_URI, SCRIPT_NAME and PATH_INFO untouched) plus the wsgi.*
# keys.  The common case, a list body, goes out as head + body + terminators
# + END_REQUEST in one send; any other iterable is sent chunk by chunk, each
# chunk before the next is asked for, the head with the first non-empty one.


def _plain_response(status, text):
    body = text.encode("ascii")
    return status, [("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body)))], body


_ERROR_500 = _plain_response("500 Internal Server Error", "Internal Server Error\n")
# What the web server's client gets for a limit broken before the response.
LIMIT_RESPONSES = {
    CLEN: _plain_response("413 Content Too Large", "Request body too large\n"),
    PLEN: _plain_response("431 Request Header Fields Too Large",
                          "Request header fields too large\n"),
}
_LIMIT_REASONS = {
    CLEN: "body over the limit or invalid CONTENT_LENGTH",
    PLEN: "params over the limit",
    ABORT: "aborted by the web server",
}


class Gateway(object):
    """The gateway policy (see the section comment): the adapters derive
    from it.  ``gateway(request)`` runs the application on a Request;
    ``gateway.reject(connection, request_id, code)`` answers a request that
    failed before its params were complete."""

    def __init__(self, app, access_log=False, offload=None):
        self.app = app
        self.access_log = access_log
        self.offload = offload      # an Offload: files the web server sends itself

    def reject(self, conn, request_id, code):
        """Answer a request that failed before its params (ABORT, PLEN,
        CLEN: a Connection.route result) and end it: END_REQUEST alone for
        ABORT (spec 5.4), the 431 or 413 response for a limit.  One log
        line.  Returns False when the connection must close (a limit: the
        web server is still sending what we refused; it is drained)."""
        what = "%s (%d): %s" % (CODE_NAMES.get(code, code), code, _LIMIT_REASONS.get(code, ""))
        writer = conn.writer
        if code in LIMIT_RESPONSES:
            status, headers, body = LIMIT_RESPONSES[code]
            out = writer.response(request_id, status, headers, body)
            log.warning("request %d from %s: %s; answered %s", request_id, conn.peer_text,
                        what, status[:3])
        else:
            out = writer.end_request(request_id, 1)
            log.warning("request %d from %s: %s; ended", request_id, conn.peer_text, what)
        try:
            conn.sendall(out)
        except OSError:
            return False
        conn.end_request(request_id)
        if code in LIMIT_RESPONSES:
            conn.drain = True
            return False
        return conn.parser.keep_conn

    def _request_failed(self, request, head_sent, exc):
        """Reading the request failed: stdin broke a limit, the web server
        aborted the request, or the connection is over."""
        code = exc.code
        if code in LIMIT_RESPONSES and not head_sent:
            log.warning("request %d from %s: %s (%d): %s; answered %s",
                        request.request_id, request.params.get("REMOTE_ADDR", "?"),
                        CODE_NAMES.get(code, code), code, exc,
                        LIMIT_RESPONSES[code][0][:3])
            status, headers, body = LIMIT_RESPONSES[code]
            # The rest of the body is still coming: the connection closes,
            # drained (Server._close).
            request.keep_conn = False
            request.connection.drain = True
            request.finish(0, request.connection.writer.head(status, headers) + body)
            return status
        if code == ABORT and not request.connection_lost:
            # Spec 5.4: the web server aborted the request and waits for its
            # END_REQUEST; the connection serves on.
            log.warning("request %d %s %s: %s (%d): %s; ended", request.request_id,
                        request.method, request.params.get("REQUEST_URI", ""),
                        CODE_NAMES.get(code, code), code, exc)
            request.finish(1)
            return None
        log.warning("request %d %s %s: %s (%d): %s; response cut short",
                    request.request_id, request.method, request.params.get("REQUEST_URI", ""),
                    CODE_NAMES.get(code, code), code, exc)
        request.keep_conn = False
        request.finish(1)
        return None

    def _app_failed(self, request, head_sent):
        """The application raised: 500 with the traceback in the log, or,
        once the head is out, the response cut short (a non-zero app
        status, and the connection closes).  Returns the status sent."""
        log.error("request %d %s %s: application error\n%s", request.request_id,
                  request.method, request.params.get("REQUEST_URI", ""),
                  traceback.format_exc().rstrip())
        if request.finished:
            return None
        if head_sent:
            request.keep_conn = False
            request.finish(1)      # cut short: the web server sees a non-zero status
            return None
        status, headers, body = _ERROR_500
        request.finish(1, request.connection.writer.head(status, headers) + body)
        return status


class Offload(object):
    """``--offload-files``: a file under one of ``maps``' directories is not
    sent by us; the response carries ``header`` instead and the web server
    sends the file itself (no byte of it passes through the worker).

    ``header`` is X-Accel-Redirect (nginx: the value is a URI in an
    ``internal`` location, so each map is DIR=URI-PREFIX), or X-Sendfile /
    X-LIGHTTPD-send-file (Apache's mod_xsendfile, lighttpd: the value is the
    file's path, and each map names a directory the web server may send
    from).  Files elsewhere are sent by sendfile(2) as usual.
    """

    def __init__(self, header, maps):
        from urllib.parse import quote
        self._quote = quote
        self.header = header
        self.by_uri = header.lower() == "x-accel-redirect"
        self.maps = []
        for item in maps:
            directory, _, prefix = item.partition("=")
            if self.by_uri and not prefix:
                raise ValueError("%s needs DIR=URI-PREFIX (the nginx internal location), "
                                 "got %r" % (header, item))
            self.maps.append((os.path.join(os.path.realpath(directory), ""),
                              prefix.rstrip("/") + "/"))
        if not self.maps:
            raise ValueError("--offload-files needs at least one --offload-map DIR[=URI]")

    def value_for(self, path):
        """The header's value that hands ``path`` over, or None (not under
        a mapped directory)."""
        real = os.path.realpath(path)
        for directory, prefix in self.maps:
            if real.startswith(directory):
                if self.by_uri:
                    return prefix + self._quote(real[len(directory):])
                return real
        return None

    def head(self, writer, status, headers, path):
        """The response head that hands ``path`` over: the application's
        headers without its Content-Length (the web server sets its own),
        plus the header; None when ``path`` is not for the web server."""
        value = self.value_for(path)
        if value is None:
            return None
        log.debug("offloaded to the web server: %s (%s: %s)", path, self.header, value)
        return writer.head(status, [(name, v) for name, v in headers
                                    if name.lower() != "content-length"]
                           + [(self.header, value)])


class FileWrapper(object):
    """wsgi.file_wrapper: a real file is sent with sendfile(2) inside STDOUT
    records; anything else is read in blocks."""

    def __init__(self, filelike, block_size=65536):
        self.filelike = filelike
        self.block_size = block_size
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.block_size)
        if data:
            return data
        raise StopIteration

    def fileno(self):
        """The file descriptor to sendfile from, or None."""
        try:
            fd = self.filelike.fileno()
            os.fstat(fd)
            return fd
        except (AttributeError, OSError, ValueError):
            return None


_ENVIRON_REQUIRED = frozenset(("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING"))


class ErrorStream(_LineWriter):
    """wsgi.errors: text written here goes out as FCGI_STDERR, so it lands in
    the web server's error log next to the request."""

    __slots__ = ("_request",)

    def __init__(self, request):
        self._request = request

    def write(self, text):
        data = text.encode("utf-8", "backslashreplace") if isinstance(text, str) else text
        if not self._request.finished:
            self._request.print_stderr(data)
        return len(text)



class InputStream(_LineReader):
    """wsgi.input: the request's stdin, streamed (bytes)."""

    __slots__ = ("_request",)

    def __init__(self, request):
        self._request = request

    def read(self, size=-1):
        return self._request.read_stdin_bytes(None if size is None or size < 0 else size)

    def readline(self, size=-1):
        return self._request.read_stdin_line_bytes(None if size is None or size < 0 else size)



class _Response(object):
    """The state start_response and write() share for one request."""

    __slots__ = ("request", "status", "headers", "head_bytes", "head_sent", "head_only")

    def __init__(self, request, head_only):
        self.request = request
        self.status = None
        self.headers = None
        self.head_bytes = None
        self.head_sent = False
        self.head_only = head_only

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None     # no reference cycle through the frame
        elif self.status is not None:
            raise RuntimeError("start_response() called again without exc_info")
        # Built (and so validated) now, so a bad head fails inside the
        # application's call.
        self.head_bytes = self.request.connection.writer.head(status, headers)
        self.status = status
        self.headers = headers
        return self.write

    def head(self):
        if self.status is None:
            raise RuntimeError("the application sent a body before start_response()")
        self.head_sent = True
        return self.head_bytes

    def write(self, data):
        """PEP 3333's write() callable: sends at once."""
        if type(data) is not bytes:
            raise TypeError("write() takes bytes, not %s" % type(data).__name__)
        request = self.request
        if not self.head_sent:
            request.print_stdout(self.head())
        if data and not self.head_only:
            request.print_stdout(data)


def _wsgi_environ(constant_keys, request):
    """The PEP 3333 environ of ``request``: the params as sent, plus
    ``constant_keys`` (the wsgi.* keys that never change) and the rest.

    Two params are moved, not copied: nginx forwards every header as HTTP_*,
    but RFC 3875 4.1.18 and PEP 3333 want Content-Type and Content-Length
    only as CONTENT_TYPE and CONTENT_LENGTH.
    """
    env = request.params.copy()
    if "HTTP_CONTENT_TYPE" in env:
        value = env.pop("HTTP_CONTENT_TYPE")
        env.setdefault("CONTENT_TYPE", value)
    if "HTTP_CONTENT_LENGTH" in env:
        value = env.pop("HTTP_CONTENT_LENGTH")
        if request.role != FCGI_AUTHORIZER:     # an authorizer gets no body
            env.setdefault("CONTENT_LENGTH", value)
    if env.get("CONTENT_LENGTH") == "-1":
        env["CONTENT_LENGTH"] = ""      # Caddy's "unknown": the stream has the end
    https = env.get("HTTPS")
    secure = (https is not None and https.lower() in ("on", "1")) or \
        env.get("REQUEST_SCHEME") == "https"
    env.update(constant_keys)
    env["wsgi.url_scheme"] = "https" if secure else "http"
    env["wsgi.input"] = InputStream(request)
    env["wsgi.errors"] = ErrorStream(request)
    env["fastcgi.request"] = request
    role = request.role
    if role == FCGI_RESPONDER:
        env["fastcgi.role"] = "RESPONDER"
    else:
        env["fastcgi.role"] = ROLE_NAMES.get(role, str(role))
        if role == FCGI_FILTER:
            env["fastcgi.data"] = request.data
    if not env.keys() >= _ENVIRON_REQUIRED:     # PEP 3333 wants them, maybe empty
        for key in _ENVIRON_REQUIRED:
            env.setdefault(key, "")
    return env


def request_headers(params, role=FCGI_RESPONDER):
    """The HTTP request headers the web server forwarded, from the params:
    (lower-case name, value) str pairs, the HTTP_* params and then
    content-type and content-length once each (nginx sends both the CGI and
    the HTTP_ copy; RFC 3875 4.1.18 wants the CGI one)."""
    return [(name.decode("latin-1"), value.decode("latin-1"))
            for name, value in _asgi_headers(params, role)]


def _send_list(request, response, result):
    """The common answer: a list body goes out with its head, the stream's
    end and END_REQUEST in one send.  True once sent; False (nothing done)
    when ``result`` is not a list or the head is already out."""
    if type(result) is not list or response.head_sent:
        return False
    body = b"".join(result) if len(result) != 1 else result[0]
    if type(body) is not bytes:
        raise TypeError("the application returned non-bytes in its body")
    if response.status is None:
        raise RuntimeError("the application returned before start_response()")
    head = response.head()
    if response.head_only:
        body = b""
    request.finish(0, head + body)
    return True


class WSGIGateway(Gateway):
    """Runs a WSGI application on a Request (``gateway(request)``).

    ``core`` is the module whose hot steps run it (the environ, the response
    object, the common answer): fastfcgi_py's own by default; ``fastfcgi``
    gives the compiled ones, its WSGIGateway too.
    """

    multiprocess = True
    multithread = False
    core = None

    def __init__(self, app, access_log=False, core=None, offload=None):
        Gateway.__init__(self, app, access_log, offload)
        core = core or self.core or sys.modules[__name__]
        self.core = core
        self.response_class = core._Response
        self._make_environ = core._wsgi_environ
        self._send_list = core._send_list
        # The keys that are the same for every request, added in one update.
        self._constant_keys = {
            "wsgi.version": (1, 0), "wsgi.input_terminated": True,
            "wsgi.multithread": self.multithread, "wsgi.multiprocess": self.multiprocess,
            "wsgi.run_once": False, "wsgi.file_wrapper": FileWrapper}

    def environ(self, request):
        """The PEP 3333 environ: the params as sent, plus the wsgi.* keys
        (see ``_wsgi_environ``)."""
        return self._make_environ(self._constant_keys, request)

    def __call__(self, request):
        env = self._make_environ(self._constant_keys, request)
        response = self.response_class(request, env.get("REQUEST_METHOD") == "HEAD")
        result = None
        try:
            result = self.app(env, response.start_response)
            if not self._send_list(request, response, result):
                self._send(request, response, result)
        except RequestError as exc:
            response.status = self._request_failed(request, response.head_sent, exc) \
                or response.status
        except Exception:
            response.status = self._app_failed(request, response.head_sent) or response.status
        finally:
            # PEP 3333: the iterable's close(), if it has one (a list has
            # none: asking costs an AttributeError).
            if type(result) is not list and result is not None and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    self._app_failed(request, response.head_sent)
        return response.status

    def _send(self, request, response, result):
        """Any body but the common case (or the common case the core's
        _send_list left to this module's)."""
        if _send_list(request, response, result):
            return
        if isinstance(result, FileWrapper) and not response.head_only:
            if self.offload is not None and not response.head_sent and self._offload(
                    request, response, result):
                return
            fd = result.fileno()
            if fd is not None:
                self._send_file(request, response, result, fd)
                return
        for chunk in result:
            if type(chunk) is not bytes:
                raise TypeError("the application yielded %s, not bytes" % type(chunk).__name__)
            if chunk:
                if request.is_aborted:
                    raise _gone_error(request)
                if not response.head_sent:
                    request.print_stdout(response.head())
                if not response.head_only:
                    request.print_stdout(chunk)
            if response.head_only and response.head_sent:
                break
        if request.is_aborted and not request.finished:
            raise _gone_error(request)
        tail = b"" if response.head_sent else response.head()
        request.finish(0, tail)

    def _offload(self, request, response, wrapper):
        """--offload-files: a whole real file under a mapped directory goes
        as the header alone.  True once answered."""
        path = getattr(wrapper.filelike, "name", None)
        if not isinstance(path, str) or wrapper.fileno() is None:
            return False
        try:
            if wrapper.filelike.tell() != 0:
                return False        # a part of the file: sent by us
        except (AttributeError, OSError):
            return False
        head = self.offload.head(request.connection.writer, response.status,
                                 response.headers, path)
        if head is None:
            return False
        response.head_sent = True
        request.finish(0, head)
        return True

    def _send_file(self, request, response, wrapper, fd):
        if not response.head_sent:
            request.print_stdout(response.head())
        try:
            offset = wrapper.filelike.tell()
        except (AttributeError, OSError):
            offset = 0
        count = None
        for name, value in response.headers:
            if name.lower() == "content-length" and value.isdigit():
                count = int(value)
        request.send_file(fd, offset, count)
        if request.is_aborted:
            raise _gone_error(request)
        request.finish(0)


def authorizer(check):
    """Build a WSGI application for the AUTHORIZER role (spec 6.3) from
    ``check(environ)``.

    The convention (lighttpd's and the spec's): a 200 answer lets the
    request through, and each ``Variable-NAME: value`` header becomes the
    param NAME of the request the responder then gets; any other answer goes
    to the client as it is.  ``check`` returns:

        True, or a dict {NAME: value}   grant (with those variables)
        False or None                   deny with 403 Forbidden
        (status, headers, body)         deny with that response

    The same application also answers as a RESPONDER (environ
    ``fastcgi.role``), so it can be tried without an authorizing server.
    """
    def authorizer_app(environ, start_response):
        result = check(environ)
        if result is True or isinstance(result, dict):
            variables = result if isinstance(result, dict) else {}
            start_response("200 OK", [("Variable-" + name, str(value))
                                      for name, value in variables.items()]
                           + [("Content-Type", "text/plain"), ("Content-Length", "0")])
            return [b""]
        if not result:
            status, headers, body = _plain_response("403 Forbidden", "Forbidden\n")
        else:
            status, headers, body = result
        start_response(status, list(headers))
        return [body]
    return authorizer_app


def _gone_error(request):
    """The RequestError for an application still answering an aborted
    request: ABORT, or SEND once the connection is lost."""
    if request.connection_lost:
        return RequestError(SEND, "the web server went away")
    return RequestError(ABORT, "the web server aborted the request")


class RawGateway(Gateway):
    """``--raw``: the application is called with the Request itself and
    must finish it (it is finished with exit code 0 if it returns without)."""

    def __call__(self, request):
        try:
            self.app(request)
        except Exception as exc:
            return self._end(request, exc)
        return self._end(request)

    def _end(self, request, exc=None):
        """After the application (AsyncRawGateway's too): a failure
        answered by the policy (called in the ``except``: the traceback is
        logged), and the request finished."""
        status = None
        if isinstance(exc, RequestError):
            status = self._request_failed(request, request.stdout_used, exc)
        elif exc is not None:
            status = self._app_failed(request, request.stdout_used)
        if not request.finished:
            request.finish(0)
        if exc is None and not request._aborted:
            status = request.response_status    # for the access log and the metrics
        return status


##############################################################################
# Servers  ####################################################################
##############################################################################
#
# A Server is what runs in a worker: it owns the listening socket's accept
# loop and the connections it accepted.  It serves one request at a time;
# between requests it waits, in one poller, on the listener, on its kept
# (KEEP_CONN) connections and on a wake-up pipe that signals write to, so an
# idle kept connection never blocks new ones and a signal acts at once.
# Signals never raise into the request: they only set flags.

_CODE_REASONS = {
    EOF: "the web server closed the connection mid-request",
    IO: "read error",
    PROTO: "FastCGI protocol violation",
    PLEN: "params over the limit",
    CLEN: "body over the limit or invalid CONTENT_LENGTH",
    ABORT: "request aborted by the web server",
    SEND: "write error: the web server went away",
}
# Python 3.12's eager tasks (asyncio.Task(eager_start=True)) start a
# request's coroutine at once (AsyncServer._start).
_EAGER_TASKS = sys.version_info >= (3, 12)
# A request's task is named (names came with 3.8): it says what it is in
# asyncio.all_tasks() and a task's repr, and before 3.12 a task made
# without a name formats "Task-N" at once (1.1k instructions of a
# request's 70k under callgrind, on 3.11).
_TASK_NAME = {"name": "fastfcgi request"} if sys.version_info >= (3, 8) else {}
# Kept connections one worker holds open at most; past it the least
# recently used is closed (nginx then opens a new one).
MAX_KEPT_CONNECTIONS = 64
# How long a stopping worker still answers requests on its kept
# connections (see Server._linger).
KEPT_LINGER = 1.0
# A stopping pool serves its listen queue until no connection came for
# this long (see Server._finish_backlog).
BACKLOG_SETTLE = 0.3
# What follows the last answer on a kept connection a stopping worker
# closes: an empty FCGI_GET_VALUES_RESULT (a management record, spec 4.1).
# Sent with END_REQUEST in one write, it tells the web server not to reuse
# the connection: nginx keeps an upstream connection only when END_REQUEST
# ends what it read, and the close alone comes too late once it has put
# the connection back in its cache and sent the next request on it (a
# reset, and a failed POST: nginx retries no POST it has sent).
RETIRE_RECORD = b"\x01\x0a\x00\x00\x00\x00\x00\x00"
# After answering a request whose body was not read, we read and drop what
# the web server still sends (so it never sees a reset before our reply), up
# to this long.
_DRAIN_SECONDS = 2.0
# Connections accepted in a row before the worker looks at its others.
ACCEPT_BATCH = 16
# A TCP connection that sends nothing waits this long in the kernel before
# accept() sees it (see tune_listener; Linux rounds it up to its SYN-ACK
# retransmission times).  The web server sends its request at once.
DEFER_ACCEPT_SECONDS = 5


class _Draining(object):
    """A half-closed connection whose unread input is being dropped."""

    __slots__ = ("sock", "deadline")

    def __init__(self, sock, deadline):
        self.sock = sock
        self.deadline = deadline


class _Poller(object):
    """The fds a worker waits on, all for reading: ``register(fd)``,
    ``unregister(fd)``, and ``poll(timeout)``, the list of (fd, events)
    ready.  It is epoll itself where there is one: ``selectors`` makes a
    key and a tuple per ready fd, which cost a kept request a quarter of a
    microsecond.  Elsewhere (BSD, macOS) it is ``selectors``."""

    __slots__ = ("_epoll", "_selector", "_count")

    def __init__(self):
        self._count = 0             # registered fds: epoll's maxevents
        epoll = getattr(select, "epoll", None)
        self._epoll = epoll() if epoll is not None else None
        if self._epoll is None:
            import selectors
            self._selector = selectors.DefaultSelector()

    def register(self, fd):
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        else:
            self._selector.register(fd, 1)      # 1: selectors.EVENT_READ
        self._count += 1

    def unregister(self, fd):
        """Stop watching ``fd``; KeyError if it is not watched."""
        if self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                raise KeyError(fd)
        else:
            self._selector.unregister(fd)
        self._count -= 1

    def poll(self, timeout):
        if self._epoll is not None:
            return self._epoll.poll(timeout, self._count or 1)
        return [(key.fd, events) for key, events in self._selector.select(timeout)]

    def close(self):
        (self._epoll or self._selector).close()


def parse_address(text):
    """Parse ``HOST:PORT``, ``[V6ADDR]:PORT``, ``unix:/PATH`` or ``/PATH``.

    Returns:
        (family, address) for socket.bind.
    Raises:
        ValueError: not one of those forms.
    """
    if text.startswith("unix:"):
        return socket.AF_UNIX, text[5:]
    if text.startswith("/") or text.startswith("./"):
        return socket.AF_UNIX, text
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("bad address %r: use [V6ADDR]:PORT" % text)
        family = socket.AF_INET6
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError("bad address %r: use HOST:PORT, [V6]:PORT or unix:/PATH" % text)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("bad port in address %r" % text)
    return family, (host or "0.0.0.0", int(port))


def format_address(family, address):
    if family == socket.AF_UNIX:
        return "unix:" + (address if isinstance(address, str) else repr(address))
    if family == socket.AF_INET6:
        return "[%s]:%d" % address[:2]
    return "%s:%d" % address[:2]


def bind_listener(text, backlog=1024, socket_mode=None, tune=False):
    """Bind and listen on the address ``text`` (see parse_address).

    A stale unix socket (nobody accepting) is replaced; a live one is an
    error.  ``socket_mode`` (int) is applied to a unix socket's file.
    ``tune``: a TCP listener gets tune_listener()'s options before
    listen(), so every connection inherits them (a web server's listener:
    it speaks first).
    """
    family, address = parse_address(text)
    if family == socket.AF_UNIX:
        if os.path.exists(address):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(address)
            except OSError:
                os.unlink(address)      # stale: left by a server that died
            else:
                raise OSError(errno.EADDRINUSE, "%s: another server is listening" % address)
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077) if socket_mode is not None else None
        try:
            sock.bind(address)
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if socket_mode is not None:
            os.chmod(address, socket_mode)
    else:
        if family == socket.AF_INET and not address[0][:1].isdigit():
            family = socket.getaddrinfo(address[0], address[1], 0, socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        if tune:
            # Before listen(): every connection the kernel accepts, even
            # before a worker runs, inherits TCP_NODELAY (without it a
            # response's last record waits for the web server's delayed
            # ACK: 40 ms).
            tune_listener(sock)
    sock.listen(backlog)
    return sock


def inherited_listener():
    """The listening socket we were handed, or None: our own re-exec
    (FASTFCGI_LISTEN_FD), systemd socket activation (LISTEN_FDS/LISTEN_PID),
    or a web server that spawned us with it on fd 0 (FCGI_LISTENSOCK_FILENO,
    spec 2.2)."""
    fd = None
    if os.environ.get("FASTFCGI_LISTEN_FD", "").isdigit():
        fd = int(os.environ.pop("FASTFCGI_LISTEN_FD"))
    elif (os.environ.get("LISTEN_PID") == str(os.getpid())
          and os.environ.get("LISTEN_FDS", "0").isdigit() and int(os.environ["LISTEN_FDS"]) >= 1):
        fd = 3
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    else:
        try:
            import stat
            if not stat.S_ISSOCK(os.fstat(0).st_mode):
                return None
        except OSError:
            return None
        fd = 0
    sock = socket.socket(fileno=fd)
    if sys.version_info < (3, 7) and hasattr(socket, "SO_DOMAIN"):
        # 3.6 does not ask the descriptor its family (a unix socket would be
        # taken for AF_INET): ask it ourselves.
        family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        sock.detach()
        sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if not listening:
        sock.detach()
        return None
    if fd == 0:
        # Keep fd 0 from being a socket for the application: move it.
        new = sock.dup()
        sock.detach()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        sock = new
    return sock


def parse_allow(text):
    """``--allow`` / FCGI_WEB_SERVER_ADDRS: comma-separated addresses or
    networks.  Returns a list of ip_network, or None for "anyone"."""
    if not text:
        return None
    import ipaddress
    return [ipaddress.ip_network(part.strip(), strict=False)
            for part in text.replace(" ", ",").split(",") if part.strip()]


def tune_listener(listener):
    """Set, once, the options a TCP listener passes on to the connections
    it accepts (Linux): TCP_NODELAY, and TCP_DEFER_ACCEPT, so a connection
    reaches accept() only once its first bytes are in (in FastCGI the web
    server speaks first).  That spares the worker a wake-up per connection
    (one for the connection, one for its request) and keeps a peer that
    connects and says nothing in the kernel for DEFER_ACCEPT_SECONDS rather
    than in a worker's recv().  True if accepted connections inherit
    TCP_NODELAY, so accepting need not set it on each."""
    if listener.family not in (socket.AF_INET, socket.AF_INET6) or \
            not sys.platform.startswith("linux"):
        return False
    try:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    try:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_SECONDS)
    except (OSError, AttributeError):
        pass                # an optimisation: serve without it
    return True


# A classic BPF socket filter that drops a TCP segment with SYN set and ACK
# clear (a new connection's first packet), and passes every other; a
# socket filter sees the TCP header at offset 0.  (code, jt, jf, k)
_DROP_NEW_SYNS = ((0x30, 0, 0, 13),             # ldb [13]: the flags
                  (0x54, 0, 0, 0x12),           # and #(SYN|ACK)
                  (0x15, 0, 1, 0x02),           # jeq #SYN: drop, else pass
                  (0x06, 0, 0, 0),              # ret #0
                  (0x06, 0, 0, 0xFFFFFFFF))     # ret #all
_SO_ATTACH_FILTER = 26      # Linux


def close_the_door(listener, unix_path=None):
    """Stopping gracefully: no new connection reaches ``listener``, and
    those already in its listen queue stay, to be served (a balancer
    never retries a request it has sent: a reset would fail it).

    A unix socket's path is removed, so the next connect fails at once
    and a balancer moves on to another host.  A TCP listener (Linux) gets
    a socket filter that drops new SYNs: a new connect waits, then meets
    the closed port (refused) once every process has closed the listener,
    while connections half-way through their handshake still complete.
    Returns (closed, what was done for the log): when the door could not
    be closed, the listen queue would never run dry under load, so the
    caller stops accepting at once instead.  Only for a listener this
    process bound: an inherited one's owner (systemd) keeps what waits."""
    if unix_path:
        try:
            os.unlink(unix_path)
        except OSError:
            pass
        return True, "removed %s" % unix_path
    if listener.family not in (socket.AF_INET, socket.AF_INET6) or \
            not sys.platform.startswith("linux"):
        return False, "no way to refuse new connections only"
    import ctypes
    program = b"".join(struct.pack("HBBI", *op) for op in _DROP_NEW_SYNS)
    code = ctypes.create_string_buffer(program, len(program))
    try:
        # struct sock_fprog: the length, then a pointer; the kernel copies it.
        listener.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER,
                            struct.pack("HP", len(_DROP_NEW_SYNS), ctypes.addressof(code)))
    except OSError as exc:
        return False, "cannot drop new connections (%s)" % exc
    return True, "new connections dropped"


def peer_allowed(allow, peer):
    """Is ``peer`` (an accept() address) in ``allow``?  Unix peers are."""
    if allow is None or not isinstance(peer, tuple):
        return True
    import ipaddress
    ip = ipaddress.ip_address(peer[0].split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in allow)


# intercept()'s answer to the status and ping paths: served, not counted.
_NOT_COUNTED = object()


##############################################################################
# The access log: one line per request, written by the server after the
# request (so every gateway's requests are logged the same way).  The
# default line goes through the logger, as it always did; a named format
# or JSON lines are written as they are, to --access-log-file or stderr,
# with one write(2) each (O_APPEND: workers never interleave a line).

# The fields of --access-log-format, and of a JSON line.
ACCESS_LOG_FIELDS = {
    "time": "when the request began, ISO 8601 with the UTC offset",
    "client": "REMOTE_ADDR",
    "method": "REQUEST_METHOD",
    "uri": "REQUEST_URI (else SCRIPT_NAME + PATH_INFO)",
    "protocol": "SERVER_PROTOCOL",
    "host": "the Host header",
    "status": "the response's status code (- if none was sent)",
    "bytes": "response bytes sent (head and body)",
    "duration_ms": "from the request's params to its end, milliseconds",
    "queue_ms": "the wait before a worker took it, from X-Request-Start (- without)",
    "cpu_ms": "the worker's CPU time during the request (- in an asyncio worker, "
              "whose requests interleave)",
    "rss_kb": "the worker's resident memory after the request, KiB",
    "rss_growth_kb": "how much it grew during the request, KiB",
    "pid": "the worker's process id",
    "request_id": "the FastCGI request id",
    "referer": "the Referer header",
    "user_agent": "the User-Agent header",
}
ACCESS_LOG_COMMON = '{client} "{method} {uri} {protocol}" {status} {bytes} {duration_ms}ms'
_PARAM_FIELDS = {"client": "REMOTE_ADDR", "method": "REQUEST_METHOD",
                 "protocol": "SERVER_PROTOCOL", "host": "HTTP_HOST", "referer": "HTTP_REFERER",
                 "user_agent": "HTTP_USER_AGENT"}


def _log_safe(text):
    """A field for a text line: quotes, backslashes and control characters
    escaped as nginx does (\\xHH), so a request cannot forge a line."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c not in '"\\' else
                   "\\x%02X" % ord(c) if ord(c) < 256 else c.encode("unicode_escape").decode()
                   for c in text)


class _Statm(object):
    """The process's resident memory, read from /proc/self/statm through
    a kept descriptor (one pread); where there is none, the peak RSS."""

    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def __init__(self):
        self.pid = self.fd = None

    def rss(self):
        """Bytes resident now, in this process (the descriptor is opened
        in the process that reads: /proc/self is the opener's, and a
        worker inherits its supervisor's objects)."""
        if self.pid != os.getpid():
            if self.fd is not None:
                os.close(self.fd)
            self.pid = os.getpid()
            try:
                self.fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.fd = None
        if self.fd is not None:
            return int(os.pread(self.fd, 128, 0).split()[1]) * self.page
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak * (1 if sys.platform == "darwin" else 1024)


class AccessLog(object):
    """The access log.  ``format``: "common" (the default line, through
    the ``fastfcgi`` logger), "json" (a JSON object per line, every field),
    or a template of ``{field}`` names (ACCESS_LOG_FIELDS).  ``path``: a
    file the lines are appended to (reopened by reopen(), for logrotate's
    SIGUSR1); without one, a named format or JSON goes to stderr.

    A server calls begin() as a request starts and write() after it; the
    CPU and memory fields cost a system call each, and are read only when
    the format names them."""

    def __init__(self, format="common", path=None, status_requests=False):
        import string
        self.format = format
        self.status_requests = status_requests  # the status and ping paths' too
        self.json = format == "json"
        template = ACCESS_LOG_COMMON if format == "common" else format
        if self.json:
            self.fields = tuple(ACCESS_LOG_FIELDS)
        else:
            self.fields = tuple(name for _, name, spec, conv in string.Formatter().parse(template)
                                if name is not None)
            unknown = sorted(set(self.fields) - set(ACCESS_LOG_FIELDS))
            if unknown or any(not name for name in self.fields):
                raise ValueError("unknown field(s) %s; the fields are: %s" % (
                    ", ".join("{%s}" % n for n in unknown) or "{}", ", ".join(ACCESS_LOG_FIELDS)))
            if any(spec or conv for _, name, spec, conv in string.Formatter().parse(template)
                   if name is not None):
                # A field may be "-": {queue_ms:.1f} would fail on a request.
                raise ValueError("fields take no format spec or conversion ({name:...}, "
                                 "{name!r}): write {name}")
        self.template = template
        self.cpu = "cpu_ms" in self.fields
        self.memory = "rss_kb" in self.fields or "rss_growth_kb" in self.fields
        self.statm = _Statm() if self.memory else None
        self.path = path
        self.to_logger = format == "common" and path is None
        self.fd = 2
        self.reopen_wanted = False
        self.failed_logged = 0.0        # write errors: one warning a minute
        if path is not None:
            self.fd = self._open()

    def _open(self):
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def reopen(self):
        """Open the file again before the next line (signal-safe: sets a
        flag): logrotate has moved it away and sent SIGUSR1."""
        self.reopen_wanted = self.path is not None

    def reopen_now(self):
        """Open the file again now (not in a signal handler).  If it
        cannot be, the lines go on to the old one, with a warning."""
        self.reopen_wanted = False
        if self.path is None:
            return
        try:
            fd = self._open()
        except OSError as exc:
            log.warning("access log: cannot reopen %s (%s): writing on to the old file",
                        self.path, exc)
            return
        os.dup2(fd, self.fd)        # the old name's descriptor now writes the new file
        os.close(fd)

    def begin(self):
        """What write() needs of the request's start."""
        return (time.time(), time.monotonic(), time.process_time() if self.cpu else 0.0,
                self.statm.rss() if self.memory else 0)

    def cost(self, began, concurrent=False):
        """(CPU seconds or None, RSS bytes or None) since ``began``."""
        cpu = None if concurrent or not self.cpu else time.process_time() - began[2]
        return cpu, self.statm.rss() if self.memory else None

    def values(self, request, status, began, cpu=None, rss=None):
        """The fields of a request, by name."""
        params = request.params
        wall, mono, _, rss_before = began
        values = {}
        for name in self.fields:
            if name in _PARAM_FIELDS:
                value = params.get(_PARAM_FIELDS[name]) or "-"
            elif name == "uri":
                value = params.get("REQUEST_URI") or params.get("SCRIPT_NAME", "") + \
                    params.get("PATH_INFO", "") or "-"
            elif name == "status":
                value = int(status[:3]) if isinstance(status, str) and status[:3].isdigit() \
                    else status if isinstance(status, int) else None
            elif name == "time":
                value = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(wall)) + \
                    ".%03d" % (wall % 1 * 1000) + _utc_offset(wall)
            elif name == "bytes":
                value = request.stdout_bytes
            elif name == "duration_ms":
                value = round((time.monotonic() - mono) * 1000, 3)
            elif name == "queue_ms":
                wait = _queue_wait_of(request)
                value = None if wait is None else round(wait * 1000, 3)
            elif name == "cpu_ms":
                value = None if cpu is None else round(cpu * 1000, 3)
            elif name == "rss_kb":
                value = None if rss is None else rss // 1024
            elif name == "rss_growth_kb":
                value = None if rss is None else (rss - rss_before) // 1024
            elif name == "pid":
                value = os.getpid()
            else:
                value = request.request_id
            values[name] = value
        return values

    def write(self, request, status, began, cpu=None, rss=None):
        """Log one request (``status``: what the server answered)."""
        values = self.values(request, status, began, cpu, rss)
        if self.json:
            import json
            # ASCII: a U+2028 in a URI must not split the line for a reader.
            line = json.dumps(values, separators=(",", ":"))
        else:
            for name, value in values.items():
                values[name] = "-" if value is None else _log_safe(value) \
                    if isinstance(value, str) else value
            if self.to_logger:
                values["duration_ms"] = "%.1f" % values["duration_ms"]
                log.info("%s", self.template.format(**values))
                return
            line = self.template.format(**values)
        if self.reopen_wanted:
            self.reopen_now()
        data = (line + "\n").encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as exc:
            now = time.monotonic()
            if now - self.failed_logged >= 60:      # a full disk: not a line a request
                self.failed_logged = now
                log.warning("access log: cannot write %s: %s", self.path or "stderr", exc)


def _utc_offset(wall):
    offset = time.localtime(wall).tm_gmtoff or 0
    sign = "+" if offset >= 0 else "-"
    return "%s%02d:%02d" % (sign, abs(offset) // 3600, abs(offset) % 3600 // 60)


class _Extras(object):
    """What a server does around a request besides serving it: before,
    --max-queue-wait and the --status-path and --ping-path answers; after,
    the access log and --max-rss.  One attribute on the server (see
    _ServerBase._configure)."""

    __slots__ = ("status_paths", "max_queue_wait", "dropped", "dropped_logged", "access_log",
                 "max_rss", "statm", "answered")

    def __init__(self, status_path, ping_path, max_queue_wait, access_log, max_rss):
        self.status_paths = (status_path, ping_path) if status_path or ping_path else None
        self.max_queue_wait = max_queue_wait
        self.dropped = 0            # 503s for --max-queue-wait not logged yet
        self.dropped_logged = 0.0
        self.access_log = access_log
        self.max_rss = max_rss      # bytes, or 0
        self.statm = _Statm() if max_rss else None
        self.answered = None        # the status line of the last status or ping answer


class _ServerBase(object):
    """What both servers (Server, AsyncServer) take: the core and the
    limits (see Server)."""

    core = None

    def _pool_serves_on(self):
        """Whether this worker stops alone (a reload, a recycle, a
        scale-down), not with its pool."""
        return self.board is None or self.board.board.state() != "stopping"

    def retire(self, request, hand_over=True):
        """The worker stops: ``request``'s kept connection closes after its
        answer, which carries RETIRE_RECORD.  Only in the same send as its
        END_REQUEST (Connection.send_last): alone, it could reach nginx
        after nginx sent the next request, as that request's answer.
        While the pool serves on, the connection goes to another worker
        instead, once idle (see Handover), unless not ``hand_over`` (see
        Server.handle)."""
        if hand_over and self._handover is not None and self._pool_serves_on():
            return
        request.keep_conn = False
        request.connection.retiring = True

    def _configure(self, gateway, listener, core, max_body, max_param_size, max_params_size,
                   allow, max_requests, max_conns, workers, board, status_path, ping_path,
                   max_queue_wait, access_log, max_rss):
        core = core or self.core or sys.modules[__name__]
        self.core = core
        self.parser_class = core.Parser
        self.writer_class = core.Writer
        self.gateway = gateway
        self.listener = listener
        self.max_body = max_body
        self.max_param_size = max_param_size
        self.max_params_size = max_params_size
        self.allow = allow
        self.max_requests = max_requests
        self.max_conns = max_conns      # per worker, enforced
        self.workers = workers          # FCGI_MAX_CONNS says max_conns * workers
        # The worker's scoreboard row (a WorkerRow, see Status): busy_slot
        # marks it busy since a time, or idle with 0.0 (--timeout reads it).
        if board is not None and type(board) is not core.WorkerRow:
            board = core.WorkerRow(board.board, board.slot)     # the core's twin
        self.board = board
        self.busy_slot = board.busy if board is not None else None
        # What is done around a request besides serving it, or None.  One
        # attribute for it all: past 30 attributes CPython 3.11 stops
        # sharing an instance dict's keys, and every self.x on the request
        # path costs more (1k instructions a request, under callgrind).
        if access_log is None:
            access_log = getattr(gateway, "access_log", None)   # Gateway(app, access_log=True)
        if access_log is True:
            access_log = AccessLog()
        access_log = access_log or None
        self.extras = None
        if status_path or ping_path or max_queue_wait or access_log or max_rss:
            self.extras = _Extras(status_path, ping_path, max_queue_wait, access_log, max_rss)
        self.writer = self.writer_class()
        self.alive = True
        # Stopping with the pool (not a reload, nor a retirement): serve
        # the listen queue first (see Server._finish_backlog).
        self.drain_backlog = False
        self.served = 0

    def intercept(self, request, waited=None):
        """What is answered before the application, or False: a request
        that waited past --max-queue-wait gets 503 at once (its client
        has likely given up); then the status and ping paths.  ``waited``
        is the queue wait the scoreboard row counted (WorkerRow.began);
        without a row it is read here."""
        config = self.extras
        if config.max_queue_wait:
            if waited is None and self.board is None:
                waited = _queue_wait_of(request)
            if waited is not None and waited > config.max_queue_wait:
                return self._queued_too_long(request, waited)
        if config.status_paths is not None and self.answer_status(request):
            return _NOT_COUNTED
        return False

    def after(self, request, status, began, concurrent=False):
        """After a request: its access log line (``began``: the access
        log's begin()), its CPU and memory on the scoreboard row, and
        --max-rss: a worker grown past it finishes what it runs and exits
        (the supervisor starts a new one)."""
        extras = self.extras
        access_log = extras.access_log
        cpu = rss = None
        if began is not None:
            cpu, rss = access_log.cost(began, concurrent)
        if extras.max_rss and rss is None:
            rss = extras.statm.rss()
        if status is _NOT_COUNTED:
            if began is not None and access_log.status_requests:
                access_log.write(request, extras.answered, began, cpu, rss)
            return
        if self.board is not None and (cpu is not None or rss is not None):
            self.board.cost(cpu if cpu is not None else -1.0, rss or 0)
        if began is not None:
            access_log.write(request, status, began, cpu, rss)
        if extras.max_rss and rss > extras.max_rss and self.alive:
            log.warning("worker %d: %d MB resident after a request, over --max-rss %d MB: "
                        "recycling it", os.getpid(), rss >> 20, extras.max_rss >> 20)
            if self.board is not None:
                self.board.recycling(_RECYCLE_RSS)
            self.stop()

    def _queued_too_long(self, request, wait):
        if self.board is not None:
            self.board.queue_dropped()
        config = self.extras
        config.dropped += 1
        now = time.monotonic()
        if now - config.dropped_logged >= 1.0:      # one line a second at most
            log.warning("%d request(s) answered 503: waited over --max-queue-wait %ss "
                        "(the last %s %s, %.2fs)", config.dropped, config.max_queue_wait,
                        request.params.get("REQUEST_METHOD", "-"),
                        request.params.get("REQUEST_URI", ""), wait)
            config.dropped = 0
            config.dropped_logged = now
        status, headers, body = _plain_response(
            "503 Service Unavailable", "the request waited too long for a worker\n")
        request.finish(0, request.connection.writer.head(status, headers) + body)
        return status

    def answer_status(self, request):
        """The status or ping path's answer, from the scoreboard (the
        status path needs one: a server under the Supervisor); False for
        any other path, which the application gets."""
        params = request.params
        path = params.get("SCRIPT_NAME", "") + params.get("PATH_INFO", "")
        if path not in self.extras.status_paths:
            return False
        status_path, ping_path = self.extras.status_paths
        if self.board is None and path == status_path:
            answer = _plain_response("503 Service Unavailable",
                                     "no status: the server runs without its supervisor\n")
        else:
            answer = _status_answer(self.board and self.board.board, path,
                                    params.get("QUERY_STRING", ""), status_path, ping_path)
        status, headers, body = answer
        writer = request.connection.writer
        if params.get("REQUEST_METHOD") == "HEAD":
            body = b""
        request.finish(0, writer.head(status, headers) + body)
        self.extras.answered = status
        return status

    def reopen_logs(self):
        """SIGUSR1: the access log file is opened again before its next
        line (signal-safe)."""
        if self.extras is not None and self.extras.access_log is not None:
            self.extras.access_log.reopen()

    def connection_failed(self, conn, code):
        """One log line naming the code that ended the connection: a
        warning, but for a kept connection reset between requests, which
        is how balancers (HAProxy) drop the ones they no longer want."""
        parser = conn.parser    # (--http's has no requests to count)
        idle = code == IO and not getattr(parser, "active", 1) and not parser.buffered
        log.log(logging.DEBUG if idle else logging.WARNING, "connection from %s: %s (%d): %s%s",
                conn.peer_text, CODE_NAMES[code], code, _CODE_REASONS.get(code, ""),
                " between requests" if idle else "")


# -- kept connections handed over ------------------------------------------------
#
# A worker that stops while its pool serves on (a reload, --max-requests,
# --max-rss, a scale-down) holds kept connections the web server may send
# its next request on at any moment.  Closing one races that request: it
# meets a reset, and neither nginx nor HAProxy retries a POST it has sent
# (HAProxy closes its client's connection instead, for the client to
# retry).  No record of the spec tells a web server to stop using a
# connection it is not reading.  So the stopping worker passes its idle
# kept connections (nothing read of a next request) to the pool's other
# workers: the connection stays open, and a request that crossed waits in
# its socket's buffer for the new owner.  When the whole pool stops they
# are closed after the linger, as before.


def _is_idle(conn):
    """A kept connection between requests: nothing of a next one read,
    nothing of the last one left to write or drain."""
    return not (conn.requests or conn.pending or conn.drain or conn.retiring or conn.error
                or conn.parser.buffered)


class Handover(object):
    """Kept connections passed between a pool's workers: a datagram socket
    pair the supervisor makes before it forks them.  A stopping worker
    gives the descriptors of its idle connections (SCM_RIGHTS); a serving
    one takes them.  Each message reaches one reader, so each connection
    gets one new owner."""

    BATCH = 16      # descriptors a message carries

    def __init__(self):
        self.give_end, self.take_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.give_end.setblocking(False)
        self.take_end.setblocking(False)
        self.fd = self.take_end.fileno()    # readable: connections wait to be taken

    def give(self, fds):
        """Pass ``fds`` on; returns how many of them went (the first ones).
        The caller closes its own descriptors after, whatever went."""
        given = 0
        while given < len(fds):
            batch = fds[given:given + self.BATCH]
            try:
                self.give_end.sendmsg([b"k"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                struct.pack("%di" % len(batch), *batch))])
            except OSError as exc:
                log.warning("kept connections not handed over: %s", exc)
                break
            given += len(batch)
        return given

    def take(self, family):
        """The sockets (blocking, of ``family``) of one message given, or
        [] when none waits or another worker was quicker."""
        try:
            _, ancillary, _, _ = self.take_end.recvmsg(
                1, socket.CMSG_SPACE(self.BATCH * struct.calcsize("i")))
        except (BlockingIOError, InterruptedError):
            return []
        fds = []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                count = len(data) // struct.calcsize("i")
                fds.extend(struct.unpack("%di" % count, data[:count * struct.calcsize("i")]))
        socks = []
        for fd in fds:
            sock = socket.socket(int(family), socket.SOCK_STREAM, 0, fd)
            sock.setblocking(True)      # O_NONBLOCK is the giver's choice, shared
            socks.append(sock)
        return socks

    def discard(self):
        """The pool stops: close what waits to be taken."""
        while True:
            try:
                socks = self.take(socket.AF_UNIX)
            except OSError:
                return
            if not socks:
                return
            for sock in socks:
                sock.close()

    def close(self):
        self.give_end.close()
        self.take_end.close()


def _peer_of(sock):
    """A connection's peer address as accept() gives it ("" for a unix
    socket's, or when it is gone)."""
    try:
        return sock.getpeername()
    except OSError:
        return ""


class Server(_ServerBase):
    """Serves FastCGI requests from ``listener`` with ``gateway(request)``.

    ``core`` is the module whose protocol classes it runs on: its Parser,
    Writer, Connection and Request become ``parser_class``,
    ``writer_class``, ``connection_class`` and ``request_class``.
    fastfcgi_py's own by default; ``fastfcgi`` gives the compiled ones (its
    Server too).  A subclass may name its own connection_class.

    ``max_conns`` is how many idle kept connections the worker holds (past
    it the least recently used is closed); FCGI_GET_VALUES answers
    FCGI_MAX_CONNS with ``max_conns * workers``, the pool's bound.
    """

    core = None
    connection_class = None
    HANDS_OVER = True               # serve_forever takes a Handover
    _hand_over_until = 0.0          # stopping: requests keep their connection until then

    def __init__(self, gateway, listener, *, core=None, max_body=None,
                 max_param_size=DEFAULT_MAX_PARAM_SIZE,
                 max_params_size=DEFAULT_MAX_PARAMS_SIZE, allow=None,
                 max_requests=0, max_conns=MAX_KEPT_CONNECTIONS, workers=1, board=None,
                 status_path=None, ping_path=None, max_queue_wait=0, access_log=None,
                 max_rss=0):
        self._configure(gateway, listener, core, max_body, max_param_size, max_params_size,
                        allow, max_requests, max_conns, workers, board, status_path, ping_path,
                        max_queue_wait, access_log, max_rss)
        self.request_class = self.core.Request
        if self.connection_class is None:
            self.connection_class = self.core.Connection
        self._wake_r = None
        self._handover = None           # serve_forever's
        self._kept = {}                 # fd -> Connection, kept for the next request
        self._current = None            # the Request being served
        self._draining = {}             # fd -> _Draining, half-closed
        self._closed_fds = set()        # closed in this poll's batch (see _dispatch)
        self._poller = None             # serve_forever's
        self._accept_nodelay = not tune_listener(listener)

    def stop(self):
        """Stop after the request in flight (signal-safe: sets flags)."""
        self.alive = False
        self._hand_over_until = time.monotonic() + KEPT_LINGER / 2
        request = self._current
        if request is not None and request.keep_conn and not request.finished:
            self.retire(request)

    # -- the accept loop ------------------------------------------------------

    def serve_forever(self, parent_pid=None, handover=None):
        """Serve until stop() (or the parent process ``parent_pid`` dies).
        ``handover``: the pool's Handover: connections other workers pass
        on are kept, and the idle ones are passed on when this worker
        stops while the pool serves on."""
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        poller = self._poller = _Poller()
        self.listener.setblocking(False)
        listener_fd = self.listener.fileno()
        poller.register(listener_fd)
        poller.register(self._wake_r)
        self._handover = handover
        if handover is not None:
            poller.register(handover.fd)
        try:
            while self.alive:
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.warning("supervisor %d is gone; worker exits", parent_pid)
                    break
                self._dispatch(poller.poll(1.0), listener_fd)
                if self._draining:
                    self._expire_drains()
            if self.drain_backlog:
                self._finish_backlog(listener_fd)
            poller.unregister(listener_fd)
            if handover is not None:
                poller.unregister(handover.fd)      # taking no more
                if self._pool_serves_on():
                    self._hand_over(handover)
                else:
                    self._handover = None           # the pool stops: retire them
            if self.drain_backlog:
                self.listener.close()       # the last one out: new connects are refused
            self._linger()
        finally:
            for conn in list(self._kept.values()):
                self._close(conn)
            for draining in list(self._draining.values()):
                self._end_drain(draining)
            poller.close()
            signal.set_wakeup_fd(old_wakeup)
            os.close(self._wake_r)
            os.close(wake_w)

    def _dispatch(self, ready, listener_fd=None):
        """Serve what ``ready`` (the poller's list) says is readable."""
        kept = self._kept
        closed = self._closed_fds
        closed.clear()
        for fd, _ in ready:
            conn = kept.get(fd)
            if conn is not None:
                if closed and fd in closed:
                    continue        # closed in this batch: the fd may be another's now
                # Moved to the end: the dict's order is least recently used first.
                del kept[fd]
                if self.serve_connection(conn, False):
                    kept[fd] = conn
                else:
                    self._close(conn)
            elif fd == listener_fd:
                self._accept()
            elif fd == self._wake_r:
                try:
                    os.read(fd, 512)
                except OSError:
                    pass
            elif self._handover is not None and fd == self._handover.fd:
                self._take(self._handover)
            elif fd in self._draining and not (closed and fd in closed):
                self._drain_some(self._draining[fd])
            if not self.alive and listener_fd is not None and not self.drain_backlog:
                break       # stopping: the rest of the batch is _linger's

    def _take(self, handover):
        """Keep the connections another worker passed on (see Handover)."""
        for sock in handover.take(self.listener.family):
            conn = self.connection_class(sock, None, None, _peer_of(sock))
            self.new_connection(conn)
            self._keep(conn)

    def _hand_over(self, handover):
        """This worker stops and its pool serves on: its idle kept
        connections go to the other workers (see Handover)."""
        idle = [conn for conn in self._kept.values() if _is_idle(conn)]
        if not idle:
            return
        given = handover.give([conn.fileno() for conn in idle])
        for conn in idle[:given]:
            self._close(conn)
        if given:
            log.info("worker %d stops: %d kept connection(s) handed to the other workers",
                     os.getpid(), given)

    def _finish_backlog(self, listener_fd):
        """The pool stops and its door is closed (close_the_door): serve
        the connections still in the listen queue, and the kept ones
        meanwhile, until none has come for BACKLOG_SETTLE seconds (one
        half-way through its handshake lands within a round trip)."""
        quiet_since = time.monotonic()
        while True:
            left = quiet_since + BACKLOG_SETTLE - time.monotonic()
            if left <= 0:
                return
            ready = self._poller.poll(left)
            if any(fd == listener_fd for fd, _ in ready):
                quiet_since = time.monotonic()
            self._dispatch(ready, listener_fd)

    def _linger(self):
        """Stopping: serve what arrives on kept connections for a moment,
        closing each after its answer.  Closing a kept connection just as
        the web server sends a request on it makes a failed request (nginx
        retries once, on another kept connection that may be closing too);
        nginx reuses its most recent connections first, so the busy ones
        get one last request, and those left idle are cold.  When the pool
        serves on, the idle ones went to the other workers before (see
        Handover): what is left here is the pool's last."""
        deadline = time.monotonic() + KEPT_LINGER
        while self._kept:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._dispatch(self._poller.poll(left))
            if self._handover is not None:
                self._hand_over(self._handover)     # the ones idle now

    def _accept(self):
        """Accept and serve the connections waiting (a few at most, so kept
        connections get their turn), saving a poller round per request."""
        listener = self.listener
        accept = self.connection_class.accept
        nodelay = self._accept_nodelay
        for _ in range(ACCEPT_BATCH):
            try:
                conn = accept(listener, nodelay)
            except (BlockingIOError, InterruptedError):
                return              # none left, or another worker took it
            except OSError as exc:
                log.error("accept failed: %s", exc)
                time.sleep(0.1)     # e.g. EMFILE: do not spin
                return
            if self.board is not None:
                self.board.connection()
            if self.allow is not None and not peer_allowed(self.allow, conn.peer):
                log.warning("connection from %s refused: not in --allow", conn.peer[0])
                if self.board is not None:
                    self.board.rejected()
                conn.close()
                continue
            self.new_connection(conn)
            if self.serve_connection(conn):
                self._keep(conn)
            else:
                self._close(conn)
            if not self.alive:
                return

    def new_connection(self, conn):
        """Give an accepted Connection its core: a fresh parser, the writer
        and the request class."""
        conn.parser = self.parser_class(max_param_size=self.max_param_size,
                                        max_params_size=self.max_params_size,
                                        max_body=self.max_body,
                                        max_conns=self.max_conns * self.workers)
        conn.writer = self.writer
        conn.request_class = self.request_class

    def _keep(self, conn):
        # Past max_conns kept connections the least recently used goes:
        # FCGI_MAX_CONNS (spec 4.1) tells the web server this bound.
        if len(self._kept) >= self.max_conns:
            oldest = next(iter(self._kept.values()))
            self._close(oldest)
        fd = conn.fileno()
        self._poller.register(fd)
        self._kept[fd] = conn
        conn.registered = True

    def _close(self, conn):
        """Close ``conn``; one whose input was left unread is half-closed and
        drained first (in the poller, so the worker serves on), because
        closing with unread data makes a reset that can reach the web server
        before our answer."""
        # Kept connections are registered; a failed unregister costs more
        # than a request's parsing, so only they are.
        if conn.registered:
            conn.registered = False
            fd = conn.fileno()
            self._kept.pop(fd, None)
            self._closed_fds.add(fd)
            try:
                self._poller.unregister(fd)
            except KeyError:
                pass
        if conn.drain:
            try:
                sock = conn.sock
                sock.shutdown(socket.SHUT_WR)
                sock.setblocking(False)
                fd = sock.fileno()
                self._poller.register(fd)
                self._draining[fd] = _Draining(sock, time.monotonic() + _DRAIN_SECONDS)
                return
            except (OSError, ValueError):
                pass
        try:
            conn.close()
        except OSError:
            pass

    def _drain_some(self, draining):
        try:
            while True:
                if not draining.sock.recv(262144):
                    break               # the web server closed: done
        except BlockingIOError:
            return
        except OSError:
            pass
        self._end_drain(draining)

    def _expire_drains(self):
        now = time.monotonic()
        for draining in list(self._draining.values()):
            if now > draining.deadline:
                self._end_drain(draining)

    def _end_drain(self, draining):
        fd = draining.sock.fileno()
        if self._draining.pop(fd, None) is not None:
            self._closed_fds.add(fd)
            try:
                self._poller.unregister(fd)
            except KeyError:
                pass
        draining.sock.close()

    # -- one connection -----------------------------------------------------

    def serve_connection(self, conn, wait=True):
        """Serve the requests that are ready on ``conn``: with ``wait``
        (a new connection) the first is waited for; then, and without it (a
        kept connection the poller found readable), only what has arrived
        is read, unless a request has begun.

        Returns True to keep the connection for a later request (KEEP_CONN,
        no request begun), False once it must be closed.
        """
        busy_slot = self.busy_slot
        while True:
            if busy_slot is not None:
                # --timeout counts from here: a peer that stalls before its
                # params are in holds the worker no longer than a slow app.
                busy_slot(time.monotonic())
            request = conn.next_request(wait)
            if request is None:
                if busy_slot is not None:
                    busy_slot(0.0)
                return True     # nothing more yet: wait in the poller
            if type(request) is tuple:
                # It failed before its params were complete: answered by
                # the gateway's policy, and the connection goes on.
                if busy_slot is not None:
                    busy_slot(0.0)
                    if request[2] != ABORT:
                        self.board.rejected()
                if not self.gateway.reject(conn, request[1], request[2]):
                    return False
            elif type(request) is int:
                if busy_slot is not None:
                    busy_slot(0.0)
                if request != NOREQ:
                    self.connection_failed(conn, request)
                return False
            elif not self.handle(request):      # frees the slot
                return False
            if not conn.parser.buffered:
                return True     # wait in the poller for the next one
            wait = False        # only what has arrived, if no request began

    def handle(self, request):
        """Run the gateway on one request; True if the connection stays.
        The caller marks the busy slot (before reading the request); this
        frees it."""
        self.served += 1
        board = self.board
        extras = self.extras
        status = None
        began = None
        if extras is not None and extras.access_log is not None:
            began = extras.access_log.begin()
        conn = request.connection
        if not self.alive and request.keep_conn:
            # Begun after the stop: the web server keeps the connection
            # busy, and we read past the last request (so it cannot be
            # handed over with what we read); retired after a moment,
            # with the record in the same send as END_REQUEST.
            self.retire(request, hand_over=time.monotonic() < self._hand_over_until)
        self._current = request         # stop() retires it
        try:
            # The row shows the request, and counts its queue wait.
            waited = board.began(request) if board is not None else None
            status = self.intercept(request, waited) if extras is not None else False
            if status is False:
                status = self.gateway(request)
            if not request.finished:
                request.finish(0)
            lost = request.connection_lost
            # Stopping, the connection goes to another worker, or closes.
            keep = request.keep_conn and not lost and (self.alive or self._handover is not None)
            if keep:
                # The parser may have ended the connection meanwhile: a
                # refused request without KEEP_CONN, a protocol error.
                keep = conn.parser.keep_conn and not conn.parser.error and not conn.error
            elif not request.stdin_done and not lost:
                conn.drain = True
            if request.unread_error:
                # What ended its input, which the application never read
                # (so nothing said it yet): one log line.
                self.connection_failed(conn, request.unread_error)
        finally:
            self._current = None
            if board is None:
                pass
            elif status is not _NOT_COUNTED:
                board.finished(status)      # counted, and the worker idle
            else:
                board.busy(0.0)             # scrapes do not count as requests
        if extras is not None:
            self.after(request, status, began)
        if self.max_requests and self.served >= self.max_requests and self.alive:
            log.info("served %d requests (--max-requests): worker recycles", self.served)
            self.alive = False
            self._hand_over_until = time.monotonic() + KEPT_LINGER / 2
        return keep



##############################################################################
# Asyncio server  #############################################################
##############################################################################
#
# ``--asgi`` (and ``--raw`` with an ``async def`` callable) run on asyncio
# workers under the same Supervisor, on the same Parser, Writer, route and
# Gateway policy as the blocking server, with multiplexing: a worker runs
# many requests at once, several on one connection when the web server
# multiplexes (FCGI_MPXS_CONNS is 1; nginx never does, so behind it each
# request has its own connection, kept or not).
#
# Nothing a peer sends grows memory without bound:
#   - requests: past ``max_concurrency`` in the worker, or on one connection
#     (the Parser's max_reqs), a new request gets END_REQUEST with
#     FCGI_OVERLOADED (spec 5.5); FCGI_MAX_REQS says the bound (spec 4.1);
#   - stdin: a request whose unread stdin passes _STDIN_HIGH pauses the
#     reading of its connection until the application has taken it below
#     _STDIN_LOW (FastCGI has no per-request flow control);
#   - output: send() and drain() wait while the transport's buffer is over
#     its high-water mark, so a slow web server slows the application;
#   - connections: past ``max_conns`` the worker stops accepting (another
#     worker, or the kernel's backlog, takes them).

_STDIN_HIGH = 262144
_STDIN_LOW = 65536
# Requests one asyncio worker runs at once (--max-concurrency).
DEFAULT_MAX_CONCURRENCY = 100
# Connections one asyncio worker holds at most.
ASYNC_MAX_CONNECTIONS = 1024
_BaseProtocol = getattr(asyncio, "BufferedProtocol", asyncio.Protocol)   # 3.6: Protocol


class _AsyncConnection(_Demultiplexer, _BaseProtocol):
    """A web server's connection on the asyncio loop: a buffered protocol
    (the transport reads straight into the Parser's buffer) that routes
    the events to its AsyncRequests and writes what they send."""

    def __init__(self, server, peer):
        self.server = server
        self.parser = server.new_parser()
        self.writer = server.writer
        self.peer = peer
        self.requests = {}
        self.request_class = server.request_class
        self.pending = None
        self.transport = None
        self.error = 0                  # the code that ended the connection
        self.drain = False              # close with a drain (Gateway.reject sets it)
        self.closing = False            # no new requests: close once they end
        self.retiring = False           # RETIRE_RECORD goes with the last send
        self.send_file = None
        self._draining = False
        self._sink = None               # what a draining connection reads into
        self._write_paused = False
        self._write_waiter = None       # a future while the write buffer is full
        self._stdin_full = set()        # requests over _STDIN_HIGH
        self._held = None               # writes waiting for a file being sent
        self._file_sent = None
        self._reading_paused = False
        self._recv_size = _RECV_FIRST

    # -- asyncio's protocol calls ------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        # The loop's hint (64 KB on uvloop) is not taken at first: as the
        # blocking Connection's reads, a connection's first are _RECV_FIRST
        # (the compiled Parser's first buffer, not grown); each read that
        # fills its buffer doubles the next, up to _ASYNC_RECV_SIZE (a
        # kept connection keeps its buffer: 1024 of them hold 128 MB at most).
        if self._draining or self.error:
            if self._sink is None:
                self._sink = bytearray(_RECV_FIRST)
            return self._sink
        return self.parser.get_buffer(self._recv_size)

    def buffer_updated(self, nbytes):
        if not (self._draining or self.error):
            if nbytes == self._recv_size and nbytes < _ASYNC_RECV_SIZE:
                self._recv_size = nbytes * 2        # a stream: read more at once
            self.parser.buffer_updated(nbytes)
            self._process()

    def data_received(self, data):
        """Python 3.6 (no BufferedProtocol)."""
        if not (self._draining or self.error):
            self.parser.feed(data)
            self._process()

    def eof_received(self):
        if not (self._draining or self.error):
            self.parser.feed(b"")
            self._process()
        return False        # the transport closes

    def pause_writing(self):
        # The web server does not take our output: stop reading its input
        # too, so the answers to what it sends cannot pile up.
        self._write_paused = True
        self._update_reading()

    def resume_writing(self):
        self._write_paused = False
        self._wake_writers()
        self._update_reading()

    def connection_lost(self, exc):
        self.server._connection_closed(self)
        if not self.error:
            self.error = EOF
        self.route(EOF)         # every request hears it: nothing can be sent
        self._wake_writers()
        if self._file_sent is not None and not self._file_sent.done():
            self._file_sent.set_result(None)

    # -- reading: the parser's events to the requests -------------------------

    def _process(self):
        parser = self.parser
        server = self.server
        eager = None        # (request, coroutine): started once the buffer is read
        try:
            while not (self._draining or self.transport.is_closing()):
                event = parser.next_event()
                out = parser.data_to_send()
                if out:
                    self._write(out)
                if event is None:
                    return
                if type(event) is tuple and event[0] == FCGI_PARAMS:
                    # A new request (route's first case, without its call).
                    if len(server._running) >= server.max_concurrency:     # .overloaded
                        self._refuse(event[1])
                        continue
                    request = self.request_class(self, event[1], event[2], event[3], event[4])
                    coro = server._start(request)
                    if coro is not None:
                        if eager is None:
                            eager = []
                        eager.append((request, coro))
                    continue
                found = self.route(event)
                if found is None:
                    continue
                if type(found) is int:
                    self._ended(found)
                    return
                # It failed before its params: the policy answers it.
                if server.board is not None and found[2] != ABORT:
                    server.board.rejected()
                if not server.gateway.reject(self, found[1], found[2]):
                    self.closing = True
                    self._close_if_idle()
        finally:
            if eager is not None:
                for request, coro in eager:
                    server._start_eagerly(request, coro)

    def _refuse(self, request_id):
        """Spec 5.5: a request we have no room for gets END_REQUEST with
        OVERLOADED (the web server may try another application).  One log
        line a second at most."""
        server = self.server
        server.refused += 1
        now = time.monotonic()
        if now - server.refused_logged >= 1.0:
            log.warning("%d request(s) answered FCGI_OVERLOADED (the last from %s): "
                        "%d running, --max-concurrency %d", server.refused, self.peer_text,
                        server.running, server.max_concurrency)
            server.refused = 0
            server.refused_logged = now
        self._write(self.writer.end_request(request_id, 0, FCGI_OVERLOADED))
        if server.board is not None:
            server.board.rejected()
        self.end_request(request_id)

    def _ended(self, code):
        """The parser's sticky code: NOREQ (the peer is done, or a request
        without KEEP_CONN was answered), EOF or PROTO."""
        self.error = code
        if code != NOREQ:
            self.server.connection_failed(self, code)
        if code == EOF:
            self.transport.close()      # the peer is gone
            return
        # Nothing more is read; the running requests still answer (PROTO:
        # as the blocking server's), then the connection closes.
        self.closing = True
        self._update_reading()
        self._close_if_idle()

    def stdin_over_high(self, request):
        """``request`` holds _STDIN_HIGH unread bytes: stop reading."""
        self._stdin_full.add(request)
        self._update_reading()

    def stdin_under_low(self, request):
        """``request`` took its stdin below _STDIN_LOW, or waits for more."""
        self._stdin_full.discard(request)
        self._update_reading()

    def _update_reading(self):
        """Read while no request holds too much unread stdin and the web
        server takes our output (a draining connection always reads)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        wanted = self._draining or not (self._stdin_full or self._write_paused or
                                        (self.error and self.error != NOREQ))
        if wanted == self._reading_paused:
            self._reading_paused = not wanted
            if wanted:
                transport.resume_reading()
            else:
                transport.pause_reading()

    # -- writing ---------------------------------------------------------------------

    def sendall(self, data):
        """Queue ``data`` on the transport (the Request's send); raises
        OSError once the connection is gone."""
        if self._draining or self.transport.is_closing():
            raise ConnectionResetError("the web server closed the connection")
        if self._held is not None:
            self._held.append(data)     # after the file being sent (send_file_records)
        else:
            self.transport.write(data)

    def send_last(self, data):
        """The last output of a request without KEEP_CONN (the connection
        closes when its requests are done): with RETIRE_RECORD when the
        worker stops and no other request runs on it."""
        if self.retiring and len(self.requests) <= 1:
            self.retiring = False
            data = data + RETIRE_RECORD
        self.sendall(data)

    def _write(self, data):
        if self._draining or self.transport.is_closing():
            return                      # half-closed, or gone: nothing more goes out
        if self._held is not None:
            self._held.append(data)     # after the file being sent (send_file_records)
        else:
            self.transport.write(data)

    async def send_file_records(self, request_id, fd, offset=0, count=None):
        """As the module's ``send_file``, on this connection: STDOUT
        records whose content goes from ``fd`` to the socket by sendfile(2)
        (no copy through Python).  What other requests send meanwhile waits
        behind it, so records never interleave.  Returns the bytes of the
        file sent, or SEND."""
        if count is None:
            count = max(os.fstat(fd).st_size - offset, 0)     # a bad fd: the caller's error
        while self._held is not None:           # another file is on its way
            await self._file_sent
        transport = self.transport
        self._held = []
        self._file_sent = self.server.loop.create_future()
        sock = None
        sent = 0
        try:
            await self._flushed()
            # The transport's own fd is its loop's; a duplicate is ours to
            # wait on.
            sock = os.dup(transport.get_extra_info("socket").fileno())
            while count > 0:
                size = min(count, _CHUNK)
                pad = -size & 7
                await self._raw_send(sock, _header.pack(1, FCGI_STDOUT, request_id, size, pad))
                left = size
                while left:
                    try:
                        n = os.sendfile(sock, fd, offset, left)
                    except BlockingIOError:
                        await self._raw_writable(sock)
                        continue
                    if n == 0:          # the file is shorter than promised
                        await self._raw_send(sock, bytes(left))
                        count = left = 0
                        break
                    offset += n
                    left -= n
                    sent += n
                if pad:
                    await self._raw_send(sock, _PAD[:pad])
                count -= size
            return sent
        except OSError:
            # Maybe mid-record: the stream cannot go on, for any request.
            transport.abort()
            return SEND
        finally:
            if sock is not None:
                os.close(sock)
            held, self._held = self._held, None
            if not self._file_sent.done():
                self._file_sent.set_result(None)
            if not transport.is_closing():
                for data in held:
                    transport.write(data)

    async def _flushed(self):
        """Wait until the transport has written all it holds."""
        transport = self.transport
        if transport.get_write_buffer_size():
            transport.set_write_buffer_limits(high=0)     # resume_writing once empty
            try:
                while transport.get_write_buffer_size() and not transport.is_closing():
                    self._write_paused = True
                    await self.wait_writable()
            finally:
                transport.set_write_buffer_limits()
        if transport.is_closing():
            raise ConnectionResetError("the web server closed the connection")

    async def _raw_send(self, sock, data):
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(sock, view):]
            except BlockingIOError:
                await self._raw_writable(sock)

    async def _raw_writable(self, sock):
        loop = self.server.loop
        ready = loop.create_future()
        loop.add_writer(sock, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_writer(sock)

    async def wait_writable(self):
        """Return once the transport takes more (or the connection is gone);
        while a file is being sent, once it is."""
        while not self.transport.is_closing():
            if self._held is not None:
                await self._file_sent       # what we wrote waits in _held
            elif self._write_paused:
                if self._write_waiter is None:
                    self._write_waiter = self.server.loop.create_future()
                await self._write_waiter
            else:
                return

    def _wake_writers(self):
        waiter = self._write_waiter
        if waiter is not None:
            self._write_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def poll(self, read=True):
        """Events arrive by themselves here (the blocking Connection's
        poll reads them)."""

    # -- the end -----------------------------------------------------------------------

    def end_request(self, request_id):
        """As _Demultiplexer's, and what the connection does once a request
        ends: its reading, its close."""
        request = self.requests.pop(request_id, None)
        excess = self.parser.end_request(request_id)
        if request is not None:
            if not request.stdin_done and not request.connection_lost:
                self.drain = True       # its input still comes: dropped at the close
            if request in self._stdin_full:
                self.stdin_under_low(request)
            if request._waiter is not None:
                request._wake()     # a wait for the disconnect ends with the response
        server = self.server
        if not self.parser.keep_conn or not (server.alive or server._handover is not None):
            self.closing = True
        elif not server.alive:
            # Stopping: to another worker as soon as it is idle (see Handover).
            server.loop.call_soon(server._hand_over, server._handover, [self])
        if self.closing:
            # After the caller's writes (a reject's drain flag among them).
            self.server.loop.call_soon(self._close_if_idle)
        return excess

    def _close_if_idle(self):
        """Close once no request is active: drained first when input was
        left unread (see Server._close)."""
        if self.requests or self.transport is None or self.transport.is_closing():
            return
        transport = self.transport
        if self.drain and self.error in (0, NOREQ) and transport.can_write_eof():
            # Half-close and read what still comes, so our answer is not
            # overtaken by a reset; eof_received or the timer closes it.
            self._draining = True
            self._stdin_full.clear()
            transport.write_eof()
            self._update_reading()
            self.server.loop.call_later(_DRAIN_SECONDS, transport.close)
            return
        transport.close()

    def close(self):
        if self.transport is not None:
            self.transport.close()

    peer_text = Connection.peer_text


class _AsyncRequestMethods(object):
    """What an AsyncRequest adds to a Request: awaiting reads, ``drain``,
    the on-stdin callback.  On the Request of either core (the compiled
    one keeps the state and ``finish`` in C); see AsyncRequest."""

    __slots__ = ()

    # -- what the connection delivers ---------------------------------------------

    def _on_stdin(self, chunk):
        super(_AsyncRequestMethods, self)._on_stdin(chunk)
        if len(self._buffer) > _STDIN_HIGH:
            self.connection.stdin_over_high(self)
        if self._on_stdin_read is not None:
            self._on_stdin_read(self)
        self._wake()

    def _on_data(self, chunk):
        super(_AsyncRequestMethods, self)._on_data(chunk)
        if len(self._data_buffer) > _STDIN_HIGH:
            self.connection.stdin_over_high(self)
        self._wake()

    def _on_abort(self, code):
        super(_AsyncRequestMethods, self)._on_abort(code)
        self._wake()

    def _on_connection_lost(self, code):
        super(_AsyncRequestMethods, self)._on_connection_lost(code)
        self._input_broken = True
        self._wake()

    def _wake(self):
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _changed(self):
        """Wait for the next event of this request."""
        if self._waiter is None:
            self._waiter = self.connection.server.loop.create_future()
        await self._waiter

    def set_on_stdin_read(self, callback):
        """Call ``callback(request)`` each time stdin arrives (None: stop).
        Read it with ``read_stdin*`` as usual; they return at once then."""
        self._on_stdin_read = callback

    # -- stdin, awaited ----------------------------------------------------------------

    async def _fill(self):
        return await self._wait_more(False)

    async def _fill_data(self):
        while await self._fill():
            pass
        return await self._wait_more(True)

    async def _wait_more(self, data):
        """As the blocking ``_pull``: True once the buffer grew, False at
        its end; raises the code that ended the input."""
        while True:
            if self._input_over(data):
                return False
            if self in self.connection._stdin_full:
                # It asks for more than it holds: the rest must be read.
                self.connection.stdin_under_low(self)
            size = len(self._data_buffer if data else self._buffer)
            await self._changed()
            if len(self._data_buffer if data else self._buffer) != size:
                return True

    def _take(self, size):
        data = super(_AsyncRequestMethods, self)._take(size)
        if len(self._buffer) < _STDIN_LOW and self in self.connection._stdin_full:
            self.connection.stdin_under_low(self)
        return data

    async def read_stdin_bytes(self, size=None):
        """Up to ``size`` bytes of stdin (all of it when None); b"" at the
        end.  Raises RequestError as the blocking Request's."""
        while self._short_of(size) and await self._fill():
            pass
        return self._take(size)

    async def read_stdin_line_bytes(self, size=None):
        """One line of stdin including its b"\\n" (at most ``size`` bytes)."""
        start = 0
        while self._line_end(start, size) is None:
            start = len(self._buffer)
            if not await self._fill():
                break
        return self._take_line(start, size)

    async def as_http_request(self):
        """The request as a plain ``HTTPRequest`` (its whole body read)."""
        return HTTPRequest(self, await self.read_stdin_bytes())

    async def read_stdin(self, size=None):
        """As read_stdin_bytes, decoded unless set_encoding(None)."""
        return self._decode(await self.read_stdin_bytes(size))

    async def read_stdin_line(self, size=None):
        """One line of stdin, decoded unless set_encoding(None)."""
        return self._decode(await self.read_stdin_line_bytes(size))

    async def read_stdin_chunk(self):
        """What stdin has brought so far, waiting for some if none; b"" at
        its end (ASGI's http.request messages)."""
        if not self._buffer:
            await self._fill()
        return self._take(None)

    async def read_data(self, size=None):
        """FILTER role: up to ``size`` bytes of the FCGI_DATA stream."""
        while (size is None or len(self._data_buffer) < size) and await self._fill_data():
            pass
        size = len(self._data_buffer) if size is None else size
        data = self._data_buffer[:size]
        self._data_buffer = self._data_buffer[size:]
        if len(self._data_buffer) < _STDIN_LOW and self in self.connection._stdin_full:
            self.connection.stdin_under_low(self)
        return data

    async def discard_stdin(self):
        """Skip what is left of stdin (and of the FILTER data stream)."""
        try:
            self._take(None)
            while await self._fill():
                self._take(None)
            self._data_buffer = b""
            while await self._fill_data():
                self._data_buffer = b""
        except RequestError:
            pass

    # -- output -------------------------------------------------------------------------

    async def drain(self):
        """Wait while the web server has not taken what was sent."""
        await self.connection.wait_writable()

    async def send_file(self, fd, offset=0, count=None):
        """Send a file region as STDOUT content by sendfile(2); returns the
        bytes sent (0 if the web server went away)."""
        if self._aborted:
            return 0
        self._stdout_used = True
        sent = await self.connection.send_file_records(self.request_id, fd, offset, count)
        if sent < 0:
            self._aborted = self._gone = True
            return 0
        self.stdout_bytes += sent
        return sent

    async def stream_stdout_then_finish(self, readfn, exit_code=0):
        """Send what ``await readfn()`` returns until it returns b"", ""
        or None (or the web server goes away), then finish with
        ``exit_code``."""
        while not self._aborted:
            data = await readfn()
            if not data:
                break
            self.print_stdout(data)
            await self.drain()
        self.finish(exit_code)

    async def wait_disconnect(self):
        """Return once the web server aborted the request, the connection
        is lost (or can bring nothing more) or the response is complete."""
        while not (self._aborted or self._finished or self._input_broken):
            await self._changed()

    @property
    def is_aborted(self):
        """True once the web server aborted the request or went away."""
        return self._aborted


class AsyncRequest(_AsyncRequestMethods, Request):
    """One request on the asyncio server: the Request's API, with its reads,
    ``drain`` and ``stream_stdout_then_finish`` as coroutines, and an
    on-stdin callback (Net::Async::FastCGI's request).  Output is written
    at once (``print_stdout``); ``await drain()`` waits while the web
    server is slower than the application."""

    __slots__ = ("_waiter", "_on_stdin_read", "task", "_input_broken")

    def __init__(self, connection, request_id, role, flags, params):
        Request.__init__(self, connection, request_id, role, flags, params)
        self._waiter = None             # a future a read waits on
        self._on_stdin_read = None
        self.task = None                # the asyncio task running it
        self._input_broken = False      # the connection's input is over (PROTO, EOF...)


class AsyncRawGateway(RawGateway):
    """``--raw`` with an ``async def`` callable: ``await app(request)`` on
    an AsyncRequest, which it must finish (it is finished with exit code
    0 if it returns without)."""

    async def __call__(self, request):
        try:
            await self.app(request)
        except Exception as exc:
            return self._end(request, exc)
        return self._end(request)


# -- ASGI 3 -----------------------------------------------------------------------------
#
# The http scope from the CGI params (ASGI HTTP spec 2.4): the path is
# SCRIPT_NAME + PATH_INFO, decoded (it includes root_path, which is
# SCRIPT_NAME); raw_path is REQUEST_URI's path as sent; the headers are the
# HTTP_* params plus content-type and content-length once each (nginx sends
# both CONTENT_TYPE and HTTP_CONTENT_TYPE: RFC 3875 4.1.18 wants the former).

_ASGI = {"version": "3.0", "spec_version": "2.4"}


def _asgi_headers(params, role):
    """request_headers' pairs as ASGI wants them (latin-1 bytes)."""
    headers = []
    append = headers.append
    known_keys = _HEADER_PAIRS
    for key, value in params.items():
        known = known_keys.get(key)
        if known is None:
            if key[:5] != "HTTP_" or key == "HTTP_CONTENT_TYPE" or key == "HTTP_CONTENT_LENGTH":
                known = False
            else:
                known = (key[5:].lower().replace("_", "-").encode("latin-1"), None, None)
            if len(known_keys) < 512:       # the names a web server sends repeat
                known_keys[key] = known
        if known is False:
            continue
        if known[2] is not None and known[1] == value:
            append(known[2])                # the last request's value: its pair
            continue
        pair = (known[0], value.encode("latin-1"))
        if key in known_keys:
            # Values past 1 KB are not kept: 512 names hold 1 MB at most.
            known_keys[key] = (known[0], value, pair) if len(pair[1]) <= 1024 else \
                (known[0], None, None)
        append(pair)
    content_type = params.get("CONTENT_TYPE") or params.get("HTTP_CONTENT_TYPE")
    if content_type:
        append((b"content-type", content_type.encode("latin-1")))
    length = params.get("CONTENT_LENGTH") or params.get("HTTP_CONTENT_LENGTH")
    if length and length != "-1" and role != FCGI_AUTHORIZER:   # an authorizer gets no body
        append((b"content-length", length.encode("latin-1")))
    return headers


# What _asgi_headers knows of the param names it has seen (a web server
# sends the same ones): False for a name that is not a header's, else
# (b"user-agent", the value last seen, its pair), so a header whose value
# equals the last request's reuses its immutable (name, value) pair.
_HEADER_PAIRS = {}


def _address(host, port):
    if not host:
        return None
    try:
        return (host, int(port or 0))
    except ValueError:
        return (host, 0)


def asgi_scope(request, state=None):
    """The ASGI 3 http scope of ``request`` (see the section comment);
    ``state`` is the lifespan state, copied into the scope."""
    p = request.params
    script_name = p.get("SCRIPT_NAME", "")
    path = script_name + p.get("PATH_INFO", "")
    uri = p.get("REQUEST_URI", "")
    raw_path = uri.partition("?")[0]
    if not path:
        path = _unquote(raw_path) or "/"
    https = p.get("HTTPS", "")
    secure = https.lower() in ("on", "1") or p.get("REQUEST_SCHEME") == "https"
    version = p.get("SERVER_PROTOCOL", "HTTP/1.1")[5:]
    scope = {
        "type": "http",
        "asgi": _ASGI,
        "http_version": "2" if version == "2.0" else version or "1.1",
        "method": p.get("REQUEST_METHOD", "GET"),
        "scheme": "https" if secure else "http",
        "path": path.encode("latin-1").decode("utf-8", "replace"),
        "raw_path": (raw_path or path).encode("latin-1"),
        "query_string": p.get("QUERY_STRING", "").encode("latin-1"),
        "root_path": script_name.encode("latin-1").decode("utf-8", "replace"),
        "headers": _asgi_headers(p, request.role),
        "client": _address(p.get("REMOTE_ADDR"), p.get("REMOTE_PORT")),
        "server": _address(p.get("SERVER_ADDR") or p.get("SERVER_NAME"), p.get("SERVER_PORT")),
        "extensions": {"http.response.pathsend": {},
                       "fastcgi": {"request": request,
                                   "role": ROLE_NAMES.get(request.role, str(request.role))}},
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope


def _unquote(raw):
    from urllib.parse import unquote_to_bytes
    return unquote_to_bytes(raw).decode("latin-1")


def _status_line(status):
    """ "200 OK" for 200: the reason phrase nginx would send."""
    line = _STATUS_LINES.get(status)
    if line is None:
        if type(status) is not int or not 100 <= status <= 999:
            raise ValueError("invalid ASGI status %r" % (status,))
        from http import HTTPStatus
        try:
            line = "%d %s" % (status, HTTPStatus(status).phrase)
        except ValueError:
            line = str(status)
        _STATUS_LINES[status] = line
    return line


_STATUS_LINES = {200: "200 OK"}


def _asgi_head(writer, status, headers):
    """The CGI head of an http.response.start: ``status`` its line,
    ``headers`` its (name, value) bytes pairs; refused as Writer.head
    refuses a head."""
    lines = _HEAD_LINES
    if type(writer) is Writer and type(status) is str and \
            (type(headers) is list or type(headers) is tuple):
        # An application sends the same lines again: those Writer.head
        # took before are joined as they are.
        try:
            out = [lines[status]]
            for pair in headers:
                if type(pair) is not tuple:
                    break
                out.append(lines[pair])
            else:
                out.append(b"\r\n")
                return b"".join(out)
        except (KeyError, TypeError):   # new, or unhashable: Writer.head checks it
            pass
    head = writer.head(status, _str_headers(headers))
    if type(writer) is Writer and len(lines) < 256:
        lines[status] = b"Status: " + status.encode("latin-1") + b"\r\n"
        for pair in headers:
            if type(pair) is tuple and type(pair[0]) is bytes and type(pair[1]) is bytes \
                    and len(pair[1]) <= 256 and len(lines) < 256:
                lines[pair] = pair[0] + b": " + pair[1] + b"\r\n"
    return head


# The lines of heads Writer.head took: a status str, or a (name, value)
# bytes tuple, to its bytes (256 lines at most, values up to 256 bytes).
_HEAD_LINES = {}


def _str_headers(headers):
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


class _ASGIResponseMethods(object):
    """The ASGI ``receive`` and ``send`` of an _ASGIResponse (its state
    is the class's, or the compiled twin's)."""

    __slots__ = ()

    async def receive(self):
        request = self.request
        if not self.body_done and not request._aborted:
            try:
                body = await request.read_stdin_chunk()
            except RequestError as exc:
                if exc.code in LIMIT_RESPONSES:
                    raise           # the gateway answers 413 / 431
                return {"type": "http.disconnect"}      # aborted, or the input broke
            if body is not None:
                # A limit broken after this chunk is raised by the next call.
                # (A FILTER's data stream is not the body: read_data has it.)
                more = not request._stdin_done or bool(request._buffer) or \
                    bool(request.unread_error)
                self.body_done = not more
                return {"type": "http.request", "body": body, "more_body": more}
        # ASGI: after the body, receive waits for the disconnect: an
        # ABORT_REQUEST, the connection lost, or the response complete.
        await request.wait_disconnect()
        return {"type": "http.disconnect"}

    async def send(self, message):
        kind = message["type"]
        request = self.request
        if kind == "http.response.start":
            if self.status is not None:
                raise RuntimeError("http.response.start sent twice")
            status = _status_line(message["status"])
            headers = message.get("headers", ())
            if type(headers) is not list and type(headers) is not tuple:
                headers = list(headers)     # an iterable: read once here
            self.head_bytes = self.make_head(request.connection.writer, status, headers)
            self.status = status
            self.headers = headers
            return
        if self.complete:
            raise RuntimeError("%s after the response was complete" % kind)
        if self.status is None:
            raise RuntimeError("%s before http.response.start" % kind)
        if request._aborted:
            # ASGI HTTP spec: send on a closed connection raises an OSError
            # (RequestError is one).
            raise _gone_error(request)
        if kind == "http.response.body":
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if type(body) is not bytes:
                if not isinstance(body, (bytearray, memoryview)):
                    raise TypeError("http.response.body: the body must be bytes, not %s"
                                    % type(body).__name__)
                body = bytes(body)
            waiting = self._send_body(body, more)
            if waiting is not None:
                await waiting
        elif kind == "http.response.pathsend":
            await self._send_path(message["path"])
        else:
            raise ValueError("unknown ASGI message type %r" % (kind,))

    def _send_body(self, body, more):
        """An http.response.body's bytes out, after the head with the
        first; returns what to await (the request's drain), or None."""
        if self.head_only:
            body = b""
        if not self.head_sent:
            self.head_sent = True
            body = self.head_bytes + body
        if not more:
            self.complete = True
            self.request.finish(0, body)
            return None
        if body:
            self.request.print_stdout(body)
            return self.request.drain()
        return None

    async def _send_path(self, path):
        """The http.response.pathsend extension: the file at ``path`` (the
        ASGI spec: absolute), by sendfile(2) inside STDOUT records."""
        request = self.request
        if self.head_sent:
            raise RuntimeError("http.response.pathsend after http.response.body")
        head = self.offload and self.offload.head(request.connection.writer, self.status,
                                                  _str_headers(self.headers), path)
        if head:
            self.head_sent = self.complete = True
            request.finish(0, head)
            return
        with open(path, "rb") as f:
            self.head_sent = True
            request.print_stdout(self.head_bytes)
            if not self.head_only:
                await request.send_file(f.fileno())
        self.complete = True
        if request._aborted:
            raise _gone_error(request)
        request.finish(0)


def _mark_coroutine_function(func):
    """Mark ``func``, a function that returns an awaitable, as a coroutine
    function: asgiref's async_to_sync asks before it runs ASGI's send
    (inspect.iscoroutinefunction from 3.12, asyncio's before).  What
    inspect.markcoroutinefunction does, on every version."""
    import inspect
    try:
        if hasattr(inspect, "markcoroutinefunction"):
            inspect.markcoroutinefunction(func)
        else:
            func._is_coroutine = asyncio.coroutines._is_coroutine
    except AttributeError:
        pass    # Cython before 3.1 (Python 3.6, 3.7): _is_coroutine is read-only
    return func


class _ASGIResponse(_ASGIResponseMethods):
    """One request's ASGI ``receive`` and ``send`` (bound methods), and
    what they have done."""

    __slots__ = ("request", "status", "headers", "head_bytes", "head_sent", "complete",
                 "head_only", "body_done", "offload", "make_head")

    def __init__(self, request, offload=None, make_head=_asgi_head):
        self.request = request
        self.offload = offload
        self.make_head = make_head  # the core's _asgi_head
        self.status = None          # the status line, once http.response.start came
        self.headers = None         # its headers, as the application gave them
        self.head_bytes = None
        self.head_sent = False
        self.complete = False
        self.head_only = request.params.get("REQUEST_METHOD") == "HEAD"
        self.body_done = False      # the last http.request went out


class ASGIGateway(Gateway):
    """Runs an ASGI 3 application on an AsyncRequest (``await
    gateway(request)``), with the policy of every gateway, and its
    lifespan (``startup``, ``shutdown``)."""

    core = None

    def __init__(self, app, access_log=False, offload=None, core=None):
        Gateway.__init__(self, app, access_log, offload)
        # ``core`` as WSGIGateway's: whose asgi_scope and _asgi_head build
        # the scopes and heads.
        self.core = core = core or self.core or sys.modules[__name__]
        self._make_scope = core.asgi_scope
        self._make_head = core._asgi_head
        self._response_class = core._ASGIResponse
        self.state = {}             # the lifespan state, copied into each scope
        self._lifespan = None       # the lifespan task, while it runs
        self._to_app = self._from_app = None
        self._lifespan_receiving = False

    async def __call__(self, request):
        response = self._response_class(request, self.offload, self._make_head)
        status = None
        try:
            await self.app(self._make_scope(request, self.state), response.receive,
                           response.send)
            if not response.complete and not request.finished:
                raise RuntimeError("the ASGI application returned before its response was "
                                   "complete" if response.head_sent else
                                   "the ASGI application returned without a response")
            status = response.status
        except RequestError as exc:
            status = self._request_failed(request, response.head_sent, exc) or response.status
        except Exception:
            if not request._aborted:
                status = self._app_failed(request, response.head_sent) or response.status
        if request._aborted and not request.finished:
            # The web server aborted it or went away, and the application
            # stopped (frameworks raise their ClientDisconnect): one line.
            self._request_failed(request, response.head_sent, _gone_error(request))
        return status

    # -- lifespan (the ASGI lifespan spec) --------------------------------------

    async def startup(self):
        """Start the application's lifespan.  An application that raises
        before it receives the first message does not speak the protocol:
        it is served without.

        Raises:
            RuntimeError: startup failed (lifespan.startup.failed, or an
                exception after the startup message).
        """
        self._to_app = asyncio.Queue()
        self._from_app = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": _ASGI, "state": self.state}
        self._lifespan = asyncio.ensure_future(self._run_lifespan(scope))
        await self._to_app.put({"type": "lifespan.startup"})
        reply = await self._from_app.get()
        if reply is None:
            self._lifespan = None
            return
        if reply["type"] == "lifespan.startup.failed":
            raise RuntimeError("the application's lifespan startup failed: %s"
                               % (reply.get("message") or "(no message)"))
        if reply["type"] != "lifespan.startup.complete":
            raise RuntimeError("unexpected lifespan message %r" % (reply["type"],))

    async def shutdown(self):
        """End the lifespan: lifespan.shutdown, and wait for its answer."""
        if self._lifespan is None or self._lifespan.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        reply = await self._from_app.get()
        if reply is not None and reply["type"] == "lifespan.shutdown.failed":
            log.error("the application's lifespan shutdown failed: %s", reply.get("message"))

    async def _run_lifespan(self, scope):
        try:
            await self.app(scope, self._lifespan_receive, self._from_app.put)
        except Exception as exc:
            if not self._lifespan_receiving:
                log.info("the application does not use the ASGI lifespan protocol "
                         "(it raised %s: %s)", type(exc).__name__, exc)
            else:
                log.error("lifespan: the application raised\n%s",
                          traceback.format_exc().rstrip())
                await self._from_app.put({"type": "lifespan.startup.failed",
                                          "message": "%s: %s" % (type(exc).__name__, exc)})
                return
        await self._from_app.put(None)

    async def _lifespan_receive(self):
        self._lifespan_receiving = True
        return await self._to_app.get()


class _AsyncView(object):
    """A blocking Request as the ASGI gateway sees an AsyncRequest (for the
    development server, one request at a time): its awaits block."""

    def __init__(self, request):
        self._request = request

    def __getattr__(self, name):
        return getattr(self._request, name)

    def __setattr__(self, name, value):
        if name == "_request":
            object.__setattr__(self, name, value)
        else:
            setattr(self._request, name, value)     # the policy's keep_conn = False

    async def read_stdin_chunk(self):
        request = self._request
        if not request._buffer:
            request._fill()
        return request._take(None)

    async def wait_disconnect(self):
        request = self._request
        while not (request.is_aborted or request.finished):
            await asyncio.sleep(0.05)

    async def drain(self):
        pass

    async def send_file(self, fd, offset=0, count=None):
        return self._request.send_file(fd, offset, count)


class BlockingASGIGateway(object):
    """An ASGI gateway for a blocking server (``--http --asgi``, for
    development): each request runs to its end on this gateway's own loop;
    the lifespan's startup runs at once, its shutdown at exit."""

    def __init__(self, app, access_log=False, offload=None, loop="auto"):
        import atexit
        self.gateway = ASGIGateway(app, access_log, offload)
        self.access_log = access_log
        self.loop = _new_loop(loop)[0]
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.gateway.startup())
        atexit.register(self.close)

    def __call__(self, request):
        self.loop.run_until_complete(self.gateway(_AsyncView(request)))

    def reject(self, conn, request_id, code):
        return self.gateway.reject(conn, request_id, code)

    def close(self):
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.gateway.shutdown())
            self.loop.close()


class _AcceptedSocket(socket.socket):
    """An accepted connection's socket whose ``family`` and ``type`` are
    plain ints: socket.socket's properties make an enum member at each
    read (about 5k instructions under callgrind), and the loop's
    connect_accepted_socket reads both for every connection."""

    __slots__ = ("family", "type")

    def __init__(self, family, type, proto, fileno):     # as socket.dup() calls it
        socket.socket.__init__(self, family, type, proto, fileno)
        self.family = int(family)
        self.type = int(type)


class AsyncServer(_ServerBase):
    """Serves FastCGI from ``listener`` with an async gateway
    (``await gateway(request)``) on an asyncio loop (see the section
    comment).  The arguments of Server, plus:

        max_concurrency: requests the worker runs at once (and one
            connection at most); FCGI_MAX_REQS says it.
        max_conns: connections the worker holds; FCGI_MAX_CONNS says it
            times ``workers``.
        loop: "auto" (uvloop when installed), "asyncio" or "uvloop".

    The loop is made here and the gateway's ``startup`` (the ASGI
    lifespan) runs in it, so a failing startup fails the worker's boot.
    """

    core = None
    HANDS_OVER = True               # serve_forever takes a Handover

    def __init__(self, gateway, listener, *, core=None, max_body=None,
                 max_param_size=DEFAULT_MAX_PARAM_SIZE,
                 max_params_size=DEFAULT_MAX_PARAMS_SIZE, allow=None,
                 max_requests=0, max_conns=ASYNC_MAX_CONNECTIONS, workers=1,
                 board=None, status_path=None, ping_path=None, max_queue_wait=0,
                 access_log=None, max_rss=0, max_concurrency=DEFAULT_MAX_CONCURRENCY,
                 loop="auto"):
        self._configure(gateway, listener, core, max_body, max_param_size, max_params_size,
                        allow, max_requests, max_conns, workers, board, status_path, ping_path,
                        max_queue_wait, access_log, max_rss)
        self.request_class = self.core.AsyncRequest
        self.max_concurrency = max_concurrency
        self.refused = 0            # OVERLOADED answers not logged yet
        self.refused_logged = 0.0
        self._handover = None       # _serve's
        self.connections = set()
        self._running = {}          # AsyncRequest -> its start (monotonic), oldest first
        self._accepting = False
        self.last_accept = 0.0      # loop time (a stopping pool waits for a quiet queue)
        self._stopped = None
        self.loop = _new_loop(loop)[0]
        asyncio.set_event_loop(self.loop)
        startup = getattr(gateway, "startup", None)
        if startup is not None:
            self.loop.run_until_complete(startup())

    @property
    def loop_name(self):
        """"uvloop" or "asyncio"."""
        return "uvloop" if type(self.loop).__module__.startswith("uvloop") else "asyncio"

    @property
    def running(self):
        """How many requests run now."""
        return len(self._running)

    @property
    def overloaded(self):
        return len(self._running) >= self.max_concurrency

    def new_parser(self):
        return self.parser_class(max_param_size=self.max_param_size,
                                 max_params_size=self.max_params_size,
                                 max_body=self.max_body,
                                 max_conns=self.max_conns * self.workers,
                                 max_reqs=self.max_concurrency, mpxs_conns=True)

    def stop(self):
        """Stop gracefully (signal-safe): no new connections; the running
        requests end, then the worker."""
        self.alive = False
        loop = self.loop
        if self._stopped is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_main)

    def _wake_main(self):
        for request in self._running:
            if request.keep_conn and not request.finished:
                self.retire(request)
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    # -- the loop ---------------------------------------------------------------------

    def serve_forever(self, parent_pid=None, handover=None):
        """Serve until stop() (or the parent process ``parent_pid`` dies),
        then end the lifespan and close the loop.  ``handover``: as
        Server.serve_forever's."""
        loop = self.loop
        try:
            loop.run_until_complete(self._serve(parent_pid, handover))
            shutdown = getattr(self.gateway, "shutdown", None)
            if shutdown is not None:
                loop.run_until_complete(shutdown())
        finally:
            loop.close()

    async def _serve(self, parent_pid, handover):
        loop = self.loop
        self._stopped = loop.create_future()
        self.listener.setblocking(False)
        self._start_accepting()
        self._handover = handover
        if handover is not None:
            loop.add_reader(handover.fd, self._take, handover)
        while self.alive:
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("supervisor %d is gone; worker exits", parent_pid)
                self.alive = False
                break
            await asyncio.wait([self._stopped], timeout=1.0)
        if self.drain_backlog:
            # As Server._finish_backlog: accepting on until the queue is quiet.
            self.last_accept = loop.time()
            while loop.time() - self.last_accept < BACKLOG_SETTLE:
                await asyncio.sleep(0.05)
        self._stop_accepting()
        if handover is not None:
            loop.remove_reader(handover.fd)         # taking no more
            if not self._pool_serves_on():
                self._handover = None               # the pool stops: retire them
        if self.drain_backlog:
            self.listener.close()
        # As Server._linger: kept connections are served a moment longer,
        # each closed after its answer; the running requests end.
        deadline = loop.time() + KEPT_LINGER
        while self._running or (self.connections and loop.time() < deadline):
            if self._handover is not None:
                self._hand_over(self._handover)     # the ones idle now
            for conn in list(self.connections):
                if not conn.requests and loop.time() >= deadline:
                    conn.closing = True
                    conn._close_if_idle()
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        await asyncio.sleep(0)      # the transports' close callbacks

    def _start_accepting(self):
        if not self._accepting and (self.alive or self.drain_backlog):
            self.loop.add_reader(self.listener.fileno(), self._accept)
            self._accepting = True

    def _stop_accepting(self):
        if self._accepting:
            self.loop.remove_reader(self.listener.fileno())
            self._accepting = False

    def _accept(self):
        family = int(self.listener.family)
        nodelay = family != socket.AF_UNIX
        for _ in range(ACCEPT_BATCH):
            if len(self.connections) >= self.max_conns:
                # Full: the kernel's backlog (or another worker) holds the rest.
                self._stop_accepting()
                return
            try:
                # As Connection.accept: accept4() gives a blocking socket,
                # which the loop makes non-blocking.
                fd, peer = self.listener._accept()
                sock = _AcceptedSocket(family, socket.SOCK_STREAM, 0, fd)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("accept failed: %s", exc)
                self._stop_accepting()      # e.g. EMFILE: do not spin
                self.loop.call_later(0.1, self._start_accepting)
                return
            self.last_accept = self.loop.time()
            if self.board is not None:
                self.board.connection()
            if self.allow is not None and not peer_allowed(self.allow, peer):
                log.warning("connection from %s refused: not in --allow", peer[0])
                if self.board is not None:
                    self.board.rejected()
                sock.close()
                continue
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _AsyncConnection(self, peer)
            self.connections.add(conn)
            self.loop.create_task(self._connect(conn, sock))

    def _take(self, handover):
        """As Server._take."""
        for sock in handover.take(self.listener.family):
            conn = _AsyncConnection(self, _peer_of(sock))
            self.connections.add(conn)
            self.loop.create_task(self._connect(conn, sock))

    def _hand_over(self, handover, connections=None):
        """As Server._hand_over: the connections (``connections``, or all)
        with no request running, nothing unread in their parser and
        nothing left to write."""
        if handover is None:
            return
        idle = []
        for conn in (self.connections if connections is None else connections):
            transport = conn.transport
            if transport is None or transport.is_closing() or conn.closing or \
                    conn._reading_paused or transport.get_write_buffer_size() or \
                    not _is_idle(conn):
                continue
            transport.pause_reading()       # what comes now waits for the new owner
            idle.append(conn)
        if not idle:
            return
        given = handover.give([conn.transport.get_extra_info("socket").fileno() for conn in idle])
        for conn in idle[:given]:
            conn.close()
        for conn in idle[given:]:
            conn.transport.resume_reading()
        if given:
            log.info("worker %d stops: %d kept connection(s) handed to the other workers",
                     os.getpid(), given)

    async def _connect(self, conn, sock):
        try:
            await self.loop.connect_accepted_socket(lambda: conn, sock)
        except OSError as exc:
            log.warning("connection from %s: %s", conn.peer_text, exc)
            self._connection_closed(conn)
            sock.close()

    def _connection_closed(self, conn):
        self.connections.discard(conn)
        if (self.alive or self.drain_backlog) and not self._accepting and \
                len(self.connections) < self.max_conns:
            self._start_accepting()

    # -- requests -------------------------------------------------------------------------

    def _start(self, request):
        if not self.alive and request.keep_conn:
            self.retire(request)
        running = self._running
        running[request] = now = time.monotonic()
        waited = None
        if self.board is not None:
            # The row shows the oldest request; every one's wait counts.
            waited = self.board.began(request, len(running) == 1, True, now)
        began = None
        if self.extras is not None and self.extras.access_log is not None:
            began = self.extras.access_log.begin()
        coro = self._run(request, waited, began)
        if self.loop.get_task_factory() is not None:
            request.task = self.loop.create_task(coro)
        elif _EAGER_TASKS:
            return coro     # _start_eagerly, once the connection's buffer is read
        else:
            # What the loop's create_task makes (uvloop's too), named.
            request.task = asyncio.Task(coro, loop=self.loop, **_TASK_NAME)
        return None

    def _start_eagerly(self, request, coro):
        """Run ``coro`` now, in the callback that read the request, until it
        first waits: an application that answers without waiting is done
        without a step of the loop.  Only after the rest of what arrived
        with it is parsed (its stdin's end, an abort, a protocol error), as
        for a task the loop starts later."""
        request.task = asyncio.Task(coro, loop=self.loop, eager_start=True, **_TASK_NAME)

    async def _run(self, request, waited=None, began=None):
        status = None
        try:
            status = self.intercept(request, waited) if self.extras is not None else False
            if status is False:
                status = await self.gateway(request)
        finally:
            if not request.finished:
                request.keep_conn = False
                request.finish(1)
            conn = request.connection
            if not request.keep_conn:
                # The policy closes it (a response cut short, a limit), as
                # the web server asked, or the connection is over.
                conn.closing = True
                conn._close_if_idle()
            if request.unread_error:
                self.connection_failed(conn, request.unread_error)
            self._end(request, status, began)

    def _end(self, request, status, began):
        running = self._running
        first = next(iter(running)) is request
        started = running.pop(request)
        board = self.board
        if board is not None:
            if not running and status is not _NOT_COUNTED:
                board.finished(status, started)     # counted, and the worker idle
            else:
                if status is not _NOT_COUNTED:
                    board.done(status, time.monotonic() - started)
                if first:
                    # --timeout watches the oldest running request; the
                    # status page shows it.
                    if running:
                        oldest = next(iter(running))
                        board.began(oldest, True, False, running[oldest])
                    else:
                        board.busy(0.0)
        if self.extras is not None:
            # Requests interleave here: no CPU time of one request.
            self.after(request, status, began, concurrent=True)
        self.served += 1
        if self.max_requests and self.served >= self.max_requests and self.alive:
            log.info("served %d requests (--max-requests): worker recycles", self.served)
            self.stop()

    def describe_stuck(self):
        """Where the oldest running request awaits (--timeout's log): its
        task's chain of awaits, innermost last."""
        for request in self._running:
            task = request.task
            if task is not None:
                coro = task.get_coro() if hasattr(task, "get_coro") else task._coro
                lines = []
                while coro is not None:
                    frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                    if frame is None:
                        break
                    lines.append('  File "%s", line %d, in %s' % (
                        frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
                    coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
                return "the oldest request, %d %s %s, awaits at:\n%s" % (
                    request.request_id, request.method, request.params.get("REQUEST_URI", ""),
                    "\n".join(lines))
        return ""


def _new_loop(choice):
    """A new event loop, as ``--loop`` chooses (see _loop_name).  Returns
    (loop, name)."""
    name = _loop_name(choice)
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop(), name
    return asyncio.new_event_loop(), name


##############################################################################
# Development HTTP server  ####################################################
##############################################################################
#
# ``--http ADDR`` serves the application over plain HTTP/1.1 for local
# development, through the same Request and gateway as FastCGI: the HTTP
# request becomes the params nginx would send with the README's config
# (SCRIPT_NAME "", PATH_INFO the decoded path, every header as HTTP_*), the
# body becomes the STDIN stream, and the CGI response the gateway writes is
# turned into an HTTP response (chunked when it has no Content-Length).  Not
# for production: no timeouts on slow clients, no TLS.

_HTTP_MAX_LINE = 65536
_HTTP_MAX_HEADERS = 100
_HTTP_REASONS = {400: "Bad Request", 413: "Content Too Large", 431: "Request Header Fields Too Large",
                 501: "Not Implemented", 505: "HTTP Version Not Supported"}


class _SocketReader(object):
    """Buffered reads from a socket, with the buffered count visible (the
    selector must know whether a pipelined request is already here)."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _more(self):
        data = self.sock.recv(65536)
        if data:
            self.buf += data
        return bool(data)

    def readline(self, limit):
        """A line with its b"\n"; b"" at EOF; ValueError past ``limit``."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > limit:
                raise ValueError("line too long")
            if not self._more():
                line = bytes(self.buf)
                del self.buf[:]
                return line

    def read(self, n):
        """Up to ``n`` bytes (fewer only at EOF)."""
        while len(self.buf) < n and self._more():
            pass
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


class _HTTPBody(object):
    """Stands in for the Parser on an HTTP connection: hands the request
    body to the Request as STDIN events (Content-Length or chunked)."""

    buffered = 0
    keep_conn = True
    error = 0

    def __init__(self, reader, length, chunked, max_body):
        self.reader = reader
        self.left = length          # None: chunked
        self.chunked = chunked
        self.max_body = max_body
        self.seen = 0
        self.done = not chunked and not length

    def read_event(self, sock):
        if self.done:
            return (FCGI_STDIN, 1, b"")
        try:
            if self.chunked:
                line = self.reader.readline(_HTTP_MAX_LINE)
                size_text = line.split(b";")[0].strip()
                if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
                    return EOF if not line else PROTO
                size = int(size_text, 16)
                if size == 0:
                    while self.reader.readline(_HTTP_MAX_LINE).strip():
                        pass                # trailers are dropped
                    self.done = True
                    return (FCGI_STDIN, 1, b"")
                data = self.reader.read(size)
                self.reader.read(2)         # CRLF after the chunk
            else:
                data = self.reader.read(min(self.left, 65536))
                self.left -= len(data)
                if not self.left:
                    self.done = True
        except (OSError, ValueError):
            return IO
        if not data:
            return EOF
        self.seen += len(data)
        if self.max_body is not None and self.seen > self.max_body:
            return CLEN
        return (FCGI_STDIN, 1, data)

    def end_request(self, request_id):
        pass


class _HTTPResponse(object):
    """Stands in for the Writer: turns the CGI response the gateway writes
    (a "Status:" head, then the body) into HTTP/1.1 bytes."""

    def __init__(self, version, keep_alive, head_only):
        self.version = version
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.head_buf = b""
        self.head_done = False
        self.chunked = False
        self.status = 0
        self._cgi = Writer()

    def head(self, status, headers):
        return self._cgi.head(status, headers)     # the same validation

    def _http_head(self, cgi_head):
        status, reason, headers, _ = _parse_cgi_response(cgi_head + b"\r\n\r\n")
        self.status = status
        names = {name.lower() for name, _ in headers}
        if "content-length" not in names and not self.head_only and status not in (204, 304):
            if self.version == "HTTP/1.1":
                self.chunked = True
                headers.append(("Transfer-Encoding", "chunked"))
            else:
                self.keep_alive = False
        headers.append(("Connection", "keep-alive" if self.keep_alive else "close"))
        lines = ["HTTP/1.1 %d %s\r\n" % (status, reason)]
        lines += ["%s: %s\r\n" % pair for pair in headers]
        return ("".join(lines) + "\r\n").encode("latin-1")

    def _body(self, data):
        if self.head_only or not data:
            return b""
        if self.chunked:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def stdout(self, request_id, data):
        data = _as_bytes(data)
        if self.head_done:
            return self._body(data)
        self.head_buf += data
        end = self.head_buf.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = self.head_buf[:end], self.head_buf[end + 4:]
        self.head_buf = b""
        self.head_done = True
        return self._http_head(head) + self._body(rest)

    def stderr(self, request_id, data):
        log.warning("application stderr: %s",
                    _as_bytes(data).decode("utf-8", "replace").rstrip())
        return b""

    def end_stderr(self, request_id):
        return b""

    def end_request(self, request_id, app_status=0, protocol_status=FCGI_REQUEST_COMPLETE):
        return b""

    def finish(self, request_id, data=b"", *, app_status=0):
        out = self.stdout(request_id, data)
        if not self.head_done:      # the application never ended its head
            self.keep_alive = False
            out += self._http_head(b"Status: 502 Bad Gateway")
            self.head_done = True
        if self.chunked:
            out += b"0\r\n\r\n"
        return out

    def response(self, request_id, status, headers, body=b"", *, app_status=0):
        return self.finish(request_id, self.head(status, headers) + _as_bytes(body),
                           app_status=app_status)

    def send_file(self, sock, request_id, fd, offset=0, count=None):
        """The body from a file descriptor, by sendfile(2)."""
        if count is None:
            count = max(os.fstat(fd).st_size - offset, 0)
        if self.head_only or not count:
            return 0
        try:
            if self.chunked:
                sock.sendall(b"%x\r\n" % count)
            sent = 0
            while sent < count:
                n = os.sendfile(sock.fileno(), fd, offset + sent, count - sent)
                if n == 0:
                    break
                sent += n
            if sent < count:                # the file was shorter: keep framing
                sock.sendall(b"\0" * (count - sent))
            if self.chunked:
                sock.sendall(b"\r\n")
            return sent
        except OSError:
            return SEND


def _uri_path(raw):
    """The decoded, normalised path of a request target, as nginx's $uri:
    %XX decoded (as latin-1 text), // merged, . and .. resolved."""
    from urllib.parse import unquote_to_bytes
    path = unquote_to_bytes(raw).decode("latin-1")
    parts = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part and part != ".":
            parts.append(part)
    trailing = path.endswith("/") or path.endswith("/.") or path.endswith("/..")
    return "/" + "/".join(parts) + ("/" if trailing and parts else "")


class _HTTPConnection(Connection):
    """An HTTP connection: the body comes from ``parser`` (an _HTTPBody per
    request), and ``poll`` only peeks, never taking a pipelined request's
    bytes."""

    __slots__ = ()

    def read_event(self):
        if self.error:
            return self.error
        return self.parser.read_event(self.sock)

    def poll(self, read=True):
        if not read or self.error:
            return
        try:
            peek = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            peek = b""
        if not peek:
            self.route(self._fail(EOF))     # the client went away

    def end_request(self, request_id):
        self.requests.pop(request_id, None)
        return 0


class HTTPServer(Server):
    """``--http``: serves the gateway over HTTP/1.1 (development only)."""

    connection_class = _HTTPConnection
    HANDS_OVER = False              # development: its connections close when it stops

    def retire(self, request, hand_over=True):
        """HTTP says it with "Connection: close"; a development server just
        closes (serve_connection)."""

    def new_connection(self, conn):
        conn.parser = _SocketReader(conn.sock)  # replaced per request, see serve_connection

    def serve_connection(self, conn, wait=True):
        reader = conn.parser if isinstance(conn.parser, _SocketReader) else conn.parser.reader
        busy_slot = self.busy_slot
        while True:
            if busy_slot is not None:
                busy_slot(time.monotonic())     # as in Server.serve_connection
            try:
                keep, request = self._read_request(conn, reader)
            except (OSError, ValueError) as exc:
                keep, request = self._http_error(conn, 400, str(exc)), None
            if request is None:
                if busy_slot is not None:
                    busy_slot(0.0)
                return keep
            self.handle(request)
            if (not (request.keep_conn and conn.writer.keep_alive) or request.connection_lost
                    or not self.alive):
                return False
            body = conn.parser
            while not body.done:
                # The body the application left comes before the next
                # request: read it off (at most --max-body).
                if type(body.read_event(conn.sock)) is int:
                    return False
            conn.parser = reader
            if not reader.buf:
                return True

    def _http_error(self, conn, status, why):
        log.warning("http %s: %d %s", conn.peer_text, status, why)
        body = ("%d %s\n" % (status, _HTTP_REASONS.get(status, ""))).encode()
        try:
            conn.sock.sendall(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d"
                              b"\r\nConnection: close\r\n\r\n%s"
                              % (status, _HTTP_REASONS.get(status, "").encode(), len(body), body))
        except OSError:
            pass
        return False

    def _read_request(self, conn, reader):
        """Read one request head; returns (keep, Request or None)."""
        line = reader.readline(_HTTP_MAX_LINE)
        while line in (b"\r\n", b"\n"):        # RFC 9112 2.2: ignore leading empty lines
            line = reader.readline(_HTTP_MAX_LINE)
        if not line:
            return False, None
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return self._http_error(conn, 400, "bad request line %r" % line[:100]), None
        method, target, version = parts
        params = {}
        headers = {}
        size = 0
        while True:
            line = reader.readline(_HTTP_MAX_LINE)
            size += len(line)
            if line in (b"\r\n", b"\n", b""):
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name or not _TCHAR.issuperset(name):
                return self._http_error(conn, 400, "bad header line"), None
            if len(headers) >= _HTTP_MAX_HEADERS or size > self.max_params_size:
                return self._http_error(conn, 431, "too many header bytes"), None
            key = name.lower()
            value = value.strip()
            headers[key] = headers[key] + ", " + value if key in headers else value
            env_name = "HTTP_" + name.upper().replace("-", "_")
            params[env_name] = params[env_name] + ", " + value if env_name in params else value
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length", "")
        if length and (chunked or length.strip("0123456789")):
            return self._http_error(conn, 400, "bad Content-Length"), None
        if self.max_body is not None and length and int(length) > self.max_body:
            return self._http_error(conn, 413, "body over --max-body"), None
        connection = headers.get("connection", "").lower()
        keep = (version == "HTTP/1.1" and "close" not in connection) or \
            (version == "HTTP/1.0" and "keep-alive" in connection)
        if headers.get("expect", "").lower() == "100-continue":
            conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        path, _, query = target.partition("?")
        sock = conn.sock
        server_addr = sock.getsockname()
        peer_addr = sock.getpeername() if sock.family != socket.AF_UNIX else ("", 0)
        host = headers.get("host", "")
        params.update({
            "QUERY_STRING": query, "REQUEST_METHOD": method,
            "CONTENT_TYPE": headers.get("content-type", ""), "CONTENT_LENGTH": length,
            "SCRIPT_NAME": "", "PATH_INFO": _uri_path(path), "REQUEST_URI": target,
            "DOCUMENT_URI": _uri_path(path), "DOCUMENT_ROOT": os.getcwd(),
            "SERVER_PROTOCOL": version, "REQUEST_SCHEME": "http",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_SOFTWARE": "fastfcgi/%s (development)" % __version__,
            "REMOTE_ADDR": str(peer_addr[0]), "REMOTE_PORT": str(peer_addr[1]),
            "REMOTE_USER": "",
            "SERVER_ADDR": str(server_addr[0]) if isinstance(server_addr, tuple) else "",
            "SERVER_PORT": str(server_addr[1]) if isinstance(server_addr, tuple) else "",
            "SERVER_NAME": host.rsplit(":", 1)[0].strip("[]") if host else "localhost",
            "REDIRECT_STATUS": "200",
        })
        conn.parser = _HTTPBody(reader, int(length) if length else 0, chunked, self.max_body)
        conn.writer = _HTTPResponse(version, keep, method == "HEAD")
        conn.send_file = conn.writer.send_file
        return keep, self.request_class(conn, 1, FCGI_RESPONDER, FCGI_KEEP_CONN if keep else 0,
                                        params)


##############################################################################
# Status  #####################################################################
##############################################################################
#
# The scoreboard: one block of shared memory the supervisor maps before it
# forks: the pool's row, the retired workers' totals, then a row per worker
# slot.  A worker writes
# only its row, the supervisor only the pool row, with plain stores of
# 8-byte numbers: no lock on the request path (a reader may see a row in
# mid-update, a count one ahead of its histogram; a status page lives with
# that).  Row items are read as doubles or as counts of the same memory.
#
# --status ADDR is served by the supervisor itself from this block, so it
# answers when every worker is busy or stuck (PHP-FPM needed a separate
# pm.status_listen for that); --status-path and --ping-path are answered by
# a worker on the main listener, never by the application, from the same
# block.

# Request durations, seconds: OpenTelemetry's default histogram bounds.
DURATION_BUCKETS = (0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0,
                    2.5, 5.0, 7.5, 10.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
RESPAWN_REASONS = ("crash", "timeout", "max_requests", "reload", "rss")
# What changed the pool's size last: the dynamic manager (up for load, down
# for idleness) or a signal (TTIN, TTOU move the range).
SCALING_DECISIONS = ("none", "up", "down", "ttin", "ttou")

_ROW = 96                   # items (8 bytes each) in a row
# A worker's row:
_W_BUSY = 0                 # d: monotonic time its request began; 0 idle; -1 booting
_W_PID = 1                  # q: 0 when the slot is free (written by the supervisor)
_W_STARTED = 2              # d: wall-clock start
_W_CLASSES = 3              # q x 6: responses by STATUS_CLASSES
_W_SUM = 9                  # d: request durations' sum
_W_LAST = 10                # d: the last request's duration
_W_CONNS = 11               # q: connections accepted
_W_REJECTED = 12            # q: requests refused by a limit (413, 431) or --allow
_W_TEXT_LEN = 13            # q: bytes of the current request's text
_W_QUEUE_DROPPED = 14       # q: requests answered 503 for --max-queue-wait
_W_QUEUE_SUM = 15           # d: queue waits' sum (X-Request-Start)
_W_BUCKETS = 16             # q x 16: durations <= DURATION_BUCKETS[i], then +Inf
_W_QUEUE_BUCKETS = 32       # q x 16: queue waits, the same buckets
_W_LAST_CPU = 48            # d: the last request's CPU seconds (when measured)
_W_LAST_RSS = 49            # q: the worker's RSS after its last request, bytes (when measured)
_W_RECYCLE = 50             # q: why the worker ends on its own: 0, or _RECYCLE_RSS
_W_CLIENT_LEN = 51          # q: bytes of the current request's client address
_W_CLIENT = 52              # its REMOTE_ADDR, utf-8, 6 items
_CLIENT_BYTES = 48
_W_TEXT = 64                # "METHOD URI" of the current request, utf-8, to the row's end
_TEXT_BYTES = (_ROW - _W_TEXT) * 8
# What the retired row adds up: counts, and sums of seconds.
_COUNTED = tuple(range(_W_CLASSES, _W_CLASSES + 6)) + (_W_CONNS, _W_REJECTED,
                                                       _W_QUEUE_DROPPED) + tuple(
    range(_W_BUCKETS, _W_BUCKETS + 16)) + tuple(range(_W_QUEUE_BUCKETS, _W_QUEUE_BUCKETS + 16))
_SUMMED = (_W_SUM, _W_QUEUE_SUM)
# The pool's row (row 0):
_P_STARTED = 0              # d: wall-clock start
_P_RESPAWNS = 1             # q x 5: by RESPAWN_REASONS
_P_MAX_BUSY = 6             # q: most workers busy at once (sampled)
_P_ALL_BUSY = 7             # q: times every worker was found busy (sampled)
_P_QUEUE = 8                # q: listen queue now (sampled)
_P_QUEUE_MAX = 9            # q: its maximum
_P_BACKLOG = 10             # q: the listen backlog
_P_WANTED = 11              # q: workers wanted (TTIN / TTOU change it)
_P_SLOW = 12                # q: requests reported by --slow-log
_P_SEQ = 13                 # q: odd while release() moves a row into the retired one
# The dynamic worker manager's (--workers MIN:MAX; a static pool has MIN = MAX):
_P_MIN = 14                 # q: workers kept at least (TTIN / TTOU move MIN and MAX)
_P_MAX = 15                 # q: workers started for load at most
_P_SCALE_UPS = 16           # q: workers added because all were busy and connections waited
_P_SCALE_DOWNS = 17         # q: workers retired after --idle-timeout idle
_P_LAST_SCALING = 18        # q: the last decision, an index in SCALING_DECISIONS
_P_LAST_SCALING_TIME = 19   # d: its wall-clock time; 0 none yet
_P_LAST_SCALING_WANTED = 20  # q: the workers wanted after it
_P_STATE = 21               # q: an index in POOL_STATES (the ping answers 503 but serving)
_P_SERVE_QUEUE = 22         # q: 1 when a stopping pool's door is closed: the queue is served
# 23 .. 31: free.
# Row 1: the retired workers' totals (a worker row's layout).
# Row 2: the history the status page's chart draws, written by the
# supervisor only: every _HISTORY_STEP seconds the requests served so far,
# into a ring.  A reader takes one sample less than the ring holds, so the
# one slot being overwritten meanwhile is never among those it reads.
_HISTORY_ROW = 2
_H_WRITTEN = 0              # q: samples written so far
_H_TIME = 1                 # d: wall-clock time of the newest sample
_H_RING = 2                 # q x 94: requests served at each sample
_HISTORY_SIZE = _ROW - _H_RING
_HISTORY_STEP = 5           # seconds: 92 steps, the last 7.7 minutes
_FIRST_WORKER_ROW = 3
_RECYCLE_RSS = 1            # --max-rss
# The pool's state: serving; draining (--drain-file, SIGUSR2: the ping
# fails so balancers take the host out, and everything is still served);
# stopping (TERM: new connections refused, what waits is served).
POOL_STATES = ("serving", "draining", "stopping")


class Scoreboard(object):
    """The shared status block: ``rows`` worker slots and the pool's row.
    ``info`` is what does not change while the server runs (version,
    core, limits: the status page's config)."""

    def __init__(self, rows, info=None):
        import mmap
        self.rows = rows
        self.info = dict(info or {})
        self.memory = mmap.mmap(-1, 8 * _ROW * (rows + _FIRST_WORKER_ROW))     # shared with the children
        self.d = memoryview(self.memory).cast("d")
        self.q = memoryview(self.memory).cast("Q")
        self.d[_P_STARTED] = time.time()
        self._history_due = 0.0      # monotonic time of sample()'s next history entry

    def row(self, slot):
        """The worker's view of its row (slot 0 .. rows - 1)."""
        return WorkerRow(self, slot)

    def _base(self, slot):
        return _ROW * (slot + _FIRST_WORKER_ROW)

    # -- the supervisor's side -----------------------------------------------------

    def claim(self, slot):
        """A worker is about to start in ``slot`` (before the fork): its
        row starts from zero, booting; set_pid() names it after."""
        base = self._base(slot)
        self.memory[8 * base:8 * (base + _ROW)] = bytes(8 * _ROW)
        self.d[base + _W_BUSY] = _BOOTING
        self.d[base + _W_STARTED] = time.time()

    def set_pid(self, slot, pid):
        self.q[self._base(slot) + _W_PID] = pid

    def release(self, slot, reason=None):
        """The worker in ``slot`` is gone; ``reason`` counts a respawn.
        What it served stays in the retired row, so totals never drop."""
        base = self._base(slot)
        q, d = self.q, self.d
        # A reader (a worker answering --status-path) that overlaps this
        # reads again (see snapshot): the totals never seem to go back.
        q[_P_SEQ] += 1
        q[base + _W_PID] = 0
        d[base + _W_BUSY] = 0.0
        if reason is not None:
            q[_P_RESPAWNS + RESPAWN_REASONS.index(reason)] += 1
        for i in _COUNTED:
            q[_ROW + i] += q[base + i]
        for i in _SUMMED:
            d[_ROW + i] += d[base + i]
        q[_P_SEQ] += 1

    def busy_since(self, slot):
        return self.d[self._base(slot) + _W_BUSY]

    def recycled_for(self, slot):
        """Why the worker in ``slot`` ended by itself: "rss", or None."""
        return "rss" if self.q[self._base(slot) + _W_RECYCLE] == _RECYCLE_RSS else None

    def idle_mark(self, slot):
        """None while the worker in ``slot`` is busy or booting; else a
        count that moves with every connection and request it serves, so
        equal marks at two looks mean it stayed idle in between (the
        supervisor measures idleness from its own looks: nothing more to
        store on the request path)."""
        base = self._base(slot)
        if self.d[base + _W_BUSY] != 0:
            return None
        q = self.q
        return q[base + _W_CONNS] + q[base + _W_REJECTED] + self._requests(base)

    def scaled(self, minimum, maximum, wanted, decision=None):
        """The pool's range is ``minimum`` .. ``maximum`` workers and it
        wants ``wanted``; ``decision`` (one of SCALING_DECISIONS) says
        what just changed it, counting the workers "up" adds and "down"
        retires."""
        q = self.q
        change = wanted - q[_P_WANTED]
        q[_P_MIN], q[_P_MAX], q[_P_WANTED] = minimum, maximum, wanted
        if decision is not None:
            if decision == "up":
                q[_P_SCALE_UPS] += change
            elif decision == "down":
                q[_P_SCALE_DOWNS] -= change
            q[_P_LAST_SCALING] = SCALING_DECISIONS.index(decision)
            q[_P_LAST_SCALING_WANTED] = wanted
            self.d[_P_LAST_SCALING_TIME] = time.time()

    def count_slow(self):
        self.q[_P_SLOW] += 1

    def set_state(self, state, serve_queue=False):
        """The pool is one of POOL_STATES now; stopping with
        ``serve_queue``, its workers serve the listen queue first."""
        self.q[_P_SERVE_QUEUE] = serve_queue
        self.q[_P_STATE] = POOL_STATES.index(state)

    def serves_queue(self):
        """Whether the pool stops serving its listen queue first."""
        return self.state() == "stopping" and bool(self.q[_P_SERVE_QUEUE])

    def state(self):
        return POOL_STATES[min(self.q[_P_STATE], len(POOL_STATES) - 1)]

    def current_request(self, slot):
        """The "METHOD URI" the worker in ``slot`` runs or last ran."""
        return self._text(slot, _W_TEXT, _W_TEXT_LEN, _TEXT_BYTES)

    def current_client(self, slot):
        """Its client's address."""
        return self._text(slot, _W_CLIENT, _W_CLIENT_LEN, _CLIENT_BYTES)

    def _text(self, slot, at, length, most):
        start = 8 * (self._base(slot) + at)
        size = min(self.q[self._base(slot) + length], most)
        return bytes(self.memory[start:start + size]).decode("utf-8", "replace")

    def sample(self, listener, wanted):
        """Twice a second, from the supervisor: busy workers and the
        listen queue, with their maxima; every _HISTORY_STEP seconds, the
        requests served for the status page's chart.  Returns the
        connections waiting in the listen queue, or None where the kernel
        does not say."""
        q = self.q
        q[_P_WANTED] = wanted
        busy = live = 0
        for _, base in self._live():
            live += 1
            busy += self.d[base + _W_BUSY] > 0
        q[_P_MAX_BUSY] = max(q[_P_MAX_BUSY], busy)
        if live and busy >= live:
            q[_P_ALL_BUSY] += 1
        queue = listen_queue(listener)
        if queue is not None:
            q[_P_QUEUE], q[_P_BACKLOG] = queue
            q[_P_QUEUE_MAX] = max(q[_P_QUEUE_MAX], queue[0])
        now = time.monotonic()
        if now >= self._history_due:
            # On the step's beat (sample() runs every half second or
            # sooner), so the rates' divisor holds; after a stall, anew.
            self._history_due += _HISTORY_STEP
            if self._history_due <= now:
                self._history_due = now + _HISTORY_STEP
            self._record_history()
        return queue[0] if queue is not None else None

    def _record_history(self):
        q = self.q
        base = _ROW * _HISTORY_ROW
        # The retired workers' row, plus every live worker's (as _read).
        served = self._requests(_ROW) + sum(self._requests(base) for _, base in self._live())
        written = q[base + _H_WRITTEN]
        q[base + _H_RING + written % _HISTORY_SIZE] = served
        self.d[base + _H_TIME] = time.time()
        q[base + _H_WRITTEN] = written + 1      # last: it publishes the entry

    def _live(self):
        """(slot, row base) of every slot a worker holds."""
        q = self.q
        for slot in range(self.rows):
            base = self._base(slot)
            if q[base + _W_PID]:
                yield slot, base

    def _requests(self, base):
        """Requests the row at ``base`` answered (its responses by class)."""
        return sum(self.q[base + _W_CLASSES:base + _W_CLASSES + 6])

    # -- reading -----------------------------------------------------------------------

    def snapshot(self, full=False):
        """The status as a dict: the pool, and with ``full`` a dict per
        worker.  Key names are the metrics' without the fastfcgi_ prefix."""
        for _ in range(100):
            seq = self.q[_P_SEQ]
            if not seq & 1:
                doc = self._read(full)
                if self.q[_P_SEQ] == seq:
                    return doc
            time.sleep(0.0001)
        return self._read(full)

    def _read(self, full):
        d, q = self.d, self.q
        now, mono = time.time(), time.monotonic()
        # The retired workers' row, plus every live worker's.
        total = {i: q[_ROW + i] for i in _COUNTED}
        total.update((i, d[_ROW + i]) for i in _SUMMED)
        states = {"idle": 0, "busy": 0, "booting": 0}
        workers = []
        for slot, base in self._live():
            since = d[base + _W_BUSY]
            state = "booting" if since < 0 else "busy" if since > 0 else "idle"
            states[state] += 1
            for i in _COUNTED:
                total[i] += q[base + i]
            for i in _SUMMED:
                total[i] += d[base + i]
            if full:
                workers.append({
                    "pid": q[base + _W_PID], "state": state,
                    "requests": self._requests(base),
                    "current_request": self.current_request(slot) if state == "busy" else "",
                    "current_client": self.current_client(slot) if state == "busy" else "",
                    "elapsed_seconds": round(mono - since, 6) if since > 0 else 0.0,
                    "last_request_duration_seconds": round(d[base + _W_LAST], 6),
                    # Measured only when asked (--max-rss, the access log's
                    # cpu_ms and rss_kb): else None.
                    "last_request_cpu_seconds": round(d[base + _W_LAST_CPU], 6)
                    if d[base + _W_LAST_CPU] > 0 else None,
                    "last_request_rss_bytes": q[base + _W_LAST_RSS] or None,
                    "rss_bytes": _process_rss(q[base + _W_PID]),
                    "started": d[base + _W_STARTED]})
        started = d[_P_STARTED]
        classes = [total[_W_CLASSES + i] for i in range(6)]
        doc = {
            "version": __version__, "core": self.info.get("core", ""),
            "python": sys.version.split()[0], "start_time_seconds": started,
            "uptime_seconds": round(now - started, 3),
            "config": {k: v for k, v in self.info.items() if k != "core"},
            "workers": states, "workers_wanted": q[_P_WANTED],
            "max_busy_workers": q[_P_MAX_BUSY],
            "max_workers_reached_total": q[_P_ALL_BUSY],
            "slow_requests_total": q[_P_SLOW],
            "accepted_connections_total": total[_W_CONNS],
            "requests_total": sum(classes),
            "responses_total": dict(zip(STATUS_CLASSES, classes)),
            "rejected_requests_total": total[_W_REJECTED],
            "max_queue_wait_exceeded_total": total[_W_QUEUE_DROPPED],
            "listen_queue": q[_P_QUEUE], "listen_queue_max": q[_P_QUEUE_MAX],
            "listen_queue_backlog": q[_P_BACKLOG],
            "worker_respawns_total": {reason: q[_P_RESPAWNS + i]
                                      for i, reason in enumerate(RESPAWN_REASONS)},
            "state": self.state(),
            "workers_min": q[_P_MIN], "workers_max": q[_P_MAX],
            "worker_scale_ups_total": q[_P_SCALE_UPS],
            "worker_scale_downs_total": q[_P_SCALE_DOWNS],
            "last_scaling": SCALING_DECISIONS[min(q[_P_LAST_SCALING], len(SCALING_DECISIONS) - 1)],
            "last_scaling_time_seconds": d[_P_LAST_SCALING_TIME],
            "last_scaling_workers": q[_P_LAST_SCALING_WANTED],
            "request_duration_seconds": _histogram(total, _W_BUCKETS, _W_SUM),
            "request_queue_seconds": _histogram(total, _W_QUEUE_BUCKETS, _W_QUEUE_SUM),
        }
        doc["history"] = self._history()
        if full:
            doc["worker"] = workers
        return doc

    def _history(self):
        """The chart's data: requests per second over each step, oldest
        first, and when the newest step ended."""
        q, base = self.q, _ROW * _HISTORY_ROW
        written = q[base + _H_WRITTEN]
        newest = self.d[base + _H_TIME]
        first = max(0, written - (_HISTORY_SIZE - 1))    # see _HISTORY_ROW
        served = [q[base + _H_RING + i % _HISTORY_SIZE] for i in range(first, written)]
        return {"step_seconds": _HISTORY_STEP, "end_time_seconds": newest,
                "requests_per_second": [round(max(0, b - a) / _HISTORY_STEP, 3)
                                        for a, b in zip(served, served[1:])]}

    def render(self, query=""):
        """(content type, body bytes) of the status page in the format the
        query string names, as PHP-FPM's: plain text by default, ``html``
        (a page for people, with a row per worker), ``json``,
        ``openmetrics`` (Prometheus' text format), and ``full`` for a row
        per worker.  Of several formats named, the first of that list
        wins, as in PHP-FPM."""
        words = {word.partition("=")[0] for word in query.split("&")}     # ?json, ?json=1
        doc = self.snapshot(full=bool(words & {"full", "html"}))
        if "html" in words:
            return "text/html; charset=utf-8", _html_status(doc).encode()
        if "json" in words:
            import json
            for name in ("request_duration_seconds", "request_queue_seconds"):
                doc[name]["buckets"][-1][0] = "+Inf"        # JSON has no infinity
            body = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False)
            return "application/json", body.encode() + b"\n"
        if "openmetrics" in words:
            return "text/plain; version=0.0.4; charset=utf-8", _openmetrics(doc).encode()
        return "text/plain; charset=utf-8", _plain_status(doc).encode()


def _process_rss(pid):
    """A process's resident bytes now (Linux's /proc), or None."""
    try:
        with open("/proc/%d/statm" % pid, "rb") as f:
            return int(f.read().split()[1]) * _Statm.page
    except (OSError, ValueError, IndexError):
        return None


def _histogram(total, first, summed):
    """A histogram of the status document: cumulative buckets (Prometheus'
    "le"), their sum and count."""
    running, buckets = 0, []
    for i, bound in enumerate(DURATION_BUCKETS + (float("inf"),)):
        running += total[first + i]
        buckets.append([bound, running])
    return {"buckets": buckets, "sum": round(total[summed], 6), "count": running}


def queue_wait(value, now):
    """Seconds a request waited before a worker took it, from the web
    server's X-Request-Start: "t=" and seconds (nginx's ${msec}),
    milliseconds or microseconds (Apache's %t) since the epoch, told apart
    by size.  Never below 0 (clocks disagree a little); None when the
    value is not such a time."""
    if value.startswith("t="):
        value = value[2:]
    try:
        start = float(value)
    except ValueError:
        return None
    if not 0 < start < 1e18:            # also NaN, infinities
        return None
    if start > 1e14:
        start /= 1e6
    elif start > 1e11:
        start /= 1e3
    return max(0.0, now - start)


def _queue_wait_of(request):
    start = request.params.get("HTTP_X_REQUEST_START")
    return None if start is None else queue_wait(start, time.time())


def _request_text(params):
    """What the status page shows of a running request: "METHOD URI",
    as utf-8 bytes that fit the row."""
    return ("%s %s" % (params.get("REQUEST_METHOD", "-"),
                       params.get("REQUEST_URI") or params.get("PATH_INFO", ""))).encode(
                           "utf-8", "replace")[:_TEXT_BYTES]


def _client_text(params):
    """Its client (REMOTE_ADDR), as utf-8 bytes that fit the row."""
    client = params.get("REMOTE_ADDR")
    return (client if type(client) is str else "").encode("utf-8", "replace")[:_CLIENT_BYTES]


class WorkerRow(object):
    """One worker's row of the scoreboard, what its Server writes: busy
    since when (--timeout reads it), and each request's outcome.  The
    compiled core has a typed twin (the stores go straight to memory);
    a Server takes its core's."""

    __slots__ = ("board", "slot", "d", "q", "text", "client")

    def __init__(self, board, slot):
        base = board._base(slot)
        self.board = board
        self.slot = slot
        self.d = board.d[base:base + _ROW]
        self.q = board.q[base:base + _ROW]
        self.text = memoryview(board.memory)[8 * (base + _W_TEXT):8 * (base + _ROW)]
        self.client = memoryview(board.memory)[8 * (base + _W_CLIENT):
                                               8 * (base + _W_CLIENT) + _CLIENT_BYTES]

    def busy(self, since):
        """Busy since ``since`` (monotonic), or idle with 0.0."""
        self.d[_W_BUSY] = since

    def began(self, request, show=True, queued=True, busy=0.0):
        """The worker runs ``request``: with ``show`` the status page says
        so (with ``busy``, a monotonic time, busy since then); with
        ``queued`` its queue wait (X-Request-Start) is counted.  Returns
        that wait in seconds, or None."""
        if show:
            if busy:
                self.d[_W_BUSY] = busy
            text = _request_text(request.params)
            self.text[:len(text)] = text
            self.q[_W_TEXT_LEN] = len(text)
            client = _client_text(request.params)
            self.client[:len(client)] = client
            self.q[_W_CLIENT_LEN] = len(client)
        if queued:
            wait = _queue_wait_of(request)
            if wait is not None:
                self.queued(wait)
            return wait
        return None

    def done(self, status, duration):
        """A request ended with ``status`` (a status line, a number, or
        None) after ``duration`` seconds."""
        q = self.q
        if status:
            c = status // 100 if type(status) is int else ord(status[0]) - 48
            q[_W_CLASSES + (c - 1 if 1 <= c <= 5 else 5)] += 1
        else:
            q[_W_CLASSES + 5] += 1
        d = self.d
        d[_W_SUM] += duration
        d[_W_LAST] = duration
        q[_W_BUCKETS + bisect_left(DURATION_BUCKETS, duration)] += 1

    def finished(self, status, since=None):
        """done() for the request that began at ``since`` (monotonic; by
        default the busy mark), then idle."""
        d = self.d
        if since is None:
            since = d[_W_BUSY]
        d[_W_BUSY] = 0.0
        self.done(status, time.monotonic() - since if since > 0 else 0.0)

    def queued(self, seconds):
        """The request waited ``seconds`` before the worker took it."""
        self.d[_W_QUEUE_SUM] += seconds
        self.q[_W_QUEUE_BUCKETS + bisect_left(DURATION_BUCKETS, seconds)] += 1

    def queue_dropped(self):
        self.q[_W_QUEUE_DROPPED] += 1

    def connection(self):
        self.q[_W_CONNS] += 1

    def rejected(self):
        self.q[_W_REJECTED] += 1

    def cost(self, cpu, rss):
        """What the last request cost: CPU seconds (-1: not measured) and
        the worker's RSS after it, bytes (0: not measured)."""
        self.d[_W_LAST_CPU] = cpu
        self.q[_W_LAST_RSS] = rss

    def recycling(self, reason):
        """The worker ends by itself, for ``reason`` (_RECYCLE_RSS): the
        supervisor counts the respawn by it."""
        self.q[_W_RECYCLE] = reason

    def current_request(self):
        return self.board.current_request(self.slot)


def _plain_status(doc):
    """PHP-FPM's style: "name: value" lines."""
    lines = []

    def add(name, value):
        lines.append("%-28s %s" % (name + ":", value))
    add("version", "%s (%s core, Python %s)" % (doc["version"], doc["core"], doc["python"]))
    add("start time", time.strftime("%Y-%m-%dT%H:%M:%S%z",
                                    time.localtime(doc["start_time_seconds"])))
    add("uptime seconds", int(doc["uptime_seconds"]))
    add("state", doc["state"])
    for key, value in sorted(doc["config"].items()):
        add("config " + key, value)
    for state in ("idle", "busy", "booting"):
        add("workers " + state, doc["workers"][state])
    add("requests total", doc["requests_total"])
    for key, _, _ in _POOL_METRICS[2:]:
        add(key.replace("_", " "), doc[key])
    for name, count in doc["responses_total"].items():
        add("responses " + name, count)
    for reason, count in doc["worker_respawns_total"].items():
        add("respawns " + reason.replace("_", " "), count)
    if doc["last_scaling_time_seconds"]:
        wanted = doc["last_scaling_workers"]
        add("last scaling", "%s at %s, to %d worker%s" % (
            doc["last_scaling"], time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(
                doc["last_scaling_time_seconds"])), wanted, "s"[wanted == 1:]))
    else:
        add("last scaling", "none")
    for name in ("request_duration_seconds", "request_queue_seconds"):
        add(name.replace("_", " ").replace(" seconds", "") + " count", doc[name]["count"])
        add(name.replace("_", " ").replace(" seconds", "") + " sum seconds", doc[name]["sum"])
    for worker in doc.get("worker", ()):
        lines.append("")
        for key in ("pid", "state", "requests", "current_request", "current_client",
                    "elapsed_seconds",
                    "last_request_duration_seconds", "last_request_cpu_seconds",
                    "last_request_rss_bytes", "rss_bytes"):
            add(key.replace("_", " "), "-" if worker[key] is None else worker[key])
    return "\n".join(lines) + "\n"


# The pool's metrics of one value: (status key = metric name, type, help).
_POOL_METRICS = (
    ("start_time_seconds", "gauge", "Start time, seconds since the epoch."),
    ("workers_wanted", "gauge", "Worker processes the pool keeps."),
    ("max_busy_workers", "gauge", "Most workers seen busy at once."),
    ("max_workers_reached_total", "counter", "Times every worker was found busy."),
    ("slow_requests_total", "counter", "Requests that ran past --slow-log."),
    ("accepted_connections_total", "counter", "Connections accepted."),
    ("rejected_requests_total", "counter",
     "Requests refused by a limit (413, 431), --allow or OVERLOADED."),
    ("max_queue_wait_exceeded_total", "counter",
     "Requests answered 503 after waiting past --max-queue-wait."),
    ("listen_queue", "gauge", "Connections waiting in the listen queue."),
    ("listen_queue_max", "gauge", "Most connections seen waiting in the listen queue."),
    ("listen_queue_backlog", "gauge", "Size of the listen queue."),
    ("workers_min", "gauge", "Fewest worker processes the pool keeps (--workers MIN:MAX)."),
    ("workers_max", "gauge", "Most worker processes the pool starts for load."),
    ("worker_scale_ups_total", "counter",
     "Workers started because every worker was busy and connections waited."),
    ("worker_scale_downs_total", "counter", "Workers retired after --idle-timeout idle."),
)


def _openmetrics(doc):
    """Prometheus' text exposition format (0.0.4): one fastfcgi_ prefix,
    base units, counters ending in _total."""
    out = []

    def metric(name, kind, help_text, samples):
        out.append("# HELP fastfcgi_%s %s" % (name, help_text))
        out.append("# TYPE fastfcgi_%s %s" % (name, kind))
        for labels, value in samples:
            out.append("fastfcgi_%s%s %s" % (name, labels, _number(value)))

    def label(**kw):
        return "{%s}" % ",".join('%s="%s"' % (k, str(v).replace("\\", "\\\\")
                                              .replace('"', '\\"').replace("\n", "\\n"))
                                 for k, v in sorted(kw.items()))
    metric("info", "gauge", "Version, core and Python of the server.",
           [(label(version=doc["version"], core=doc["core"], python=doc["python"]), 1)])
    metric("state", "gauge", "The pool's state: serving, draining (the ping fails, all is "
           "served) or stopping.", [(label(state=s), int(s == doc["state"])) for s in POOL_STATES])
    metric("workers", "gauge", "Worker processes by state.",
           [(label(state=s), n) for s, n in sorted(doc["workers"].items())])
    metric("requests_total", "counter", "Requests answered, by status class.",
           [(label(status=c), n) for c, n in doc["responses_total"].items()])
    for name, kind, text in _POOL_METRICS:
        metric(name, kind, text, [("", doc[name])])
    metric("worker_respawns_total", "counter", "Workers replaced, by reason.",
           [(label(reason=r), n) for r, n in sorted(doc["worker_respawns_total"].items())])
    metric("last_scaling_time_seconds", "gauge", "When the pool's size or range last "
           "changed, seconds since the epoch; 0 never.", [("", doc["last_scaling_time_seconds"])])
    for name, help_text in (
            ("request_duration_seconds", "Time a request held its worker."),
            ("request_queue_seconds", "Time a request waited before a worker took it "
             "(from X-Request-Start).")):
        hist = doc[name]
        out.append("# HELP fastfcgi_%s %s" % (name, help_text))
        out.append("# TYPE fastfcgi_%s histogram" % name)
        for bound, count in hist["buckets"]:
            out.append('fastfcgi_%s_bucket{le="%s"} %d'
                       % (name, "+Inf" if bound == float("inf") else repr(bound), count))
        out.append("fastfcgi_%s_sum %s" % (name, _number(hist["sum"])))
        out.append("fastfcgi_%s_count %d" % (name, hist["count"]))
    if "worker" in doc:
        metric("worker_requests_total", "counter", "Requests answered, by worker.",
               [(label(pid=w["pid"]), w["requests"]) for w in doc["worker"]])
        metric("worker_busy_seconds", "gauge", "How long each busy worker has run its request.",
               [(label(pid=w["pid"]), w["elapsed_seconds"]) for w in doc["worker"]])
        metric("worker_resident_memory_bytes", "gauge", "Each worker's resident memory.",
               [(label(pid=w["pid"]), w["rss_bytes"]) for w in doc["worker"]
                if w["rss_bytes"] is not None])
    return "\n".join(out) + "\n"


# The ?html page: one self-contained document (no script, no external
# asset, so a Content-Security-Policy of 'none' holds it), reloaded by a
# meta refresh without a URL: the browser asks for the same address
# again, whatever path the web server mounted the status on.
_HTML_REFRESH_SECONDS = 5

_HTML_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em 2em;
       color: #1d2430; background: #f7f8fa; }
h1 { font-size: 1.5em; margin: 0; }
h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
.sub { color: #5b6575; margin: .2em 0 1em; }
.tiles { display: flex; flex-wrap: wrap; gap: .6em; }
.tile { background: #fff; border: 1px solid #dde1e8; border-radius: 6px;
        padding: .5em .8em; min-width: 9em; }
.tile b { display: block; font-size: 1.45em; font-variant-numeric: tabular-nums; }
.tile span { color: #5b6575; font-size: .9em; }
.columns { display: flex; flex-wrap: wrap; gap: 0 2.5em; align-items: flex-start; }
table { border-collapse: collapse; background: #fff; border: 1px solid #dde1e8; }
th, td { padding: .25em .7em; text-align: left; border-bottom: 1px solid #eceff3; }
th { background: #eef1f5; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
td code { word-break: break-all; }
.state { padding: 0 .5em; border-radius: 4px; font-size: .9em; }
.idle { background: #dcf2e3; } .busy { background: #fde7b5; } .booting { background: #e3e6eb; }
svg { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; }
svg text { font: 11px system-ui, sans-serif; fill: #5b6575; }
"""


def _html_status(doc):
    """The status page for people: the pool's figures, a chart of
    requests per second over the history, a row per worker (``doc`` is
    a full snapshot) and the config.  Everything from the document is
    escaped: a worker's current request is whatever URI a client sent."""
    from html import escape

    def text(value):
        return escape(str(value))

    def tile(value, label):
        return '<div class="tile"><b>%s</b><span>%s</span></div>' % (text(value), text(label))

    def table(head, rows, numeric=()):
        # Cells are HTML already: their callers escape what they put in.
        out = ["<table><thead><tr>%s</tr></thead><tbody>"
               % "".join("<th>%s</th>" % text(h) for h in head)]
        for row in rows:
            out.append("<tr>%s</tr>" % "".join(
                '<td class="n">%s</td>' % v if i in numeric else "<td>%s</td>" % v
                for i, v in enumerate(row)))
        out.append("</tbody></table>")
        return "".join(out)

    now = doc["start_time_seconds"] + doc["uptime_seconds"]
    workers = doc["workers"]
    durations = doc["request_duration_seconds"]
    tiles = [
        tile(doc["state"], "pool state (the ping answers %s)"
             % ("pong" if doc["state"] == "serving" else "503")),
        tile("%d idle · %d busy · %d booting" % (workers["idle"], workers["busy"],
                                                  workers["booting"]),
             "workers (%d wanted, at most %d busy at once)"
             % (doc["workers_wanted"], doc["max_busy_workers"])),
        tile(doc["requests_total"], "requests"),
        tile("%d / %d / %d" % (doc["listen_queue"], doc["listen_queue_max"],
                               doc["listen_queue_backlog"]),
             "listen queue: now / max / backlog"),
        tile(doc["max_workers_reached_total"], "times every worker was busy"),
        tile(doc["slow_requests_total"], "slow requests (--slow-log)"),
        tile(doc["rejected_requests_total"], "rejected (limits, --allow)"),
        tile(doc["max_queue_wait_exceeded_total"], "503 for --max-queue-wait"),
        tile(doc["accepted_connections_total"], "connections accepted"),
        tile(_duration_text(durations["sum"] / durations["count"])
             if durations["count"] else "-", "mean request duration"),
    ]
    worker_rows = [
        (text(w["pid"]), '<span class="state %s">%s</span>' % (text(w["state"]), text(w["state"])),
         w["requests"],
         "<code>%s</code>" % text(w["current_request"]) if w["current_request"] else "",
         text(w["current_client"]),
         _duration_text(w["elapsed_seconds"]) if w["state"] == "busy" else "",
         _duration_text(w["last_request_duration_seconds"]) if w["requests"] else "",
         "%.1f MB" % (w["rss_bytes"] / 1048576) if w["rss_bytes"] else "",
         text(_local_time(w["started"])))
        for w in doc.get("worker", ())]
    page = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="refresh" content="%d">' % _HTML_REFRESH_SECONDS,
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>fastfcgi status</title><style>%s</style></head><body>" % _HTML_STYLE,
        "<h1>fastfcgi status</h1>",
        '<p class="sub">fastfcgi %s, %s core, Python %s · up %s, since %s · refreshed every '
        "%d s</p>" % (text(doc["version"]), text(doc["core"]), text(doc["python"]),
                      _span_text(doc["uptime_seconds"]),
                      text(_local_time(doc["start_time_seconds"])), _HTML_REFRESH_SECONDS),
        '<div class="tiles">%s</div>' % "".join(tiles),
        "<h2>Requests per second</h2>",
        _history_svg(doc["history"], now),
        "<h2>Workers</h2>",
        table(("pid", "state", "requests", "current request", "client", "elapsed",
               "last duration", "memory", "started"), worker_rows, numeric=(2, 7)),
        '<div class="columns"><div><h2>Responses</h2>',
        table(("status", "responses"), [(text(status), count) for status, count
                                        in doc["responses_total"].items()], numeric=(1,)),
        "</div><div><h2>Worker respawns</h2>",
        table(("reason", "respawns"), [(text(reason.replace("_", " ")), count) for reason, count
                                       in doc["worker_respawns_total"].items()], numeric=(1,)),
        "</div><div><h2>Config</h2>",
        table(("setting", "value"), [(text(k), text(v)) for k, v in sorted(doc["config"].items())]),
        "</div></div></body></html>\n"]
    return "\n".join(page)


def _local_time(seconds):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _duration_text(seconds):
    return "%.3f s" % seconds if seconds >= 1 else "%.2f ms" % (1000 * seconds)


def _span_text(seconds):
    """A duration as people say it: "3 d 4 h", "2 h 5 min", "42 s"."""
    seconds = int(seconds)
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60),
                                              ("min", 60, "s", 1)):
        if seconds >= size:
            return "%d %s %d %s" % (seconds // size, unit, seconds % size // smaller_size, smaller)
    return "%d s" % seconds


def _history_svg(history, now):
    """The chart: requests per second, each step's rate drawn flat across
    the step it was measured over, on at least a minute of time axis."""
    rates = history["requests_per_second"]
    step = history["step_seconds"]
    width, height, left, right, top, bottom = 860, 200, 50, 18, 12, 38
    plot_w, plot_h = width - left - right, height - top - bottom
    # Seconds ago of the newest sample, then of each step's start.
    newest = max(0.0, now - history["end_time_seconds"]) if rates else 0.0
    span = max(60, 60 * -(-(newest + step * len(rates)) // 60))
    peak, factors = 1, (2, 2.5, 2)      # the top of the axis: 1, 2, 5, 10, 20, 50...
    while peak < max(rates or [0]):
        peak *= factors[0]
        factors = factors[1:] + factors[:1]

    def x(ago):
        return left + plot_w * (1 - ago / span)

    def y(rate):
        return top + plot_h * (1 - rate / peak)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'role="img" aria-label="requests per second, the last %d minutes">'
           % (width, height, width, height, span // 60)]
    for share in (0, 0.5, 1):
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e3e6eb"/>'
                   '<text x="%d" y="%.1f" text-anchor="end">%s</text>'
                   % (left, width - right, y(peak * share), y(peak * share), left - 6,
                      y(peak * share) + 4, "%g" % (peak * share)))
    every = 60 if span <= 300 else 120
    for ago in range(0, int(span) + 1, every):
        out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#c4cad3"/>'
                   '<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                   % (x(ago), x(ago), top + plot_h, top + plot_h + 5, x(ago), top + plot_h + 18,
                      "now" if ago == 0 else "\u2212%d min" % (ago // 60)))
    out.append('<text transform="translate(13 %d) rotate(-90)" text-anchor="middle">'
               "requests/s</text>" % (top + plot_h // 2))
    out.append('<text x="%d" y="%d" text-anchor="middle">time (step %d s)</text>'
               % (left + plot_w // 2, height - 4, step))
    if rates:
        points = []
        for i, rate in enumerate(rates):
            began = newest + step * (len(rates) - i)
            points.append("%.1f,%.1f %.1f,%.1f" % (x(began), y(rate), x(began - step), y(rate)))
        line = " ".join(points)
        out.append('<polygon points="%.1f,%.1f %s %.1f,%.1f" fill="#3b6fd8" fill-opacity="0.15"/>'
                   % (x(newest + step * len(rates)), y(0), line, x(newest), y(0)))
        out.append('<polyline class="rps" points="%s" fill="none" stroke="#3b6fd8" '
                   'stroke-width="2"/>' % line)
    else:
        out.append('<text x="%d" y="%d" text-anchor="middle">no point yet: the first comes '
                   "%d s after the start</text>" % (left + plot_w // 2, top + plot_h // 2, step))
    out.append("</svg>")
    return "".join(out)


def _number(value):
    return repr(float(value)) if type(value) is float else str(value)


def listen_queue(listener):
    """(connections waiting, backlog) of a listening socket, or None where
    the kernel does not say: TCP_INFO for TCP (tcpi_unacked and
    tcpi_sacked of a listener), the sock_diag netlink interface for a
    unix socket (UNIX_DIAG_RQLEN; no patched kernel needed)."""
    try:
        if not sys.platform.startswith("linux"):
            return None             # the layouts below are Linux's
        if listener.family in (socket.AF_INET, socket.AF_INET6):
            info = listener.getsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_INFO", 11), 32)
            return struct.unpack_from("II", info, 24)
        if listener.family == socket.AF_UNIX:
            return _unix_listen_queue(os.fstat(listener.fileno()).st_ino)
    except (OSError, struct.error, AttributeError):
        pass
    return None


def _unix_listen_queue(inode):
    # linux/sock_diag.h, linux/unix_diag.h: a dump of the listening unix
    # sockets with their queue lengths; ours is found by inode.
    SOCK_DIAG_BY_FAMILY, NLMSG_DONE, NLMSG_ERROR = 20, 3, 2
    TCP_LISTEN, UDIAG_SHOW_RQLEN, UNIX_DIAG_RQLEN = 10, 0x10, 4
    request = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 1 << TCP_LISTEN, 0,
                          UDIAG_SHOW_RQLEN, 0xFFFFFFFF, 0xFFFFFFFF)
    header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, 0x301, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4) as nl:    # NETLINK_SOCK_DIAG
        nl.settimeout(1.0)
        nl.send(header + request)
        while True:
            data = nl.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind in (NLMSG_DONE, NLMSG_ERROR) or length < 16:
                    return None
                ino = struct.unpack_from("=I", data, offset + 20)[0]
                if ino == inode:
                    at, end = offset + 32, offset + length
                    while at + 4 <= end:
                        size, attr = struct.unpack_from("=HH", data, at)
                        if size < 4:
                            break
                        if attr == UNIX_DIAG_RQLEN:
                            return struct.unpack_from("=II", data, at + 4)
                        at += (size + 3) & ~3
                    return None
                offset += (length + 3) & ~3
            if not data:
                return None


def _status_answer(board, path, query, status_path, ping_path):
    """(status line, headers, body) for ``path`` on a status listener or
    a worker's status and ping paths, or None for any other path."""
    if path == ping_path:
        state = board.state() if board is not None else "serving"
        if state != "serving":
            # A balancer's health check takes the host out.
            return "503 Service Unavailable", [
                ("Content-Type", "text/plain"), ("Content-Length", str(len(state) + 1)),
                ("Cache-Control", "no-store")], state.encode() + b"\n"
        kind, body = "text/plain", b"pong\n"
    elif path == status_path:
        kind, body = board.render(query)
    else:
        return None
    headers = [("Content-Type", kind), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store")]
    if kind.startswith("text/html"):
        # The page needs no script and nothing from elsewhere: should an
        # escape ever be missed, the browser still runs nothing.
        headers.append(("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"))
    return "200 OK", headers, body


def serve_status_connection(sock, board, status_path, ping_path, timeout=1.0):
    """Answer one client of ``--status`` and close: a web server speaking
    FastCGI or a scraper speaking plain HTTP, told apart by the first byte
    (a FastCGI record starts with version 1; an HTTP request with a
    letter).  The supervisor serves this between its other duties, so the
    whole exchange gets ``timeout`` seconds and 64 KiB of input at most
    (socket.timeout or ValueError past them): a slow or endless client
    cannot hold it."""
    reader = _StatusReader(sock, timeout)
    data = reader.recv()
    if not data:
        return
    if data[0] == FCGI_VERSION_1:
        parser = Parser(max_conns=1)
        parser.feed(data)
        while True:
            event = parser.next_event()
            out = parser.data_to_send()
            if out:
                sock.sendall(out)       # GET_VALUES
            if event is None:
                parser.feed(reader.recv())
                continue
            if type(event) is int:
                return
            if event[0] == FCGI_PARAMS:
                params = event[4]
                path = params.get("SCRIPT_NAME", "") + params.get("PATH_INFO", "")
                status, headers, body = _status_answer(
                    board, path, params.get("QUERY_STRING", ""), status_path, ping_path) \
                    or _plain_response("404 Not Found", "not a status path\n")
                sock.sendall(Writer().response(event[1], status, headers, body))
                break
    else:
        # The request line is all we need (a scraper may end lines in LF).
        while b"\n" not in data:
            more = reader.recv()
            if not more:
                break
            data += more
        words = data.split(b"\n", 1)[0].decode("latin-1").split()
        if len(words) < 2 or words[0] not in ("GET", "HEAD"):
            answer = _plain_response("405 Method Not Allowed", "GET the status or ping path\n")
        else:
            path, _, query = words[1].partition("?")
            answer = _status_answer(board, _unquote(path.encode("latin-1")) if "%" in path
                                    else path, query, status_path, ping_path) \
                or _plain_response("404 Not Found", "not a status path\n")
        status, headers, body = answer
        head = "HTTP/1.0 %s\r\n%sConnection: close\r\n\r\n" % (
            status, "".join("%s: %s\r\n" % header for header in headers))
        sock.sendall(head.encode("latin-1") + (body if words[:1] != ["HEAD"] else b""))
    # Closing with unread input would reset the connection, maybe before
    # the answer is read: half-close, and take what is left in a moment (a
    # web server keeping the connection, fastcgi_keep_conn, does not close
    # it: we do, once its records are in).
    sock.shutdown(socket.SHUT_WR)
    reader.deadline = min(reader.deadline, time.monotonic() + 0.05)
    try:
        while reader.recv():
            pass
    except (socket.timeout, ValueError):
        pass


class _StatusReader(object):
    """recv() on a status client under one deadline and a size cap."""

    LIMIT = 65536

    def __init__(self, sock, timeout):
        self.sock = sock
        self.deadline = time.monotonic() + timeout
        self.taken = 0

    def recv(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("the status client took too long")
        if self.taken >= self.LIMIT:
            raise ValueError("the status client sent over %d bytes" % self.LIMIT)
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(self.LIMIT - self.taken)
        except socket.timeout:
            raise socket.timeout("the status client took too long")
        self.taken += len(data)
        return data


##############################################################################
# Supervisor  #################################################################
##############################################################################
#
# The supervisor binds first, then forks the workers, and from then on only
# watches: signal handlers record the signal in a bounded queue and wake the
# main loop through a self-pipe (they never log); the loop reaps with
# waitpid(WNOHANG), replaces dead workers (backing off when they keep
# crashing), kills workers whose request outlived --timeout, and handles
#   TERM, INT  graceful stop: workers finish their request, then exit 0;
#   HUP        graceful reload: a new generation imports fresh code, and once
#              it is up the old one retires (oldest first);
#   TTIN, TTOU one worker more or fewer: they move --workers MIN:MAX by one
#              (MIN never below 1), so a static pool (MIN = MAX) grows and
#              shrinks as gunicorn's does, and a dynamic one keeps its width.
#
# With --workers MIN:MAX the pool's size follows the load (PHP-FPM's
# pm = dynamic, uWSGI's cheaper), decided from what the supervisor samples
# anyway, at least twice a second: when every worker that is up is busy
# and more connections wait in the listen queue than workers are on their
# way, it starts workers, as a token bucket of --spawn-rate per second
# allows (a Python worker imports the whole application: a burst shorter
# than a boot is better served by the queue), never above MAX; a worker
# seen idle for --idle-timeout seconds, while more than MIN run, retires
# gracefully (SIGTERM), the longest idle first: the one the load needed
# least.  Idle means its busy mark was 0 and its counts did not move
# between two looks, so the request path stores nothing more.  Retiring
# for idleness is no respawn; crashes and --max-requests are replaced as
# in a static pool, and HUP starts as many new workers as run.
#
# A worker's "busy since" time lives in a shared memory slot: written when
# the worker starts reading a request (so a peer that stalls mid-request
# counts, as a slow application does), zeroed when it ends, -1 while the
# worker boots.  An idle kept connection leaves it at zero, so it never
# counts against --timeout.
#
# With one worker and nothing that needs a supervisor (no --timeout, no
# --max-requests), the process serves by itself, as FU does; HUP then
# re-executes it on the same listening socket.

WORKER_BOOT_ERROR = 3         # the application failed to import: do not respawn
# --slow-log asks a worker for its stack with this signal: ignored by
# default (a worker not yet listening loses nothing), and nothing else
# sends it (only a socket given an owner with F_SETOWN would).
_SLOW_SIGNAL = signal.SIGURG
_KILL_GRACE = 3.0             # seconds between SIGABRT and SIGKILL for --timeout
_BOOTING = -1.0


class SourceWatcher(object):
    """``--reload``: notices changed source files of the application.

    It finds the application's files without importing them (an import in
    the supervisor would be inherited by every worker it forks, old code
    and all): the top-level package directory of MODULE, or the directory
    of a plain module, plus the ``--reload-path`` files and directories.
    """

    def __init__(self, app_spec, extra_paths=()):
        self.roots = list(extra_paths)
        top = app_spec.partition(":")[0].split(".")[0]
        for entry in [os.getcwd()] + sys.path:
            base = os.path.join(entry or os.getcwd(), top)
            if os.path.isdir(base):
                self.roots.append(base)
                break
            if os.path.isfile(base + ".py"):
                self.roots.append(os.path.dirname(os.path.abspath(base + ".py")))
                break
        self.snapshot = self.scan()

    def scan(self):
        mtimes = {}
        for root in self.roots:
            if os.path.isfile(root):
                paths = [root]
            else:
                paths = []
                for folder, dirs, files in os.walk(root):
                    dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"
                               and not d.startswith("venv")]
                    paths.extend(os.path.join(folder, f) for f in files if f.endswith(".py"))
                    if len(paths) > 20000:
                        break
            for path in paths:
                try:
                    mtimes[path] = os.stat(path).st_mtime_ns
                except OSError:
                    pass
        return mtimes

    def changes(self):
        """The files changed since the last call: (changed paths, syntax
        errors as text, or "")."""
        now = self.scan()
        changed = sorted(path for path in set(now) | set(self.snapshot)
                         if now.get(path) != self.snapshot.get(path))
        self.snapshot = now
        errors = []
        for path in changed:
            if path.endswith(".py") and path in now:
                try:
                    with open(path, "rb") as f:
                        compile(f.read(), path, "exec")
                except (SyntaxError, ValueError) as exc:
                    errors.append("%s: %s" % (path, exc))
        return changed, "; ".join(errors)


class Worker(object):
    """The supervisor's record of one worker process."""

    __slots__ = ("pid", "slot", "generation", "started", "retiring", "aborted_at",
                 "slow_since", "idle_mark", "idle_since")

    def __init__(self, pid, slot, generation):
        self.pid = pid
        self.slot = slot
        self.generation = generation
        self.started = time.monotonic()
        self.retiring = False
        self.aborted_at = None
        self.slow_since = 0.0       # the busy mark --slow-log last reported
        self.idle_mark = None       # Scoreboard.idle_mark at the last look
        self.idle_since = None      # monotonic time it was first seen idle so


class Supervisor(object):
    """Prefork supervisor.  ``make_server(listener, board, max_requests)``
    runs in each new worker: it imports the application and returns the
    Server to run, which publishes into ``board`` (the worker's
    WorkerRow of the Scoreboard).

    ``status_listener``: a listening socket the supervisor serves itself
    (``--status``), answering ``status_path`` and ``ping_path`` to the
    peers ``allow`` lets in (see parse_allow; None: anyone).

    ``workers`` is the pool's size, or with ``max_workers`` above it the
    least of a dynamic pool that grows to ``max_workers`` under load, by
    ``spawn_rate`` workers a second at most, and retires workers idle for
    ``idle_timeout`` seconds (see the section's top)."""

    SIGNALS = ("TERM", "INT", "HUP", "CHLD", "TTIN", "TTOU", "USR1", "USR2")

    def __init__(self, listener, make_server, *, workers=1, max_workers=None,
                 spawn_rate=1.0, idle_timeout=10.0, max_requests=(0, 0),
                 timeout=0, graceful_timeout=30.0, watcher=None, info=None,
                 status_listener=None, status_path="/status", ping_path="/ping", slow_log=0,
                 allow=None, access_log=None, unix_path=None, drain_file=None,
                 owns_listener=True):
        self.watcher = watcher
        self.unix_path = unix_path          # removed first when the pool stops
        self.owns_listener = owns_listener  # bound here (see close_the_door)
        self.drain_file = drain_file
        self.drain_signalled = False        # SIGUSR2 turns draining on and off
        self.access_log = access_log        # an AccessLog the workers inherit (SIGUSR1)
        self.allow = allow
        self.slow_log = slow_log
        self.next_watch = 0.0
        self.listener = listener
        self.make_server = make_server
        self.workers_wanted = self.workers_min = workers
        self.workers_max = max(workers, max_workers or workers)
        self.spawn_rate = spawn_rate
        self.idle_timeout = idle_timeout
        self.spawn_tokens = max(1.0, spawn_rate)    # a full bucket: load at start is served
        self.tokens_at = time.monotonic()
        self.max_requests = max_requests
        self.timeout = timeout
        self.graceful_timeout = graceful_timeout
        # Room for a reload at MAX (two generations) and workers still
        # finishing their request after they were retired.
        self.slots_count = 4 * self.workers_max + 8
        self.board = Scoreboard(self.slots_count, info)
        self.board.scaled(self.workers_min, self.workers_max, self.workers_wanted)
        self.status_listener = status_listener
        self.status_path = status_path
        self.ping_path = ping_path
        self.workers = {}            # pid -> Worker
        self.handover = Handover()   # kept connections, from stopping workers to the others
        self.generation = 0
        self.signal_queue = []
        self.crashes = []            # monotonic times of recent crashes
        self.respawn_at = 0.0
        self.stopping = False
        self.exit_code = 0
        self.pipe = None

    # -- signals: record and wake ----------------------------------------------

    def _on_signal(self, signum, frame):
        if len(self.signal_queue) < 5:
            self.signal_queue.append(signum)
        try:
            os.write(self.pipe[1], b".")
        except OSError:
            pass

    def handle_term(self):
        self.stop(graceful=True)

    handle_int = handle_term

    def handle_hup(self):
        log.info("reload: starting generation %d", self.generation + 1)
        self.generation += 1
        for _ in range(self.workers_wanted):
            if not self.spawn():
                break               # manage() starts the rest

    def handle_chld(self):
        pass                        # reap() runs every loop

    def handle_usr1(self):
        """logrotate moved the logs away: the supervisor reopens its copy
        of the access log (the workers started later inherit it) and the
        workers reopen theirs."""
        if self.access_log is not None:
            self.access_log.reopen_now()
        for worker in self.workers.values():
            self._kill(worker.pid, signal.SIGUSR1)

    def handle_usr1_in_worker(self):
        if self.access_log is not None:
            self.access_log.reopen()

    def handle_usr2(self):
        self.drain_signalled = not self.drain_signalled
        self.follow_drain_file()

    def follow_drain_file(self):
        """Draining while --drain-file exists or after SIGUSR2 (until the
        next): the ping answers 503 so balancers take the host out, and
        everything that still comes is served."""
        if self.stopping:
            return                  # "stopping" stays: the ping says 503 to the end
        draining = self.drain_signalled or bool(self.drain_file and
                                                os.path.exists(self.drain_file))
        state = "draining" if draining else "serving"
        if self.board.state() != state:
            self.board.set_state(state)
            why = "SIGUSR2" if self.drain_signalled else self.drain_file
            log.info("draining (%s): the ping path answers 503; still serving" % why
                     if draining else "draining over: serving, the ping path answers pong")

    def handle_ttin(self):
        if 2 * (self.workers_max + 1) > self.slots_count:
            log.warning("TTIN: at most %d workers (the scoreboard's size, fixed at start)",
                        self.workers_max)
            return
        self._move_range(1, "ttin")

    def handle_ttou(self):
        if self.workers_min > 1:
            self._move_range(-1, "ttou")

    def _move_range(self, step, decision):
        self.workers_min += step
        self.workers_max += step
        self.workers_wanted += step
        self.board.scaled(self.workers_min, self.workers_max, self.workers_wanted, decision)
        if self.dynamic():
            log.info("%s: --workers now %d:%d, %d wanted", decision.upper(), self.workers_min,
                     self.workers_max, self.workers_wanted)

    # -- slots -------------------------------------------------------------------

    def _free_slot(self):
        used = {w.slot for w in self.workers.values()}
        for i in range(self.slots_count):
            if i not in used:
                return i
        return None

    # -- workers -----------------------------------------------------------------

    def spawn(self):
        """Start a worker; False when every scoreboard slot is taken (HUPs
        faster than the old generations retire): manage() tries again."""
        slot = self._free_slot()
        if slot is None:
            log.warning("no free worker slot (%d, for retiring workers too): a worker "
                        "starts when one is free", self.slots_count)
            return False
        self.board.claim(slot)
        pid = os.fork()
        if pid:
            self.workers[pid] = Worker(pid, slot, self.generation)
            self.board.set_pid(slot, pid)
            return True
        # In the child.
        code = 0
        try:
            code = self._worker_main(slot)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.error("worker crashed\n%s", traceback.format_exc().rstrip())
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def _worker_main(self, slot):
        parent = os.getppid()
        # First the signals the supervisor passes on (their default kills):
        # a SIGUSR1 while the application loads marks the access log the
        # worker inherited (the one its server will write).
        signal.signal(signal.SIGUSR1, lambda signum, frame: self.handle_usr1_in_worker())
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)     # the supervisor's (drain)
        os.close(self.pipe[0])
        os.close(self.pipe[1])
        for name in self.SIGNALS:
            if name not in ("USR1", "USR2"):
                signal.signal(getattr(signal, "SIG" + name), signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if self.status_listener is not None:
            self.status_listener.close()
        row = self.board.row(slot)
        low, high = self.max_requests
        limit = random.randint(low, high) if low else 0
        try:
            server = self.make_server(self.listener, row, limit)
        except BaseException:
            log.error("cannot load the application:\n%s", traceback.format_exc().rstrip())
            return WORKER_BOOT_ERROR

        def graceful(signum, frame):
            # The pool stopping serves its listen queue first; a worker
            # retired (reload, fewer workers) leaves it to the others.
            server.drain_backlog = self.board.serves_queue()
            server.stop()

        def where_is(frame):
            # An asyncio worker's frame is its loop's: the request is in
            # its task's chain of awaits.
            describe = getattr(server, "describe_stuck", None)
            if describe is not None:
                return describe()
            return "".join(traceback.format_stack(frame)).rstrip()

        def dump_and_exit(signum, frame):
            where = where_is(frame)
            log.error("worker %d: request over --timeout %ss, killed; it was at:\n%s",
                      os.getpid(), self.timeout, where)
            logging.shutdown()
            os._exit(1)

        def report_slow(signum, frame):
            # --slow-log: where the request is, once; it runs on.
            where = where_is(frame)
            log.warning("worker %d: request running over --slow-log %ss: %s; it is at:\n%s",
                        os.getpid(), self.slow_log, row.current_request(), where)

        signal.signal(signal.SIGTERM, graceful)
        signal.signal(signal.SIGINT, graceful)
        signal.signal(signal.SIGABRT, dump_and_exit)
        signal.signal(_SLOW_SIGNAL, report_slow)
        signal.signal(signal.SIGUSR1, lambda signum, frame: server.reopen_logs())
        row.busy(0.0)
        if getattr(server, "HANDS_OVER", False):
            server.serve_forever(parent_pid=parent, handover=self.handover)
        else:
            server.serve_forever(parent_pid=parent)
        return 0

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
            self.board.release(worker.slot, self._respawn_reason(worker, code))
            if code == WORKER_BOOT_ERROR:
                if worker.generation == 0 and not self.stopping:
                    log.error("the application failed to load: stopping")
                    self.exit_code = 1
                    self.stop(graceful=False)
                else:
                    log.error("reload failed: the new code does not load; old workers serve on")
                    for other in self.workers.values():
                        if other.generation == worker.generation:
                            self._kill(other.pid, signal.SIGTERM)
                            other.retiring = True
                    self.generation_failed = worker.generation
                continue
            if self.stopping or worker.retiring:
                continue
            if code != 0:
                log.warning("worker %d died (%s): replacing it", pid,
                            "exit %d" % code if code > 0 else "signal %d" % -code)
                now = time.monotonic()
                self.crashes = [t for t in self.crashes if now - t < 10] + [now]
                if len(self.crashes) > 3:
                    delay = min(10.0, 0.1 * 2 ** (len(self.crashes) - 3))
                    log.warning("workers keep dying: next start in %.1fs", delay)
                    self.respawn_at = now + delay

    def _respawn_reason(self, worker, code):
        """Why a worker that ended is replaced, for the status page; None
        when it is not (stopping, fewer workers wanted)."""
        if self.stopping:
            return None
        if worker.aborted_at is not None:
            return "timeout"
        if worker.retiring:
            return "reload" if worker.generation < self.generation else None
        if code != 0:
            return "crash"
        return self.board.recycled_for(worker.slot) or "max_requests"

    def manage(self, queued=None):
        """Keep the wanted number of workers in the newest generation, retire
        the older ones once it is up, kill the ones over --timeout; with
        --workers MIN:MAX first move the wanted number with the load
        (``queued``: the connections in the listen queue, None unknown)."""
        now = time.monotonic()
        current = [w for w in self.workers.values()
                   if w.generation == self.generation and not w.retiring]
        if getattr(self, "generation_failed", None) == self.generation:
            # Fall back to the newest generation that still has workers.
            self.generation = max((w.generation for w in self.workers.values()
                                   if not w.retiring), default=self.generation)
            self.generation_failed = None
            current = [w for w in self.workers.values()
                       if w.generation == self.generation and not w.retiring]
        if self.dynamic() and not any(w.generation < self.generation and not w.retiring
                                      for w in self.workers.values()):
            # (While a reload runs, the count is HUP's.)
            self._scale(current, now, queued)
            current = [w for w in current if not w.retiring]
        if len(current) < self.workers_wanted and now >= self.respawn_at:
            for _ in range(self.workers_wanted - len(current)):
                if not self.spawn():
                    break
        elif len(current) > self.workers_wanted:
            for worker in sorted(current, key=lambda w: w.started)[:len(current) - self.workers_wanted]:
                worker.retiring = True
                self._kill(worker.pid, signal.SIGTERM)
        if current and all(self.board.busy_since(w.slot) != _BOOTING for w in current):
            for worker in sorted(self.workers.values(), key=lambda w: w.started):
                if worker.generation < self.generation and not worker.retiring:
                    worker.retiring = True
                    self._kill(worker.pid, signal.SIGTERM)
        if self.slow_log:
            for worker in self.workers.values():
                since = self.board.busy_since(worker.slot)
                if since > 0 and now - since > self.slow_log and worker.slow_since != since:
                    worker.slow_since = since
                    self.board.count_slow()
                    self._kill(worker.pid, _SLOW_SIGNAL)
        if self.timeout:
            for worker in list(self.workers.values()):
                since = self.board.busy_since(worker.slot)
                if worker.aborted_at is not None:
                    if now - worker.aborted_at > _KILL_GRACE:
                        self._kill(worker.pid, signal.SIGKILL)
                elif since > 0 and now - since > self.timeout:
                    log.error("worker %d: request running for %.1fs, over --timeout %ss",
                              worker.pid, now - since, self.timeout)
                    worker.aborted_at = now
                    self._kill(worker.pid, signal.SIGABRT)

    def dynamic(self):
        """Whether the pool's size follows the load (--workers MIN:MAX)."""
        return self.workers_max > self.workers_min

    def _scale(self, current, now, queued):
        """--workers MIN:MAX: start workers for the connections waiting,
        retire one idle past --idle-timeout (see the section's top)."""
        board = self.board
        self.spawn_tokens = min(max(1.0, self.spawn_rate),
                                self.spawn_tokens + (now - self.tokens_at) * self.spawn_rate)
        self.tokens_at = now
        up = [w for w in current if board.busy_since(w.slot) != _BOOTING]
        coming = self.workers_wanted - len(up)      # booting, or not started yet
        if queued and queued > coming and all(board.busy_since(w.slot) > 0 for w in up):
            more = min(queued - coming, int(self.spawn_tokens),
                       self.workers_max - self.workers_wanted)
            if more > 0:
                self.spawn_tokens -= more
                self.workers_wanted += more
                board.scaled(self.workers_min, self.workers_max, self.workers_wanted, "up")
                log.info("scaling up: %s busy, %d connection%s queued: starting %d more "
                         "(%d of --workers %d:%d)",
                         "all %d workers" % len(up) if len(up) != 1 else "the 1 worker",
                         queued, "s"[queued == 1:], more, self.workers_wanted,
                         self.workers_min, self.workers_max)
        idle = []
        for worker in up:
            mark = board.idle_mark(worker.slot)
            if mark is None or mark != worker.idle_mark:
                worker.idle_since = None if mark is None else now
                worker.idle_mark = mark
            elif now - worker.idle_since >= self.idle_timeout:
                idle.append(worker)
        if idle and self.workers_wanted > self.workers_min and len(current) >= self.workers_wanted:
            # The longest idle; of equals, the newest (the older have warm caches).
            worker = min(idle, key=lambda w: (w.idle_since, -w.started))
            worker.retiring = True
            self._kill(worker.pid, signal.SIGTERM)
            self.workers_wanted -= 1
            board.scaled(self.workers_min, self.workers_max, self.workers_wanted, "down")
            log.info("scaling down: worker %d idle for %.0fs: retiring it (%d of --workers %d:%d)",
                     worker.pid, now - worker.idle_since, self.workers_wanted,
                     self.workers_min, self.workers_max)

    def watch(self):
        """--reload: a changed source file reloads the workers, unless it
        does not compile: then the old workers serve on."""
        if self.watcher is None or time.monotonic() < self.next_watch:
            return
        self.next_watch = time.monotonic() + 1.0
        changed, errors = self.watcher.changes()
        if not changed:
            return
        if errors:
            log.error("not reloading, the old workers serve on: %s", errors)
            return
        log.info("reload: %s changed", ", ".join(os.path.basename(p) for p in changed[:5]))
        self.handle_hup()

    def _kill(self, pid, sig):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, graceful=True):
        """Stop the pool.  Gracefully: the ping fails, no new connection
        gets in (close_the_door), the workers serve what waits in the
        listen queue and on kept connections, and end their requests."""
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + (self.graceful_timeout if graceful else 0)
            if graceful:
                # Before the workers hear TERM: they read it to tell a
                # stop from a retirement (see _worker_main).
                closed, what = False, "the listener is inherited: its owner keeps what waits"
                if self.owns_listener:
                    closed, what = close_the_door(self.listener, self.unix_path)
                self.board.set_state("stopping", serve_queue=closed)
                log.info("stopping: %s; serving %s", what, "what is queued and running"
                         if closed else "the requests running")
                if closed:
                    self.listener.close()   # the workers hold it until they are done
            for worker in self.workers.values():
                self._kill(worker.pid, signal.SIGTERM if graceful else signal.SIGKILL)
            self.handover.discard()     # given before the stop, taken by none

    # -- --status ---------------------------------------------------------------------

    def serve_status(self):
        """One client of the status listener (see serve_status_connection)."""
        try:
            sock, peer = self.status_listener.accept()
        except OSError:
            return
        if not peer_allowed(self.allow, peer):
            # ?full shows the URIs requests run: --allow guards it too.
            log.warning("--status: connection from %s refused: not in --allow", peer[0])
            sock.close()
            return
        try:
            serve_status_connection(sock, self.board, self.status_path, self.ping_path)
        except (OSError, ValueError) as exc:
            log.warning("--status: a client from %s failed: %s",
                        format_address(sock.family, peer) if peer else "unix", exc)
        finally:
            sock.close()

    # -- the main loop -------------------------------------------------------------

    def run(self):
        """Run until stopped; returns the exit code."""
        self.pipe = os.pipe()
        for fd in self.pipe:
            os.set_blocking(fd, False)
        for name in self.SIGNALS:
            signal.signal(getattr(signal, "SIG" + name), self._on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        try:
            while True:
                while self.signal_queue:
                    signum = self.signal_queue.pop(0)
                    name = signal.Signals(signum).name[3:]
                    if self.stopping and name in ("HUP", "TTIN", "TTOU", "USR2"):
                        # No new workers on a closed listener, and the
                        # ping says "stopping" to the end.
                        log.info("stopping: SIG%s ignored", name)
                        continue
                    getattr(self, "handle_" + name.lower())()
                self.reap()
                if self.stopping:
                    if not self.workers:
                        break
                    if time.monotonic() > self.stop_deadline:
                        log.warning("graceful timeout: killing %d worker(s)", len(self.workers))
                        for worker in self.workers.values():
                            self._kill(worker.pid, signal.SIGKILL)
                        self.stop_deadline = float("inf")
                if not self.stopping:
                    queued = self.board.sample(self.listener, self.workers_wanted)
                    self.follow_drain_file()
                    self.manage(queued)
                    self.watch()
                waiting = [self.pipe[0]]
                if self.status_listener is not None:
                    waiting.append(self.status_listener)
                try:
                    ready = select.select(waiting, [], [], 0.5)[0]
                    if self.status_listener in ready:
                        self.serve_status()
                    os.read(self.pipe[0], 512)
                except (OSError, InterruptedError):
                    pass
        finally:
            for name in self.SIGNALS:
                signal.signal(getattr(signal, "SIG" + name), signal.SIG_DFL)
            self.handover.close()
        return self.exit_code


##############################################################################
# Client  #####################################################################
##############################################################################
#
# The web server's side of the protocol, for tests (ours and users') and for
# probing any FastCGI server: send a request with real framing, read back
# the records, and parse the CGI response.


class ClientResponse(object):
    """What a FastCGI application answered.

    Attributes:
        status (int), reason (str), headers (list of (name, value) str),
        body (bytes), stdout (the raw STDOUT stream), stderr (bytes),
        app_status (int), protocol_status (int), records (list of
        (type, request_id, content)).
    """

    def __init__(self, stdout, stderr, app_status, protocol_status, records):
        self.stdout = stdout
        self.stderr = stderr
        self.app_status = app_status
        self.protocol_status = protocol_status
        self.records = records
        self.status, self.reason, self.headers, self.body = _parse_cgi_response(stdout)

    def header(self, name, default=None):
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default

    def __repr__(self):
        return "<ClientResponse %d %s, %d body bytes, app status %d>" % (
            self.status, self.reason, len(self.body), self.app_status)


def _parse_cgi_response(stdout):
    """Split a CGI response (RFC 3875 6.2) into status, reason, headers, body."""
    sep = stdout.find(b"\r\n\r\n")
    sep_len = 4
    if sep < 0:
        sep = stdout.find(b"\n\n")
        sep_len = 2
    if sep < 0:
        return 0, "", [], stdout
    head = stdout[:sep].decode("latin-1")
    body = stdout[sep + sep_len:]
    status, reason, headers = None, "", []
    for line in head.replace("\r\n", "\n").split("\n"):
        name, _, value = line.partition(":")
        value = value.strip()
        if name.lower() == "status":
            code, _, reason = value.partition(" ")
            status = int(code) if code.isdigit() else 0
        else:
            headers.append((name, value))
    if status is None:   # RFC 3875 6.3.3: a Location alone is a redirect
        located = any(name.lower() == "location" for name, _ in headers)
        status, reason = (302, "Found") if located else (200, "OK")
    return status, reason, headers, body


class Client(object):
    """A FastCGI client: one connection to ``address`` (see parse_address).

    Args (keyword-only):
        timeout: seconds for connecting and for each read.
    """

    def __init__(self, address, *, timeout=30.0):
        family, addr = parse_address(address)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(addr)
        if family != socket.AF_UNIX:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data):
        """Send bytes as they are (for probing servers with odd input)."""
        self.sock.sendall(data)

    def read_record(self):
        """The next record as (type, request_id, content), or None at EOF."""
        while len(self._buffer) < 8:
            data = self.sock.recv(262144)
            if not data:
                return None
            self._buffer += data
        _, rtype, rid, clen, pad = _header.unpack_from(self._buffer)
        while len(self._buffer) < 8 + clen + pad:
            data = self.sock.recv(262144)
            if not data:
                return None
            self._buffer += data
        content = self._buffer[8:8 + clen]
        self._buffer = self._buffer[8 + clen + pad:]
        return rtype, rid, content

    def request(self, params, body=b"", *, request_id=1, role=FCGI_RESPONDER,
                keep_conn=False, data=None, stdin_chunk=65535):
        """Send one request and read its response.

        Args:
            params: mapping of str (CONTENT_LENGTH is added for a body if
                missing).
            body: the request body (stdin).
            data: the FCGI_DATA stream, for the FILTER role.
        Returns:
            ClientResponse.
        Raises:
            ConnectionError: the server closed before END_REQUEST.
        """
        params = dict(params)
        if body and "CONTENT_LENGTH" not in params:
            params["CONTENT_LENGTH"] = str(len(body))
        out = [_record(FCGI_BEGIN_REQUEST, request_id, struct.pack(
            "!HB5x", role, FCGI_KEEP_CONN if keep_conn else 0))]
        encoded = encode_params(params)
        for i in range(0, len(encoded), 65528):
            out.append(_record(FCGI_PARAMS, request_id, encoded[i:i + 65528]))
        out.append(_record(FCGI_PARAMS, request_id, b""))
        streams = [(FCGI_STDIN, body)] + ([(FCGI_DATA, data)] if data is not None else [])
        for rtype, content in streams:
            for i in range(0, len(content), stdin_chunk):
                out.append(_record(rtype, request_id, content[i:i + stdin_chunk]))
                if len(out) > 64:           # a large body goes out as it is framed
                    self.sock.sendall(b"".join(out))
                    out = []
            out.append(_record(rtype, request_id, b""))
        self.sock.sendall(b"".join(out))
        return self.read_response(request_id)

    def read_response(self, request_id=1):
        """Read records up to END_REQUEST of ``request_id``."""
        stdout, stderr, records = [], [], []
        while True:
            record = self.read_record()
            if record is None:
                raise ConnectionError("the server closed the connection before END_REQUEST")
            records.append(record)
            rtype, rid, content = record
            if rid != request_id:
                continue
            if rtype == FCGI_STDOUT:
                stdout.append(content)
            elif rtype == FCGI_STDERR:
                stderr.append(content)
            elif rtype == FCGI_END_REQUEST:
                app_status, protocol_status = struct.unpack("!LB3x", content)
                return ClientResponse(b"".join(stdout), b"".join(stderr), app_status,
                                      protocol_status, records)

    def get_values(self, names=("FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS")):
        """Ask FCGI_GET_VALUES; returns the dict the server answered."""
        self.sock.sendall(_record(FCGI_GET_VALUES, 0, encode_params((n, "") for n in names)))
        while True:
            record = self.read_record()
            if record is None:
                raise ConnectionError("the server closed the connection")
            if record[0] == FCGI_GET_VALUES_RESULT:
                return _decode_params(record[2], FCGI_MAX_CONTENT)


##############################################################################
# CLI  ########################################################################
##############################################################################

def select_core():
    """The core to serve with: ``FASTFCGI_PURE=1`` gives this module;
    otherwise the compiled ``fastfcgi`` when it imports, else this module."""
    if os.environ.get("FASTFCGI_PURE") == "1":
        return sys.modules[__name__]
    try:
        import fastfcgi
        return fastfcgi
    except ImportError:
        return sys.modules[__name__]


def core_name(core):
    """ "compiled" when ``core``'s servers run the compiled parser."""
    return core.CORE


def load_app(spec):
    """Import ``MODULE:CALLABLE`` (CALLABLE may be a dotted attribute path;
    default ``application``).  The current directory is importable.

    Raises:
        ImportError, AttributeError, TypeError: with a message that says what.
    """
    import importlib
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    obj = module
    for part in (attr or "application").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError("%s has no attribute %r" % (module_name, attr or "application"))
    if not callable(obj):
        raise TypeError("%s is not callable" % spec)
    return obj


def _is_async(app):
    """Whether ``app`` is an ``async def`` function (or object whose
    __call__ is one): --raw then runs it on the asyncio server."""
    import inspect
    return inspect.iscoroutinefunction(app) or \
        inspect.iscoroutinefunction(getattr(app, "__call__", None))


def _loop_name(choice):
    """The event loop ``--loop`` names: "uvloop" for auto when it imports.
    Raises ImportError for "uvloop" without it."""
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop   # noqa: F401
        return "uvloop"
    except ImportError:
        if choice == "uvloop":
            raise
        return "asyncio"


def _size(text):
    """A byte count with an optional k/m/g suffix (powers of 1024)."""
    text = text.strip().lower()
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    return int(text[:-1] if mult > 1 else text) * mult


def _max_requests(text):
    low, _, high = text.partition(":")
    low = int(low)
    high = int(high) if high else low
    if low < 0 or high < low:
        raise ValueError("--max-requests: want N or N:M with N <= M")
    return low, high


def _workers_range(text):
    """``--workers N`` or ``MIN:MAX``: (MIN, MAX), equal for N.

    Raises:
        ValueError: saying what is wrong.
    """
    low, colon, high = text.partition(":")
    try:
        low = int(low)
        high = int(high) if colon else low
    except ValueError:
        raise ValueError("want N or MIN:MAX (whole numbers), not %r" % text)
    if low < 1:
        raise ValueError("want at least 1 worker, not %r" % text)
    if high < low:
        raise ValueError("MAX must be at least MIN in MIN:MAX, not %r" % text)
    return low, high


def build_arg_parser():
    import argparse
    p = argparse.ArgumentParser(
        prog="fastfcgi",
        description="Serve a WSGI application over FastCGI behind nginx, Apache, lighttpd, "
                    "Caddy or h2o.",
        epilog="ADDR is HOST:PORT, [V6ADDR]:PORT, unix:/PATH or /PATH.  With no address, "
               "a listening socket on fd 0 (the web server spawned us) or from systemd "
               "(LISTEN_FDS) is served.  Signals: TERM/INT stop gracefully, HUP reloads "
               "the application with no request dropped.")
    p.add_argument("app", metavar="MODULE:CALLABLE", nargs="?",
                   help="the application, e.g. myproject.wsgi:application")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--fcgi", metavar="ADDR", help="serve FastCGI on ADDR")
    where.add_argument("--http", metavar="ADDR",
                       help="serve plain HTTP on ADDR (development only)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--asgi", action="store_true", help="the callable is an ASGI 3 app")
    kind.add_argument("--raw", action="store_true",
                      help="the callable receives the fastfcgi Request object")
    p.add_argument("--workers", default="1", metavar="N|MIN:MAX",
                   help="worker processes (default 1); MIN:MAX starts MIN and adds one when "
                        "all are busy and connections wait, up to MAX, retiring the idle ones "
                        "(TTIN/TTOU move MIN and MAX by one)")
    p.add_argument("--spawn-rate", type=float, default=1.0, metavar="N",
                   help="--workers MIN:MAX: workers started for load per second at most "
                        "(default 1; 0.2 is one every 5 s)")
    p.add_argument("--idle-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="--workers MIN:MAX: retire a worker idle this long while more than "
                        "MIN run (default 10)")
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                   help="--asgi / async --raw: the event loop (auto: uvloop when installed)")
    p.add_argument("--max-concurrency", type=int, default=DEFAULT_MAX_CONCURRENCY, metavar="N",
                   help="--asgi / async --raw: requests one worker runs at once, on all its "
                        "connections or on one; past it FCGI_OVERLOADED (default %d)"
                        % DEFAULT_MAX_CONCURRENCY)
    p.add_argument("--max-requests", type=_max_requests, default=(0, 0), metavar="N[:M]",
                   help="recycle a worker after N requests (a random count in N..M)")
    p.add_argument("--max-body", type=_size, default=None, metavar="BYTES",
                   help="largest request body (413 past it); k/m/g suffixes; default no limit")
    p.add_argument("--max-param-size", type=_size, default=DEFAULT_MAX_PARAM_SIZE,
                   metavar="BYTES", help="largest param name or value (431 past it; "
                   "default %d)" % DEFAULT_MAX_PARAM_SIZE)
    p.add_argument("--max-params-size", type=_size, default=DEFAULT_MAX_PARAMS_SIZE,
                   metavar="BYTES", help="largest total of a request's params (431 past it; "
                   "default %d)" % DEFAULT_MAX_PARAMS_SIZE)
    p.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                   help="kill a worker whose request runs longer, logging its traceback")
    p.add_argument("--max-queue-wait", type=float, default=0, metavar="SECONDS",
                   help="answer 503 at once to a request that waited longer before a worker "
                        "took it (from the web server's X-Request-Start; see README)")
    p.add_argument("--slow-log", type=float, default=0, metavar="SECONDS",
                   help="log the stack of a request running longer, once, and let it run "
                        "(PHP-FPM's slowlog; checked twice a second)")
    p.add_argument("--drain-file", metavar="PATH",
                   help="while PATH exists the ping path answers 503 (balancers take the host "
                        "out) and everything that comes is still served; SIGUSR2 turns the "
                        "same on and off")
    p.add_argument("--graceful-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long in-flight requests may run after TERM (default 30)")
    p.add_argument("--allow", metavar="ADDR,...", default=os.environ.get("FCGI_WEB_SERVER_ADDRS"),
                   help="accept connections only from these addresses/networks "
                        "(default: $FCGI_WEB_SERVER_ADDRS, else anyone)")
    p.add_argument("--socket-mode", type=lambda s: int(s, 8), default=None, metavar="MODE",
                   help="file mode of a unix socket, octal (e.g. 660)")
    p.add_argument("--backlog", type=int, default=1024, help="listen backlog (default 1024)")
    p.add_argument("--offload-files", metavar="HEADER",
                   help="let the web server send files: X-Accel-Redirect (nginx), X-Sendfile "
                        "(Apache mod_xsendfile, lighttpd) or X-LIGHTTPD-send-file; a "
                        "wsgi.file_wrapper body or an ASGI pathsend of a file under an "
                        "--offload-map directory becomes that header alone")
    p.add_argument("--offload-map", action="append", default=[], metavar="DIR[=URI]",
                   help="with --offload-files: a directory the web server may send from; "
                        "for X-Accel-Redirect, =URI is the nginx internal location that "
                        "serves it (repeatable)")
    p.add_argument("--status", metavar="ADDR",
                   help="serve the status page on ADDR from the supervisor itself (FastCGI "
                        "or plain HTTP GET), so it answers when every worker is busy")
    p.add_argument("--status-path", metavar="PATH",
                   help="the status page's path (e.g. /fastcgi-status): on --status, and "
                        "answered by the workers on the main listener; ?html (a page for "
                        "people), ?json, ?openmetrics, ?full choose the format (default on "
                        "--status: /status)")
    p.add_argument("--ping-path", metavar="PATH",
                   help="a path answered 'pong' by the workers on the main listener, and on "
                        "--status (default there: /ping)")
    p.add_argument("--access-log", action="store_true", help="log one line per request")
    p.add_argument("--access-log-format", metavar="FORMAT",
                   help="the access log's lines (implies --access-log): 'common' (the "
                        "default), 'json' (JSON lines, every field), or a template of "
                        "{fields}: " + ", ".join(ACCESS_LOG_FIELDS))
    p.add_argument("--access-log-file", metavar="PATH",
                   help="append the access log to PATH (implies --access-log), reopened on "
                        "SIGUSR1 for logrotate; default: stderr")
    p.add_argument("--access-log-status", action="store_true",
                   help="log the requests for --status-path and --ping-path too (implies "
                        "--access-log; they are left out by default)")
    p.add_argument("--max-rss", type=float, default=0, metavar="MB",
                   help="recycle a worker whose resident memory passes MB after a request "
                        "(it finishes what it runs; a new one starts)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--reload", action="store_true",
                   help="restart workers when the application's source changes (development)")
    p.add_argument("--reload-path", action="append", default=[], metavar="PATH",
                   help="with --reload, also watch this file or directory (repeatable)")
    p.add_argument("--version", action="store_true", help="print version and core, then exit")
    return p


def main(argv=None, core=None):
    """The ``fastfcgi`` command.  Returns the exit code.

    ``fastfcgi client ...`` is the FastCGI client (see client_main)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    args = build_arg_parser().parse_args(argv)
    core = core or select_core()
    if args.version:
        print("fastfcgi %s (%s core, Python %s)" % (__version__, core_name(core),
                                                    sys.version.split()[0]))
        return 0
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s [%(process)d] %(levelname)s %(message)s")
    if not args.app:
        build_arg_parser().print_usage(sys.stderr)
        log.error("no application given (MODULE:CALLABLE)")
        return 2
    if args.max_concurrency < 1:
        log.error("--max-concurrency must be at least 1")
        return 2
    try:
        loop_name = _loop_name(args.loop)
    except ImportError:
        log.error("--loop uvloop: uvloop is not installed (pip install uvloop)")
        return 2
    offload = None
    if args.offload_files:
        try:
            offload = Offload(args.offload_files, args.offload_map)
        except ValueError as exc:
            log.error("--offload-files: %s", exc)
            return 2
    # TERM, INT, HUP wait until their handlers are installed (see
    # _serve_single and Supervisor.run): a stop that comes during start-up
    # is then graceful too.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        workers_min, workers_max = _workers_range(args.workers)
    except ValueError as exc:
        log.error("--workers: %s", exc)
        return 2
    if not args.spawn_rate > 0 or not args.idle_timeout > 0:
        log.error("--spawn-rate and --idle-timeout must be above 0")
        return 2
    try:
        allow = parse_allow(args.allow)
    except ValueError as exc:
        log.error("--allow: %s", exc)
        return 2
    access_log = None
    if args.access_log or args.access_log_format or args.access_log_file or \
            args.access_log_status:
        try:
            access_log = AccessLog(args.access_log_format or "common", args.access_log_file,
                                   args.access_log_status)
        except ValueError as exc:
            log.error("--access-log-format: %s", exc)
            return 2
        except OSError as exc:
            log.error("--access-log-file: cannot open %s: %s", args.access_log_file, exc)
            return 1
    if args.max_rss < 0:
        log.error("--max-rss must not be negative")
        return 2

    # Bind first: the workers inherit the socket.
    reexecuted = "FASTFCGI_LISTEN_FD" in os.environ
    listener = inherited_listener()
    unix_path = None
    address_text = args.fcgi or args.http
    if address_text and reexecuted:
        # Our own reload: keep the socket, and the connections queued on it.
        family, address = parse_address(address_text)
        unix_path = address if family == socket.AF_UNIX else None
    elif address_text:
        if listener is not None:
            listener.close()
        try:
            listener = bind_listener(address_text, args.backlog, args.socket_mode, tune=True)
        except (OSError, ValueError) as exc:
            log.error("cannot listen on %s: %s", address_text, exc)
            return 1
        family, address = parse_address(address_text)
        if family == socket.AF_UNIX:
            unix_path = address
    elif listener is None:
        log.error("no address: give --fcgi ADDR, or start us with a listening socket on fd 0")
        return 2
    tune_listener(listener)     # an inherited one too, before any worker runs
    # The socket file we made: removed at the end only if it is still
    # ours (a new instance may have bound the path while we drained).
    unix_ident = _file_identity(unix_path)
    where = format_address(listener.family, listener.getsockname())
    status_listener = None
    if args.status:
        try:
            status_listener = bind_listener(args.status, 64)
        except (OSError, ValueError) as exc:
            log.error("--status: cannot listen on %s: %s", args.status, exc)
            if unix_path:
                os.unlink(unix_path)
            return 1
    # The status page reads the supervisor's scoreboard.
    single = (workers_max == 1 and not args.timeout and not args.max_requests[0]
              and not args.reload and not args.status and not args.status_path
              and not args.slow_log and not args.max_rss and not args.ping_path
              and not args.drain_file)

    server_class = HTTPServer if args.http else Server

    def make_server(listener, board=None, max_requests=0):
        app = load_app(args.app)
        limits = dict(core=core, max_body=args.max_body, max_param_size=args.max_param_size,
                      max_params_size=args.max_params_size, allow=allow,
                      max_requests=max_requests, board=board, status_path=args.status_path,
                      ping_path=args.ping_path, max_queue_wait=args.max_queue_wait,
                      access_log=access_log, max_rss=int(args.max_rss * 1024 * 1024))
        if args.asgi and args.http:
            gateway = BlockingASGIGateway(app, access_log=access_log, offload=offload,
                                          loop=loop_name)
            return server_class(gateway, listener, **limits)
        if args.asgi or (args.raw and _is_async(app) and not args.http):
            gateway = (ASGIGateway(app, access_log=access_log, offload=offload, core=core)
                       if args.asgi else AsyncRawGateway(app, access_log=access_log))
            return AsyncServer(gateway, listener, workers=workers_max, max_concurrency=args.max_concurrency,
                               loop=loop_name, **limits)
        if args.raw and _is_async(app):
            raise TypeError("--http runs blocking --raw applications only; %s is async"
                            % args.app)
        gateway = (RawGateway(app, access_log=access_log) if args.raw else
                   WSGIGateway(app, access_log=access_log, core=core, offload=offload))
        return server_class(gateway, listener, workers=workers_max, **limits)

    log.info("fastfcgi %s serving %s on %s%s: %s worker(s), %s core, Python %s%s",
             __version__, args.app, where,
             " over plain HTTP, FOR DEVELOPMENT ONLY" if args.http else "",
             args.workers, core_name(core), sys.version.split()[0],
             ", ASGI on %s" % loop_name if args.asgi else "")
    try:
        if single:
            return _serve_single(make_server, listener, unix_path,
                                 owns_listener=address_text is not None)
        watcher = SourceWatcher(args.app, args.reload_path) if args.reload else None
        info = {"core": core_name(core), "listen": where, "backlog": args.backlog,
                "workers": workers_max if workers_min == workers_max else args.workers,
                "app": args.app,
                "mode": "asgi" if args.asgi else "raw" if args.raw else "wsgi",
                "max_requests": "%d:%d" % args.max_requests, "timeout": args.timeout,
                "slow_log": args.slow_log, "max_queue_wait": args.max_queue_wait,
                "max_body": args.max_body or 0, "max_param_size": args.max_param_size,
                "max_params_size": args.max_params_size, "max_rss_mb": args.max_rss,
                "access_log": (access_log.path or "stderr") if access_log else ""}
        if workers_max > workers_min:
            info.update(spawn_rate=args.spawn_rate, idle_timeout=args.idle_timeout)
        if status_listener is not None:
            log.info("status on %s", format_address(status_listener.family,
                                                    status_listener.getsockname()))
        return Supervisor(listener, make_server, workers=workers_min, max_workers=workers_max,
                          spawn_rate=args.spawn_rate, idle_timeout=args.idle_timeout,
                          max_requests=args.max_requests, timeout=args.timeout,
                          graceful_timeout=args.graceful_timeout, watcher=watcher, info=info,
                          status_listener=status_listener,
                          status_path=args.status_path or "/status",
                          ping_path=args.ping_path or "/ping", slow_log=args.slow_log,
                          allow=allow, access_log=access_log,
                          unix_path=unix_path, drain_file=args.drain_file,
                          owns_listener=address_text is not None).run()
    finally:
        if unix_path and _file_identity(unix_path) == unix_ident:
            try:
                os.unlink(unix_path)
            except OSError:
                pass
        if status_listener is not None and status_listener.family == socket.AF_UNIX:
            try:
                os.unlink(status_listener.getsockname())
            except OSError:
                pass
        log.info("stopped")


def client_main(argv=None):
    """``fastfcgi client ADDR [PATH]``: send one request (or a few over one
    connection) to any FastCGI server and print the response, like
    ``cgi-fcgi`` with method, headers, body and a timing line.  Returns the
    exit code: 0 for a complete response, 1 otherwise."""
    import argparse
    p = argparse.ArgumentParser(
        prog="fastfcgi client",
        description="Send a request to a FastCGI server and print its response.")
    p.add_argument("address", metavar="ADDR", help="HOST:PORT, [V6]:PORT or unix:/PATH")
    p.add_argument("path", nargs="?", default="/", help="path and query (default /)")
    p.add_argument("-X", "--method", default=None, help="request method (default GET, POST with -d)")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="a request header (becomes HTTP_NAME)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a param as is (overrides the defaults)")
    p.add_argument("-d", "--data", default=None, help="request body (@FILE reads a file)")
    p.add_argument("--role", default="responder",
                   help="responder, authorizer, filter, or a number (probe unknown roles)")
    p.add_argument("--filter-data", default=None, metavar="@FILE",
                   help="FCGI_DATA for the filter role")
    p.add_argument("-n", "--requests", type=int, default=1, metavar="N",
                   help="send N requests over one kept connection")
    p.add_argument("-i", "--include", action="store_true", help="print the response head")
    p.add_argument("--get-values", action="store_true",
                   help="ask FCGI_GET_VALUES (FCGI_MAX_CONNS, FCGI_MAX_REQS, FCGI_MPXS_CONNS)")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)

    def load(text):
        if text is None:
            return None
        if text.startswith("@"):
            with open(text[1:], "rb") as f:
                return f.read()
        return text.encode("utf-8")

    body = load(args.data) or b""
    filter_data = load(args.filter_data)
    roles = {"responder": FCGI_RESPONDER, "authorizer": FCGI_AUTHORIZER, "filter": FCGI_FILTER}
    role = roles.get(args.role.lower()) or int(args.role)
    method = args.method or ("POST" if args.data is not None else "GET")
    path, _, query = args.path.partition("?")
    params = {"REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path,
              "SCRIPT_FILENAME": path, "REQUEST_URI": args.path, "QUERY_STRING": query,
              "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "localhost", "SERVER_PORT": "80",
              "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "0", "GATEWAY_INTERFACE": "CGI/1.1",
              "REQUEST_SCHEME": "http", "SERVER_SOFTWARE": "fastfcgi-client/" + __version__,
              "CONTENT_TYPE": "", "CONTENT_LENGTH": str(len(body)) if body else ""}
    for header in args.header:
        name, _, value = header.partition(":")
        key = "HTTP_" + name.strip().upper().replace("-", "_")
        if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
            key = key[5:]
        params[key] = value.strip()
    for item in args.param:
        name, _, value = item.partition("=")
        params[name] = value
    code = 0
    try:
        started = time.monotonic()
        with Client(args.address, timeout=args.timeout) as client:
            connected = time.monotonic()
            if args.get_values:
                for name, value in client.get_values().items():
                    print("%s=%s" % (name, value))
                return 0
            for i in range(args.requests):
                keep = i < args.requests - 1
                t0 = time.monotonic()
                response = client.request(params, body, role=role, keep_conn=keep,
                                          data=filter_data)
                elapsed = (time.monotonic() - t0) * 1000
                out = sys.stdout.buffer
                if args.include:
                    out.write(b"Status: %d %s\n" % (response.status, response.reason.encode()))
                    for name, value in response.headers:
                        out.write(("%s: %s\n" % (name, value)).encode("latin-1"))
                    out.write(b"\n")
                out.write(response.body)
                out.flush()
                if response.stderr:
                    sys.stderr.write("stderr: %s\n" % response.stderr.decode("utf-8", "replace"))
                status_name = {FCGI_REQUEST_COMPLETE: "REQUEST_COMPLETE",
                               FCGI_CANT_MPX_CONN: "CANT_MPX_CONN",
                               FCGI_OVERLOADED: "OVERLOADED",
                               FCGI_UNKNOWN_ROLE: "UNKNOWN_ROLE"}.get(response.protocol_status, "?")
                sys.stderr.write("%s: %d %s, %d body bytes, app status %d, protocol status %s, "
                                 "%.2f ms (connect %.2f ms)%s\n" % (
                                     args.address, response.status, response.reason,
                                     len(response.body), response.app_status, status_name,
                                     elapsed, (connected - started) * 1000,
                                     ", connection kept" if keep else ""))
                if response.protocol_status != FCGI_REQUEST_COMPLETE:
                    code = 1
    except (OSError, ValueError) as exc:
        sys.stderr.write("%s: %s\n" % (args.address, exc))
        return 1
    return code


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _serve_single(make_server, listener, unix_path=None, owns_listener=True):
    """One process serves by itself.  HUP re-executes it on the same socket;
    TERM serves what waits in the listen queue, as a pool does (see
    Supervisor.stop)."""
    try:
        server = make_server(listener)
    except BaseException:
        log.error("cannot load the application:\n%s", traceback.format_exc().rstrip())
        return 1
    wanted = []             # "reload", "stop": a stop wins
    stopped = []            # what closing the door did, logged once out of the handler

    def graceful(signum, frame):
        if signum == signal.SIGHUP:
            wanted.append("reload")
        elif "stop" not in wanted:
            wanted.append("stop")
            if owns_listener:
                closed, what = close_the_door(listener, unix_path)
                server.drain_backlog = closed
                stopped.append(what)
        server.stop()

    for sig in _STOP_SIGNALS:
        signal.signal(sig, graceful)
    signal.signal(signal.SIGUSR1, lambda signum, frame: server.reopen_logs())
    # A re-executed process starts with these blocked (see below): the ones
    # that came while it booted are delivered now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    server.serve_forever()
    if stopped:
        log.info("stopped: %s; %s", stopped[0], "served what was queued and running"
                 if server.drain_backlog else "served the request running")
    if "reload" in wanted and "stop" not in wanted:
        log.info("reload: re-executing with the same listening socket")
        # The mask survives exec: a HUP or TERM during the new process's boot
        # waits for its handlers instead of killing it.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        os.set_inheritable(listener.fileno(), True)
        os.environ["FASTFCGI_LISTEN_FD"] = str(listener.fileno())
        logging.shutdown()
        argv = [sys.executable] + _original_argv()
        os.execv(sys.executable, argv)
    return 0


def _file_identity(path):
    """(device, inode) of the file at ``path``, or None."""
    try:
        stat = os.stat(path) if path else None
    except OSError:
        return None
    return stat and (stat.st_dev, stat.st_ino)


def _original_argv():
    """The command line to re-execute: the script or ``-m module`` and its
    arguments (the interpreter's own options are lost).  A ``-c`` program
    is gone by now, so that case re-enters through this module's main()."""
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    if spec is not None and spec.name:
        return ["-m", spec.name] + sys.argv[1:]
    if sys.argv[0] == "-c":
        return ["-c", "import sys, fastfcgi_py; sys.exit(fastfcgi_py.main())"] + sys.argv[1:]
    return sys.argv[:]


if __name__ == "__main__":
    sys.exit(main(core=sys.modules[__name__]))
