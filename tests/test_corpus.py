"""The Parser against real nginx record streams (tests/corpus).

Every ``NNN-name.bin`` is fed to each core three ways (STYLE.md 15): whole,
in small pieces, and followed by trailing data; the events must match
``NNN-name.expected.json``.  How the files were captured, and the
convention behind the expected files (``end_request(id)`` as soon as a
request's stdin has ended, so a stream that stops between requests ends in
NOREQ), are described in ``corpus/capture.py``.

The ``core`` fixture (conftest.py) yields the module under test: the
compiled ``fastfcgi`` or ``fastfcgi_py``.
"""

import glob
import hashlib
import importlib.util
import json
import os
import random
import struct

import pytest

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
NAMES = sorted(os.path.basename(path)[:-len(".bin")] for path in
               glob.glob(os.path.join(CORPUS, "[0-9][0-9][0-9]-*.bin")))

CODES = ("OK", "EOF", "IO", "PROTO", "PLEN", "CLEN", "ABORT", "NOREQ", "SEND")

# Past this size a stream is fed in random pieces of 1..300 bytes (seeded)
# instead of one byte at a time: 5 MB byte by byte would take minutes, and
# pieces that small still cut every record header and most records.
BYTEWISE_LIMIT = 100 * 1024
PIECES_SEED = 15

# Trailing data: FCGI_GET_VALUES (spec 4.1) asking for the three variables
# the spec defines and one it does not.  The parser must answer with one
# GET_VALUES_RESULT that gives the three (from Parser()'s defaults: one
# connection, one request, no multiplexing) and omits the unknown name.
GET_VALUES_NAMES = (b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS",
                    b"FCGI_NO_SUCH_VARIABLE")
GET_VALUES_ANSWER = {"FCGI_MAX_CONNS": "1", "FCGI_MAX_REQS": "1",
                     "FCGI_MPXS_CONNS": "0"}


def _record(rtype, request_id, content):
    pad = -len(content) & 7
    return (struct.pack("!BBHHBx", 1, rtype, request_id, len(content), pad)
            + content + b"\0" * pad)


GET_VALUES_RECORD = _record(9, 0, b"".join(bytes((len(name), 0)) + name
                                           for name in GET_VALUES_NAMES))


def load(name):
    with open(os.path.join(CORPUS, name + ".bin"), "rb") as f:
        stream = f.read()
    with open(os.path.join(CORPUS, name + ".expected.json")) as f:
        expected = json.load(f)
    return stream, expected


def small_pieces(stream):
    if len(stream) <= BYTEWISE_LIMIT:
        return [stream[i:i + 1] for i in range(len(stream))]
    rng = random.Random(PIECES_SEED)
    pieces = []
    i = 0
    while i < len(stream):
        n = rng.randint(1, 300)
        pieces.append(stream[i:i + n])
        i += n
    return pieces


def run(core, pieces):
    """Feed ``pieces`` and then b"" to a new Parser, draining events after
    every feed and ending each request when its stdin ends.

    Returns (events in the expected-file form, the parser).
    """
    parser = core.Parser()
    names = dict((getattr(core, code), code) for code in CODES)
    events = []
    stdin = {}

    def drain():
        """Consume events until None (False) or a code (True)."""
        while True:
            event = parser.next_event()
            if event is None:
                return False
            if isinstance(event, int):
                events.append({"code": names.get(event, event)})
                return True
            kind, request_id = event[0], event[1]
            if kind == core.FCGI_PARAMS:
                assert type(event[4]) is dict
                events.append({"event": "PARAMS", "id": request_id,
                               "role": event[2], "flags": event[3],
                               "params": event[4]})
                stdin[request_id] = []
            elif kind == core.FCGI_STDIN and request_id in stdin:
                chunk = event[2]
                assert type(chunk) is bytes
                if chunk:
                    stdin[request_id].append(chunk)
                    continue
                body = b"".join(stdin.pop(request_id))
                events.append({"event": "STDIN", "id": request_id,
                               "length": len(body),
                               "sha256": hashlib.sha256(body).hexdigest()})
                parser.end_request(request_id)
            else:
                events.append({"unexpected event": repr(event)})

    for piece in pieces:
        parser.feed(piece)
        if drain():
            break          # a code before EOF: the parser is done
    else:
        parser.feed(b"")
        drain()
    return events, parser


def check_sticky(core, parser, events):
    """A code is sticky: asking again gives it again."""
    code = getattr(core, events[-1]["code"])
    assert parser.next_event() == code
    assert parser.next_event() == code


@pytest.mark.parametrize("name", NAMES)
def test_Parser_corpus_whole(core, name):
    stream, expected = load(name)
    events, parser = run(core, [stream])
    assert events == expected
    check_sticky(core, parser, events)
    assert parser.data_to_send() == b""


@pytest.mark.parametrize("name", NAMES)
def test_Parser_corpus_small_pieces(core, name):
    stream, expected = load(name)
    events, parser = run(core, small_pieces(stream))
    assert events == expected
    check_sticky(core, parser, events)
    assert parser.data_to_send() == b""


def decode_get_values_result(data):
    """The pairs of the single GET_VALUES_RESULT record ``data`` holds."""
    assert len(data) >= 8
    version, rtype, request_id, clen, pad = struct.unpack("!BBHHBx", data[:8])
    assert (version, rtype, request_id) == (1, 10, 0)
    assert len(data) == 8 + clen + pad
    content = data[8:8 + clen]
    pairs = {}
    i = 0
    while i < len(content):
        # Every name and value here is short: one-byte lengths.
        n, v = content[i], content[i + 1]
        assert n < 128 and v < 128
        name = content[i + 2:i + 2 + n].decode("latin-1")
        pairs[name] = content[i + 2 + n:i + 2 + n + v].decode("latin-1")
        i += 2 + n + v
    assert i == len(content)
    return pairs


def kept(expected):
    """Whether the stream's last request kept the connection: only then
    is what follows it read (spec 5.1)."""
    heads = [e for e in expected if e.get("event") == "PARAMS"]
    return bool(heads[-1]["flags"] & 1)


@pytest.mark.parametrize("name", NAMES)
def test_Parser_corpus_trailing_get_values(core, name):
    """The stream, then GET_VALUES: the same events, and the answer queued
    if the connection was kept; else the connection ended unread."""
    stream, expected = load(name)
    events, parser = run(core, [stream + GET_VALUES_RECORD])
    assert events == expected
    check_sticky(core, parser, events)
    if kept(expected):
        assert decode_get_values_result(parser.data_to_send()) == GET_VALUES_ANSWER
    assert parser.data_to_send() == b""


@pytest.mark.parametrize("name", NAMES)
def test_Parser_corpus_trailing_partial_header(core, name):
    """The stream, then the first 5 bytes of another BEGIN_REQUEST: on a
    kept connection the peer closed mid-record, so the end is EOF, not
    NOREQ; otherwise the connection ended before them."""
    stream, expected = load(name)
    begin = _record(1, 1, struct.pack("!HB5x", 1, 0))
    events, parser = run(core, [stream + begin[:5]])
    assert events == expected[:-1] + [{"code": "EOF" if kept(expected) else "NOREQ"}]
    check_sticky(core, parser, events)


def test_corpus_expected_files_match_streams():
    """The expected files are what capture.py's own decoder (which shares
    no code with the cores) makes of the streams: nobody edited a .bin or
    a .json alone."""
    spec = importlib.util.spec_from_file_location(
        "corpus_capture", os.path.join(CORPUS, "capture.py"))
    capture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(capture)
    assert NAMES
    for name in NAMES:
        stream, expected = load(name)
        assert capture.expected_events(stream) == expected, name
