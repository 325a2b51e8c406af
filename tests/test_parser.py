"""Parser behaviour, on both cores, each input fed whole, bytewise and with
trailing data (see conftest.check_three_ways)."""

import gc
import socket
import struct
import sys

import pytest

from conftest import (begin, check_three_ways, end_after_stdin, fastfcgi, get_values, nv, pairs,
                      params_records, rec, request, run, stdin_records, ways)

GET_ENV = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/x",
           "QUERY_STRING": "a=1", "CONTENT_LENGTH": ""}


def params_event(env, request_id=1, role=1, flags=0):
    return (4, request_id, role, flags, env)


def end_reply(request_id, protocol_status, app_status=0):
    return rec(3, request_id, struct.pack("!LB3x", app_status, protocol_status))


# -- requests ---------------------------------------------------------------

@pytest.mark.skipif(not hasattr(sys, "getrefcount"), reason="no reference counts (PyPy)")
def test_Parser_keeps_no_credentials_once_the_requests_are_gone(core):
    """The compiled parser keeps a recent request's params as a template
    (fastfcgi.pyx, "Params"), but not its cookies and authorization: once
    the request's dict is gone, nothing holds them, on either core."""
    secrets = {"HTTP_COOKIE": "session=" + "c" * 100, "HTTP_AUTHORIZATION": "Bearer " + "a" * 100,
               "HTTP_PROXY_AUTHORIZATION": "Basic " + "p" * 100}     # past the value cache
    env = dict(GET_ENV, HTTP_HOST="example.org", **secrets)
    for _ in range(3):      # the first makes the template; the others match it
        params = run(core.Parser(), [request(1, env)])[0][0][4]
        assert params == env
    decoded = [params[name] for name in secrets]
    params = None
    gc.collect()        # a parser and its requests' state may be a cycle
    # Held by the list alone (and getrefcount's argument).
    assert [sys.getrefcount(decoded[i]) for i in range(3)] == [2, 2, 2]


def test_Parser_get_request(core):
    data = request(1, GET_ENV)
    check_three_ways(core, data, [params_event(GET_ENV), (5, 1, b""), core.NOREQ])


def test_Parser_request_still_active_at_close_is_EOF(core):
    # Nobody called end_request: the peer left while a request was active.
    check_three_ways(core, request(1, GET_ENV),
                     [params_event(GET_ENV), (5, 1, b""), core.EOF], on_event=None)


def test_Parser_post_streams_stdin_per_record(core):
    env = dict(GET_ENV, REQUEST_METHOD="POST", CONTENT_LENGTH="10")
    data = request(7, env, b"0123456789", split=4)
    check_three_ways(core, data, [params_event(env, 7), (5, 7, b"0123"), (5, 7, b"4567"),
                                  (5, 7, b"89"), (5, 7, b""), core.NOREQ])


def test_Parser_body_without_content_length(core):
    # Bodies relayed from chunked or HTTP/2 uploads come with no length.
    env = {"REQUEST_METHOD": "PUT"}
    data = request(1, env, b"abc" * 10, split=16)
    check_three_ways(core, data, [params_event(env), (5, 1, b"abc" * 5 + b"a"),
                                  (5, 1, b"bcabcabcabcabc"), (5, 1, b""), core.NOREQ])


def test_Parser_keep_conn_flag_and_role(core):
    env = {"A": "b"}
    data = request(3, env, role=2, flags=1)
    check_three_ways(core, data, [params_event(env, 3, 2, 1), (5, 3, b""), core.NOREQ])


def test_Parser_two_requests_on_kept_connection(core):
    env = {"N": "1"}
    data = request(1, env, flags=1) + request(1, {"N": "2"}, b"x", flags=1)
    check_three_ways(core, data, [params_event(env, flags=1), (5, 1, b""),
                                  params_event({"N": "2"}, flags=1), (5, 1, b"x"), (5, 1, b""),
                                  core.NOREQ])


def test_Parser_padding_of_any_length_is_skipped(core):
    data = (rec(1, 1, struct.pack("!HB5x", 1, 0), pad=255)
            + rec(4, 1, nv("K", "v"), pad=0) + rec(4, 1, b"", pad=7)
            + rec(5, 1, b"body", pad=200) + rec(5, 1, b"", pad=1))
    check_three_ways(core, data, [params_event({"K": "v"}), (5, 1, b"body"), (5, 1, b""),
                                  core.NOREQ])


def test_Parser_version_other_than_1_is_PROTO_and_sticky(core):
    data = rec(1, 1, struct.pack("!HB5x", 1, 0), version=2)
    check_three_ways(core, data, [core.PROTO])
    parser = core.Parser()
    parser.feed(data[:2])     # known as soon as the header starts... no: needs 8 bytes
    assert parser.next_event() is None
    parser.feed(data[2:8])
    assert parser.next_event() == core.PROTO
    parser.feed(request(1))
    assert parser.next_event() == core.PROTO
    assert parser.error == core.PROTO


def test_Parser_stays_in_error_after_any_code(core):
    for data, code in [(rec(6, 0, b"x"), core.PROTO),         # STDOUT with id 0
                       (begin() + rec(4, 1, b"\x05"), core.PROTO)]:
        parser = core.Parser(max_param_size=10)
        events, _ = run(parser, [data + rec(4, 1, b"")], eof=False)
        assert events == [code]
        parser.feed(request(2))
        assert parser.next_event() == code
        assert parser.next_event() == code


def test_Parser_per_request_failures_end_that_request_alone(core):
    """PLEN, CLEN and ABORT end one request (its records are skipped until
    it is answered); the kept connection then serves the next one."""
    big = {"A": "x" * 15}
    for data, code in [(request(1, big, b"body", flags=1), core.PLEN),
                       (request(1, {"CONTENT_LENGTH": "x"}, b"body", flags=1), core.CLEN),
                       (begin(1, flags=1) + params_records(1, {}) + rec(5, 1, b"bo")
                        + rec(2, 1) + rec(5, 1, b"dy") + rec(5, 1, b""), core.ABORT)]:
        data += request(1, {"N": "2"}, flags=1)
        expected = ([params_event({}, flags=1), (5, 1, b"bo")] if code == core.ABORT else [])
        check_three_ways(core, data, expected + [
            (2, 1, code), params_event({"N": "2"}, flags=1), (5, 1, b""), core.NOREQ],
            max_param_size=14)


# -- params -----------------------------------------------------------------

def test_Parser_params_one_and_four_byte_lengths(core):
    env = {"N" * 127: "v" * 128, "X" * 128: "y" * 127, "E": "", "": "empty name",
           "LONG": "z" * 65536}     # the default limit, exactly
    data = request(1, env, split=1000)
    check_three_ways(core, data, [params_event(env), (5, 1, b""), core.NOREQ])


def test_Parser_params_split_across_records_at_every_byte(core):
    env = {"HTTP_HOST": "example.org", "K" * 200: "V" * 300}
    for split in (1, 2, 3, 5, 7, 130):
        data = request(1, env, split=split)
        events, _ = run(core.Parser(), [data])
        assert events[0] == params_event(env)


def test_Parser_params_decoded_as_latin1(core):
    raw = bytes(range(256))
    data = begin() + rec(4, 1, nv(b"HTTP_X", raw) + nv(b"\xe9t\xe9", b"\xff")) + rec(4, 1, b"") \
        + rec(5, 1, b"")
    env = {"HTTP_X": raw.decode("latin-1"), "\xe9t\xe9": "\xff"}
    check_three_ways(core, data, [params_event(env), (5, 1, b""), core.NOREQ])
    assert all(type(k) is str and type(v) is str for k, v in env.items())


def test_Parser_duplicate_param_last_wins(core):
    data = begin() + rec(4, 1, nv("A", "1") + nv("A", "2")) + rec(4, 1, b"") + rec(5, 1, b"")
    check_three_ways(core, data, [params_event({"A": "2"}), (5, 1, b""), core.NOREQ])


@pytest.mark.parametrize("name,value,code", [
    ("n" * 10, "v" * 10, 0),          # at the limits: fine
    ("n" * 11, "v", -4),              # name over
    ("n", "v" * 11, -4),              # value over
])
def test_Parser_param_size_limit(core, name, value, code):
    env = {name: value}
    data = request(1, env)
    expected = ([params_event(env), (5, 1, b""), core.NOREQ] if code == 0
                else [(2, 1, code), core.NOREQ])
    check_three_ways(core, data, expected, max_param_size=10)


def test_Parser_all_params_size_limit(core):
    env = {"A": "x" * 40, "B": "y" * 40}     # 2 * (2 + 1 + 40) = 86 bytes
    data = request(1, env, split=10)
    check_three_ways(core, data, [params_event(env), (5, 1, b""), core.NOREQ],
                     max_params_size=86)
    check_three_ways(core, data, [(2, 1, core.PLEN), core.NOREQ], max_params_size=85)


def test_Parser_param_length_running_past_end_is_PROTO(core):
    for body in (b"\x05\x01ab", b"\x80\x00", b"\x03", b"\x01\x80\x00\x00"):
        data = begin() + rec(4, 1, body) + rec(4, 1, b"")
        check_three_ways(core, data, [core.PROTO])


# -- content length and body limits ------------------------------------------

@pytest.mark.parametrize("cl", ["12a", "-2", "-", " 5", "+5", "5 ", "\xb2", "0x5", "1" * 19])
def test_Parser_invalid_content_length_is_CLEN(core, cl):
    data = request(1, {"CONTENT_LENGTH": cl}, b"12345")
    check_three_ways(core, data, [(2, 1, core.CLEN), core.NOREQ])


def test_Parser_content_length_minus_one_means_unknown(core):
    # Caddy 2.6 relays chunked uploads with CONTENT_LENGTH -1.
    env = {"CONTENT_LENGTH": "-1"}
    check_three_ways(core, request(1, env, b"abc"),
                     [params_event(env), (5, 1, b"abc"), (5, 1, b""), core.NOREQ])


def test_Parser_empty_content_length_means_none(core):
    # nginx sends CONTENT_LENGTH "" for requests without a body.
    env = {"CONTENT_LENGTH": ""}
    check_three_ways(core, request(1, env, b"ab"),
                     [params_event(env), (5, 1, b"ab"), (5, 1, b""), core.NOREQ])


def test_Parser_content_length_over_max_body_is_CLEN_before_the_body(core):
    env = {"CONTENT_LENGTH": "101"}
    data = begin() + params_records(1, env)
    check_three_ways(core, data, [(2, 1, core.CLEN), core.NOREQ], max_body=100)
    env = {"CONTENT_LENGTH": "100"}
    check_three_ways(core, request(1, env, b"x" * 100, split=60),
                     [params_event(env), (5, 1, b"x" * 60), (5, 1, b"x" * 40), (5, 1, b""),
                      core.NOREQ], max_body=100)


def test_Parser_body_over_max_body_without_length_is_CLEN(core):
    data = request(1, {}, b"x" * 101, split=50)
    check_three_ways(core, data, [params_event({}), (5, 1, b"x" * 50), (5, 1, b"x" * 50),
                                  (2, 1, core.CLEN), core.NOREQ], max_body=100)


def test_Parser_more_stdin_than_content_length_is_cut_at_content_length(core):
    """PEP 3333: the application reads at most CONTENT_LENGTH bytes; the
    rest is dropped, and end_request says how much."""
    env = {"CONTENT_LENGTH": "3"}
    data = request(1, env, b"abcdefg", split=2)
    check_three_ways(core, data, [params_event(env), (5, 1, b"ab"), (5, 1, b"c"), (5, 1, b""),
                                  core.NOREQ])
    parser = core.Parser()
    events, _ = run(parser, [data], eof=False)
    assert parser.end_request(1) == 4
    assert parser.end_request(1) == 0       # inactive now


def test_Parser_less_stdin_than_content_length_is_ABORT(core):
    env = {"CONTENT_LENGTH": "5", "N": "1"}
    data = request(1, env, b"abc", flags=1) + request(1, {"N": "2"}, flags=1)
    check_three_ways(core, data, [params_event(env, flags=1), (5, 1, b"abc"), (2, 1, core.ABORT),
                                  params_event({"N": "2"}, flags=1), (5, 1, b""), core.NOREQ])



def test_Parser_take_stdin_end_takes_a_gets_empty_stdin(core):
    """The Request's shortcut: the empty STDIN right after the params is
    taken without an event, and the next request follows."""
    parser = core.Parser()
    parser.feed(request(1, GET_ENV, flags=1) + request(1, {"N": "2"}, flags=1))
    assert parser.next_event() == params_event(GET_ENV, flags=1)
    assert parser.take_stdin_end(2) is False            # another id: nothing taken
    before = parser.buffered
    assert parser.take_stdin_end(1) is True
    assert parser.buffered == before - 8
    assert parser.take_stdin_end(1) is False            # stdin already ended
    parser.end_request(1)
    assert parser.next_event() == params_event({"N": "2"}, flags=1)


@pytest.mark.parametrize("case", ["body-first", "short-body", "aborted", "partial-header",
                                  "stdin-ended", "error"])
def test_Parser_take_stdin_end_leaves_everything_else_to_next_event(core, case):
    """Anything but a clean end of stdin stays for next_event, which
    reports it as it always does."""
    env = {"CONTENT_LENGTH": "3"} if case in ("body-first", "short-body") else {}
    data = begin(1) + params_records(1, env)
    then = {"body-first": stdin_records(1, b"abc"),
            "short-body": stdin_records(1, b""),
            "aborted": rec(2, 1) + stdin_records(1, b""),
            "partial-header": stdin_records(1, b"")[:7],
            "stdin-ended": stdin_records(1, b"") + stdin_records(1, b""),
            "error": rec(5, 1, b"", version=2)}[case]
    parser = core.Parser()
    parser.feed(data + then)
    assert parser.next_event()[0] == 4
    if case == "stdin-ended":
        assert parser.take_stdin_end(1) is True
    before = parser.buffered
    assert parser.take_stdin_end(1) is False
    assert parser.buffered == before
    expected = {"body-first": (5, 1, b"abc"), "short-body": (2, 1, core.ABORT),
                "aborted": (2, 1, core.ABORT),
                "partial-header": None, "stdin-ended": core.PROTO, "error": core.PROTO}[case]
    assert parser.next_event() == expected
    if case == "error":
        assert parser.take_stdin_end(1) is False        # a parser in error takes nothing


# -- abort, roles, multiplexing --------------------------------------------

def test_Parser_abort_request(core):
    data = begin(1, flags=1) + params_records(1, {}) + rec(5, 1, b"part") + rec(2, 1) \
        + rec(5, 1, b"late") + request(1, {"N": "2"}, flags=1)
    check_three_ways(core, data, [params_event({}, flags=1), (5, 1, b"part"), (2, 1, core.ABORT),
                                  params_event({"N": "2"}, flags=1), (5, 1, b""), core.NOREQ])


def test_Parser_abort_before_params(core):
    data = begin(4) + rec(4, 4, nv("a", "b")) + rec(2, 4)
    check_three_ways(core, data, [(2, 4, core.ABORT), core.NOREQ])


def test_Parser_unknown_role_kept_connection_lives_on(core):
    data = begin(1, role=9, flags=1) + params_records(1, {"X": "y"}) + rec(5, 1, b"") \
        + request(2, {"N": "2"})
    check_three_ways(core, data, [params_event({"N": "2"}, 2), (5, 2, b""), core.NOREQ],
                     expected_replies=end_reply(1, 3))


def test_Parser_unknown_role_without_keep_conn_ends_connection(core):
    parser = core.Parser()
    events, replies = run(parser, [begin(1, role=0)], eof=False)
    assert events == [core.NOREQ]
    assert replies == end_reply(1, 3)


def test_Parser_second_request_while_active_is_CANT_MPX_CONN(core):
    data = (begin(1, flags=1) + params_records(1, {"N": "1"})
            + request(2, {"N": "2"}, b"ignored", flags=1)  # rejected, its records skipped
            + stdin_records(1, b"one"))
    check_three_ways(core, data, [params_event({"N": "1"}, flags=1), (5, 1, b"one"),
                                  (5, 1, b""), core.NOREQ],
                     expected_replies=end_reply(2, 1))


def test_Parser_multiplexing_when_enabled(core):
    data = (begin(1, flags=1) + begin(2, flags=1) + params_records(2, {"N": "2"})
            + params_records(1, {"N": "1"}) + rec(5, 1, b"a") + rec(5, 2, b"b")
            + rec(5, 2, b"") + rec(5, 1, b"") + begin(3, flags=1))
    check_three_ways(core, data, [params_event({"N": "2"}, 2, flags=1),
                                  params_event({"N": "1"}, 1, flags=1),
                                  (5, 1, b"a"), (5, 2, b"b"), (5, 2, b""), (5, 1, b""),
                                  core.EOF],  # request 3 begun, then the peer closed
                     expected_replies=b"", mpxs_conns=True, max_reqs=3)
    # Over max_reqs: the third is refused, OVERLOADED (spec 5.5).
    check_three_ways(core, begin(1, flags=1) + begin(2, flags=1) + begin(3, flags=1),
                     [core.EOF], expected_replies=end_reply(3, 2),
                     mpxs_conns=True, max_reqs=2)


# -- misplaced records --------------------------------------------------------

@pytest.mark.parametrize("data", [
    begin(1) + rec(5, 1, b"x"),                         # stdin before params ended
    begin(1) + params_records(1, {}) + rec(4, 1, nv("a", "b")),  # params after the end
    begin(1) + begin(1),                                # the same id twice
    rec(1, 1, b"\0\1\0"),                               # short BEGIN_REQUEST body
    begin(0),                                           # a request record with id 0
    begin(1) + rec(6, 1, b"out"),                       # STDOUT sent to the application
    begin(1) + rec(3, 1, b"\0" * 8),                    # END_REQUEST sent to the application
    begin(1) + rec(9, 1, nv("FCGI_MAX_CONNS", "")),     # GET_VALUES with a request id
    rec(9, 0, b"\x05"),                                 # malformed GET_VALUES
    begin(1) + params_records(1, {}) + stdin_records(1, b"") + rec(5, 1, b"x"),  # after end
])
def test_Parser_misplaced_records_are_PROTO(core, data):
    events, _ = run(core.Parser(), [data])
    assert events[-1] == core.PROTO
    assert all(type(e) is tuple for e in events[:-1])
    check_three_ways(core, data, events, on_event=None)


# -- management records -------------------------------------------------------

def test_Parser_get_values_answers_only_what_was_asked(core):
    w = core.Writer()
    data = get_values("FCGI_MPXS_CONNS", "UNKNOWN_NAME", "FCGI_MAX_CONNS")
    check_three_ways(core, data, [core.NOREQ],
                     expected_replies=w.get_values_result(
                         [("FCGI_MPXS_CONNS", "0"), ("FCGI_MAX_CONNS", "4")]),
                     max_conns=4)
    check_three_ways(core, get_values("FCGI_MAX_REQS", "FCGI_MPXS_CONNS"), [core.NOREQ],
                     expected_replies=w.get_values_result(
                         [("FCGI_MAX_REQS", "8"), ("FCGI_MPXS_CONNS", "1")]),
                     max_reqs=8, mpxs_conns=True)


def test_Parser_management_records_in_the_middle_of_a_request(core):
    env = {"K": "v"}
    data = (begin(1) + get_values("FCGI_MAX_REQS") + rec(4, 1, pairs(env))
            + rec(77, 0, b"?") + rec(4, 1, b"") + rec(200, 1, b"") + rec(200, 5, b"")
            + stdin_records(1, b"q"))
    expected_replies = (core.Writer().get_values_result({"FCGI_MAX_REQS": "1"})
                        + core.Writer().unknown_type(77) + core.Writer().unknown_type(200))
    check_three_ways(core, data, [params_event(env), (5, 1, b"q"), (5, 1, b""), core.NOREQ],
                     expected_replies=expected_replies)


def test_Parser_unknown_type_reply_layout(core):
    _, replies = run(core.Parser(), [rec(12, 0, b"")])
    assert replies == rec(11, 0, bytes((12,)) + b"\0" * 7).replace(b"\xAA", b"\0")
    assert replies == b"\x01\x0b\x00\x00\x00\x08\x00\x00\x0c" + b"\0" * 7


# -- end of input -------------------------------------------------------------

def test_Parser_clean_close_is_NOREQ(core):
    check_three_ways(core, b"", [core.NOREQ])


@pytest.mark.parametrize("cut", [1, 7, 8, 12, 16, 20, 35])
def test_Parser_close_mid_record_or_request_is_EOF(core, cut):
    data = request(1, {"K": "value"}, b"body")[:cut]
    parser = core.Parser()
    events, _ = run(parser, [data])
    assert events[-1] == core.EOF
    check_three_ways(core, data, events, trailing=False)


def test_Parser_feed_after_eof_raises(core):
    parser = core.Parser()
    parser.feed(b"")
    parser.feed(b"")          # repeating EOF is harmless
    with pytest.raises(RuntimeError):
        parser.feed(b"x")


def test_Parser_rejects_bad_limits(core):
    for kw in ({"max_param_size": -1}, {"max_params_size": -1}, {"max_body": -5}):
        with pytest.raises(ValueError):
            core.Parser(**kw)
    with pytest.raises(TypeError):
        core.Parser(10)       # options are keyword-only


def test_Parser_exposes_its_limits(core):
    p = core.Parser(max_param_size=5, max_params_size=6, max_body=7, max_conns=2,
                    max_reqs=3, mpxs_conns=True)
    assert (p.max_param_size, p.max_params_size, p.max_body, p.max_conns, p.max_reqs,
            p.mpxs_conns) == (5, 6, 7, 2, 3, True)
    assert core.Parser().max_body is None


def test_Parser_filter_role_data_stream(core):
    env = {"FCGI_DATA_LENGTH": "4"}
    data = (begin(1, role=3) + params_records(1, env) + stdin_records(1, b"in")
            + rec(8, 1, b"da") + rec(8, 1, b"ta") + rec(8, 1, b""))
    check_three_ways(core, data, [params_event(env, role=3), (5, 1, b"in"), (5, 1, b""),
                                  (8, 1, b"da"), (8, 1, b"ta"), (8, 1, b""), core.EOF],
                     on_event=None)


# -- asyncio's buffered protocols: get_buffer / buffer_updated -------------------

def feed_through_buffers(parser, chunks):
    """As conftest.run, but each chunk written into get_buffer()'s buffer."""
    events = []
    for chunk in chunks:
        lent = parser.get_buffer(len(chunk) + 3)
        assert len(lent) == len(chunk) + 3
        with memoryview(lent) as view:  # as recv_into writes into it
            assert not view.readonly
            view[:len(chunk)] = chunk
        parser.buffer_updated(len(chunk))
        while True:
            event = parser.next_event()
            if event is None:
                break
            events.append(event)
            end_after_stdin(parser, event)
    parser.feed(b"")
    events.append(parser.next_event())
    return events


def test_Parser_get_buffer_and_buffer_updated_are_feed(core):
    data = (request(1, {"CONTENT_LENGTH": "9"}, b"abcdefghi", flags=1, split=4)
            + get_values("FCGI_MAX_REQS") + request(1, {"N": "2"}, flags=1))
    expected, _ = run(core.Parser(), [data], on_event=end_after_stdin)
    for _, chunks, _ in ways(data)[:2]:
        assert feed_through_buffers(core.Parser(), chunks) == expected


def test_Parser_buffer_protocol_misuse_raises(core):
    parser = core.Parser()
    with pytest.raises(RuntimeError):
        parser.buffer_updated(1)            # no get_buffer first
    lent = parser.get_buffer(-1)            # asyncio's "any size"
    assert len(lent) > 0
    with pytest.raises(ValueError):
        parser.buffer_updated(len(lent) + 1)
    parser.buffer_updated(0)
    with pytest.raises(RuntimeError):
        parser.buffer_updated(0)            # once per get_buffer
    parser.get_buffer(10)                   # a read that found EOF: abandoned
    parser.feed(b"")
    with pytest.raises(RuntimeError):
        parser.buffer_updated(0)
    with pytest.raises(RuntimeError):
        parser.get_buffer(10)               # after EOF
    assert parser.next_event() == core.NOREQ


def test_Parser_compiled_lent_buffer_cannot_move_while_a_read_holds_it():
    """The compiled parser lends its own receive buffer: while a read holds
    it, nothing may reallocate it.  (The pure parser lends a scratch buffer
    and copies from it, so it has nothing to protect: a check that cannot
    apply to Python.)"""
    if fastfcgi is None:
        pytest.skip("compiled core not built")
    parser = fastfcgi.Parser()
    lent = parser.get_buffer(16)
    with memoryview(lent) as view:
        with pytest.raises(BufferError):
            parser.feed(b"x" * 100000)          # would grow the buffer
        view[:16] = begin(1)
    parser.buffer_updated(16)
    parser.feed(params_records(1, {}) + stdin_records(1, b""))
    assert parser.next_event() == (4, 1, 1, 0, {})


def test_Parser_under_an_asyncio_buffered_protocol(core):
    """A real event loop reads a real socket straight into the parser."""
    import asyncio
    if not hasattr(asyncio, "BufferedProtocol"):
        pytest.skip("asyncio.BufferedProtocol is new in Python 3.7")
    data = (request(1, {"CONTENT_LENGTH": "300000"}, b"z" * 300000, flags=1)
            + request(1, {"N": "2"}, flags=1))
    expected, _ = run(core.Parser(), [data], on_event=end_after_stdin)

    class Protocol(asyncio.BufferedProtocol):
        def __init__(self, done):
            self.parser = core.Parser()
            self.events = []
            self.done = done

        def get_buffer(self, sizehint):
            return self.parser.get_buffer(sizehint)

        def buffer_updated(self, nbytes):
            self.parser.buffer_updated(nbytes)
            self.drain()

        def eof_received(self):
            self.parser.feed(b"")
            self.drain()

        def drain(self):
            while True:
                event = self.parser.next_event()
                if event is None:
                    return
                self.events.append(event)
                if type(event) is int:
                    self.done.set_result(self.events)
                    return
                end_after_stdin(self.parser, event)

    async def main():
        loop = asyncio.get_event_loop()
        app, web = socket.socketpair()
        done = loop.create_future()
        transport, _ = await loop.connect_accepted_socket(lambda: Protocol(done), app)
        web.setblocking(False)
        await loop.sock_sendall(web, data)
        web.shutdown(socket.SHUT_WR)
        try:
            return await asyncio.wait_for(done, 10)
        finally:
            transport.close()
            web.close()

    loop = asyncio.new_event_loop()
    try:
        events = loop.run_until_complete(main())
    finally:
        loop.close()
    # Joined per request: how the loop's reads cut the body is its own.
    def joined(events):
        out, body = [], b""
        for event in events:
            if type(event) is tuple and event[0] == 5 and event[2]:
                body += event[2]
                continue
            if body:
                out.append((5, event[1] if type(event) is tuple else None, body))
                body = b""
            out.append(event)
        return out
    assert joined(events) == joined(expected)


def test_Parser_a_held_request_and_then_EOF_is_EOF(core):
    """The next request waits unread while the active one's answer is
    pending (``waiting``); if the peer closes meanwhile, it is EOF."""
    parser = core.Parser()
    parser.feed(request(1, GET_ENV, flags=1) + begin(2, flags=1))
    assert parser.next_event() == params_event(GET_ENV, flags=1)
    assert parser.next_event() == (5, 1, b"")
    assert parser.next_event() is None and parser.waiting
    parser.feed(b"")
    assert parser.next_event() == core.EOF


def test_Parser_data_only_for_the_filter_role(core):
    data = begin(1) + params_records(1, {}) + rec(8, 1, b"x")
    check_three_ways(core, data, [params_event({}), core.PROTO], on_event=None)
    data = (begin(1, role=3) + params_records(1, {}) + stdin_records(1, b"")
            + rec(8, 1, b"x" * 6) + rec(8, 1, b"x" * 6))
    check_three_ways(core, data, [params_event({}, role=3), (5, 1, b""), (8, 1, b"x" * 6),
                                  (2, 1, core.CLEN), core.EOF], max_body=10, on_event=None)
