"""fastfcgi_py: a FastCGI application server for Python, in one file.

Standard library only, Python 3.6+.  This module is the whole product in pure
Python (protocol, Request, WSGI gateway, servers, CLI) and the reference for
the compiled module ``fastfcgi``, which re-implements only the hot parts
(``Parser`` and ``Writer``) and imports everything else from here.  Copy this
file into a project to vendor fastfcgi.

Table of contents: ``grep -n '^# .*####' fastfcgi_py.py``.
"""

import errno
import os
import socket
import struct

__version__ = "0.1.0"

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
    "FCGI_UNKNOWN_ROLE",
    "DEFAULT_MAX_PARAM_SIZE", "DEFAULT_MAX_PARAMS_SIZE",
    # protocol core
    "Parser", "Writer", "encode_params", "send_file",
]


# ############################################################################
# Constants and records  ######################################################
# ############################################################################
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
# The id set of requests we rejected or ended whose late records we skip;
# past this many the peer is misbehaving.
_MAX_IGNORED = 64
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


# ############################################################################
# Parser  #####################################################################
# ############################################################################
#
# Theory of operation.  The parser is sans-IO: ``feed(data)`` appends bytes
# (``b""`` means the peer closed), ``next_event()`` consumes whole records and
# returns the first thing the caller must act on:
#
#   None                               need more data
#   (FCGI_PARAMS, id, role, flags, params)
#                                      a request's params are complete; params
#                                      is a dict of latin-1 str, WSGI-ready
#   (FCGI_STDIN, id, chunk)            one STDIN record's content; b"" = end
#   (FCGI_DATA, id, chunk)             the same for the FILTER role's data
#   (FCGI_ABORT_REQUEST, id)           the request is aborted: the peer sent
#                                      ABORT_REQUEST, or stdin ended short of
#                                      CONTENT_LENGTH (the ABORT code)
#   an int code                        EOF, NOREQ, PROTO, PLEN or CLEN; the
#                                      connection is over and the parser stays
#                                      in that state (sticky)
#
# Management records are answered inside the parser: replies (GET_VALUES_
# RESULT, UNKNOWN_TYPE, END_REQUEST with UNKNOWN_ROLE or CANT_MPX_CONN) are
# queued for ``data_to_send()``.  A request id stays active until the caller
# says it answered it (``end_request``); late records for an ended or rejected
# id are skipped (spec 3.3: the application ignores records of inactive ids
# it has seen), records for an id never begun are PROTO.
#
# Events are emitted per whole record, so the events do not depend on how the
# bytes were split: the differential tests rely on that.
#
# ``read_request(sock)`` and ``read_event(sock)`` are the blocking fast path:
# the same state machine, fed from a connected socket.


class _RequestState(object):
    """Per-request parser state."""

    __slots__ = ("role", "flags", "params", "params_buf", "content_length",
                 "stdin_seen", "stdin_done", "data_done", "aborted")

    def __init__(self, role, flags):
        self.role = role
        self.flags = flags
        self.params = None          # dict once the PARAMS stream ended
        self.params_buf = bytearray()
        self.content_length = -1    # -1: no CONTENT_LENGTH given
        self.stdin_seen = 0
        self.stdin_done = False
        self.data_done = False
        self.aborted = False


class Parser(object):
    """Sans-IO FastCGI record parser for the application side.

    Args (keyword-only):
        max_param_size: longest allowed param name or value (PLEN past it).
        max_params_size: most bytes of all params of one request (PLEN).
        max_body: most stdin bytes of one request, or None for no limit
            (CLEN past it, or at once when CONTENT_LENGTH says more).
        max_conns, max_reqs, mpxs_conns: what FCGI_GET_VALUES is told
            (spec 4.1).  With mpxs_conns true up to max_reqs requests may be
            active on one connection; otherwise a second concurrent
            BEGIN_REQUEST is answered with END_REQUEST(CANT_MPX_CONN).

    See the section comment above for the events and codes.
    """

    __slots__ = ("max_param_size", "max_params_size", "max_body", "max_conns",
                 "max_reqs", "mpxs_conns", "_buf", "_pos", "_eof", "_error",
                 "_requests", "_ignored", "_out", "_closing",
                 "request_id", "role", "flags", "params")

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
        self._ignored = set()    # ended or rejected ids: skip their records
        self._out = []           # queued management replies
        self._closing = False    # rejected a request without KEEP_CONN
        # The head of the last request read_request returned OK for.
        self.request_id = 0
        self.role = 0
        self.flags = 0
        self.params = None

    # -- feeding ------------------------------------------------------------

    def feed(self, data):
        """Append bytes received from the web server; ``b""`` marks EOF.

        Raises:
            RuntimeError: data fed after EOF.
        """
        if self._eof:
            if data:
                raise RuntimeError("Parser.feed() after EOF")
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def error(self):
        """The sticky code (EOF, NOREQ, PROTO, PLEN, CLEN, IO, SEND) or 0."""
        return self._error

    @property
    def keep_conn(self):
        """True when the last request read asked to keep the connection."""
        return bool(self.flags & FCGI_KEEP_CONN)

    def data_to_send(self):
        """Return (and forget) the queued replies to management records."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out = []
        return out

    def end_request(self, request_id):
        """Mark ``request_id`` answered.

        Its late records (stdin the application did not read) are skipped
        from now on, and a new BEGIN_REQUEST may reuse the id (nginx always
        sends id 1).
        """
        if self._requests.pop(request_id, None) is not None:
            self._ignore(request_id)

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
            pos = self._pos
            avail = len(buf) - pos
            if avail < 8:
                if self._closing and not self._requests:
                    return self._fail(NOREQ)
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

    def _ignore(self, request_id):
        if len(self._ignored) >= _MAX_IGNORED:
            self._ignored.clear()
        self._ignored.add(request_id)

    def _dispatch(self, rtype, request_id, content):
        if request_id == 0:
            if rtype == FCGI_GET_VALUES:
                return self._on_get_values(content)
            if FCGI_BEGIN_REQUEST <= rtype <= FCGI_DATA:
                return self._fail(PROTO)      # a request record with id 0
            self._out.append(_record(FCGI_UNKNOWN_TYPE, 0, bytes((rtype,)) + b"\0" * 7))
            return None
        handler = _HANDLERS.get(rtype)
        if handler is None:
            if rtype in _MISPLACED_WITH_ID:
                # A record only applications send, or a management record
                # with a request id: the peer is confused.
                return self._fail(PROTO)
            self._out.append(_record(FCGI_UNKNOWN_TYPE, 0, bytes((rtype,)) + b"\0" * 7))
            return None
        if rtype != FCGI_BEGIN_REQUEST:
            state = self._requests.get(request_id)
            if state is None:
                if request_id in self._ignored:
                    return None
                return self._fail(PROTO)
            if state.aborted:
                return None
            return handler(self, request_id, content, state)
        return handler(self, request_id, content, None)

    # One handler per record type (spec 5); each returns an event, a code
    # (through _fail) or None to go on.

    def _on_begin_request(self, request_id, content, state):
        if len(content) != 8 or request_id in self._requests:
            return self._fail(PROTO)
        role = (content[0] << 8) | content[1]
        flags = content[2]
        self._ignored.discard(request_id)
        if role not in (FCGI_RESPONDER, FCGI_AUTHORIZER, FCGI_FILTER):
            reply = FCGI_UNKNOWN_ROLE
        elif self._requests and (not self.mpxs_conns
                                 or len(self._requests) >= self.max_reqs):
            reply = FCGI_CANT_MPX_CONN
        else:
            self._requests[request_id] = _RequestState(role, flags)
            return None
        self._out.append(_end_request(request_id, 0, reply))
        self._ignore(request_id)
        if not flags & FCGI_KEEP_CONN:
            self._closing = True
        return None

    def _on_abort_request(self, request_id, content, state):
        state.aborted = True
        return (FCGI_ABORT_REQUEST, request_id)

    def _on_params(self, request_id, content, state):
        if state.params is not None:
            return self._fail(PROTO)
        if content:
            if len(state.params_buf) + len(content) > self.max_params_size:
                return self._fail(PLEN)
            state.params_buf += content
            return None
        params = _decode_params(bytes(state.params_buf), self.max_param_size)
        state.params_buf = None
        if type(params) is int:
            return self._fail(params)
        cl = params.get("CONTENT_LENGTH")
        if cl:
            if len(cl) > _MAX_CL_DIGITS or cl.strip("0123456789"):
                return self._fail(CLEN)
            n = int(cl)
            if self.max_body is not None and n > self.max_body:
                return self._fail(CLEN)
            state.content_length = n
        state.params = params
        return (FCGI_PARAMS, request_id, state.role, state.flags, params)

    def _on_stdin(self, request_id, content, state):
        if state.params is None or state.stdin_done:
            return self._fail(PROTO)
        if not content:
            state.stdin_done = True
            if 0 <= state.content_length and state.stdin_seen < state.content_length:
                state.aborted = True
                return (FCGI_ABORT_REQUEST, request_id)
            return (FCGI_STDIN, request_id, b"")
        seen = state.stdin_seen + len(content)
        state.stdin_seen = seen
        if 0 <= state.content_length < seen:
            return self._fail(PROTO)
        if self.max_body is not None and seen > self.max_body:
            return self._fail(CLEN)
        return (FCGI_STDIN, request_id, content)

    def _on_data(self, request_id, content, state):
        if state.params is None or state.data_done:
            return self._fail(PROTO)
        if not content:
            state.data_done = True
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

    # -- blocking fast path ------------------------------------------------

    def read_event(self, sock):
        """Block on the connected socket ``sock`` until the next event.

        Management replies are sent as they arise.

        Returns:
            An event tuple or a code: as ``next_event``, plus IO (read
            error) and SEND (write error), both sticky.
        """
        while True:
            event = self.next_event()
            if self._out:
                try:
                    sock.sendall(self.data_to_send())
                except OSError:
                    return self._fail(SEND)
            if event is not None:
                return event
            try:
                data = sock.recv(_RECV_SIZE)
            except OSError:
                return self._fail(IO)
            self.feed(data)

    def read_request(self, sock):
        """Block until a request's params are complete (FU's read_req).

        Returns:
            OK, with ``request_id``, ``role``, ``flags``, ``keep_conn`` and
            ``params`` set; ABORT (``request_id`` set) when the peer aborted
            the request before its params ended; or a sticky code (NOREQ,
            EOF, IO, PROTO, PLEN, CLEN, SEND).  STDIN events of an earlier
            request that was ended are skipped.
        """
        while True:
            event = self.read_event(sock)
            if type(event) is int:
                return event
            kind = event[0]
            if kind == FCGI_PARAMS:
                self.request_id = event[1]
                self.role = event[2]
                self.flags = event[3]
                self.params = event[4]
                return OK
            if kind == FCGI_ABORT_REQUEST:
                self.request_id = event[1]
                return ABORT
            # STDIN/DATA of a request the caller has not ended: the caller
            # reads those with read_event; here they are a misuse.
            raise RuntimeError("read_request() while request %d is being read"
                               % event[1])


_RECV_SIZE = 262144

_HANDLERS = {
    FCGI_BEGIN_REQUEST: Parser._on_begin_request,
    FCGI_ABORT_REQUEST: Parser._on_abort_request,
    FCGI_PARAMS: Parser._on_params,
    FCGI_STDIN: Parser._on_stdin,
    FCGI_DATA: Parser._on_data,
}
_MISPLACED_WITH_ID = frozenset((FCGI_END_REQUEST, FCGI_STDOUT, FCGI_STDERR,
                                FCGI_GET_VALUES, FCGI_GET_VALUES_RESULT,
                                FCGI_UNKNOWN_TYPE))


# ############################################################################
# Writer  #####################################################################
# ############################################################################
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
    import select
    select.select([], [sock], [])
