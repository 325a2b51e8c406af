"""WSGI applications the integration tests serve (each wrapped in
wsgiref.validate.validator, so a PEP 3333 slip of the gateway fails loudly).

Run by the server subprocess as ``tests.apps:NAME`` (or ``apps:NAME`` with
tests/ on the path).
"""

import hashlib
import json
import os
import sys
import time
import uuid
from wsgiref.validate import validator

# New at every import: tells a reloaded application from the old one.
BOOT_ID = uuid.uuid4().hex


def _respond(start_response, body, status="200 OK", ctype="text/plain"):
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


@validator
def hello(environ, start_response):
    return _respond(start_response, b"Hello, world!")


def hello_plain(environ, start_response):
    """Unvalidated hello, for load tests."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, world!"]


@validator
def environ_dump(environ, start_response):
    env = {k: v for k, v in environ.items() if isinstance(v, (str, bool, tuple, int))}
    env["pid"] = os.getpid()
    env["boot_id"] = BOOT_ID
    return _respond(start_response, json.dumps(env, sort_keys=True).encode(), ctype="application/json")


@validator
def params_dump(environ, start_response):
    """The params exactly as the web server sent them, before the gateway
    filled in or moved any (see WSGIGateway.environ), as JSON."""
    params = environ["fastcgi.request"].params
    return _respond(start_response, json.dumps(params, sort_keys=True).encode(),
                    ctype="application/json")


@validator
def upload(environ, start_response):
    """Reads the body in pieces, lines and all; answers its sha256 and size."""
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    size = 0
    mode = environ.get("QUERY_STRING", "")
    if mode == "lines":
        for line in stream:
            digest.update(line)
            size += len(line)
    else:
        while True:
            chunk = stream.read(65536 + 17)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    body = json.dumps({"sha256": digest.hexdigest(), "size": size,
                       "content_length": environ.get("CONTENT_LENGTH")}).encode()
    return _respond(start_response, body, ctype="application/json")


class _ReadsInClose(object):
    """A body whose close() reads the request body: after the response."""

    def __init__(self, stream):
        self.stream = stream

    def __iter__(self):
        yield b"answered"

    def close(self):
        self.stream.read()


def read_in_close(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "8")])
    return _ReadsInClose(environ["wsgi.input"])


@validator
def chunks(environ, start_response):
    """?N: N chunks of 100 bytes, each its own write, with Content-Length:
    the response is complete (to a web server that counts) before the
    gateway sends END_REQUEST."""
    count = int(environ.get("QUERY_STRING") or "4")
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(100 * count))])
    return (b"%-99d\n" % i for i in range(count))


def _download(environ, start_response):
    """Sends the file named by DOWNLOAD_FILE with wsgi.file_wrapper."""
    path = os.environ["DOWNLOAD_FILE"]
    f = open(path, "rb")
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(os.path.getsize(path)))])
    return environ["wsgi.file_wrapper"](f, 65536)


download = validator(_download)


def file_download(environ, start_response):
    """download without the validator, whose wrapper would hide the
    wsgi.file_wrapper object (sendfile, --offload-files) from the server."""
    return _download(environ, start_response)


def _wait_for(path, limit=20.0):
    deadline = time.time() + limit
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.01)


@validator
def stream(environ, start_response):
    """Yields a first chunk, then waits until the test creates the flag file
    named in the query string before yielding the rest: the test can only
    finish if the first chunk reached it while the application still ran."""
    flag = environ["QUERY_STRING"]
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body():
        yield b"first chunk\n"
        _wait_for(flag)
        yield b""               # empty chunks are allowed anywhere
        yield b"second chunk\n"
    return body()


@validator
def fail_before_head(environ, start_response):
    raise RuntimeError("boom before the head")


def fail_after_head(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body():
        yield b"partial"
        raise RuntimeError("boom after the head")
    return body()


def crash(environ, start_response):
    """The worker dies hard (os._exit) mid-request."""
    os._exit(7)


@validator
def slow(environ, start_response):
    """Sleeps for the seconds in the query string, then answers."""
    print("slow: started", file=sys.stderr, flush=True)
    time.sleep(float(environ.get("QUERY_STRING") or 1))
    return _respond(start_response, b"slept")


_KEPT = []


@validator
def grow(environ, start_response):
    """Keeps the MiB the query string names (a leak, for --max-rss), and
    answers with the worker's pid."""
    _KEPT.append(bytearray(int(environ.get("QUERY_STRING") or 1) << 20))
    return _respond(start_response, str(os.getpid()).encode())


@validator
def pid(environ, start_response):
    return _respond(start_response, str(os.getpid()).encode())


@validator
def host(environ, start_response):
    """For the scale-out tests (tests/netns.py): answers "HOST PID" (HOST
    from FASTFCGI_TEST_HOST, set per host: the namespaces share one host
    name), then for a POST its body.  ?SECONDS sleeps first, after a
    "host: started" line on stderr; while the file FASTFCGI_TEST_HANG names
    exists it hangs (an application stuck on a backend, for --timeout)."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    delay = float(environ.get("QUERY_STRING") or 0)
    if delay:
        print("host: started %s" % environ["REQUEST_METHOD"], file=sys.stderr, flush=True)
        time.sleep(delay)
    hang = os.environ.get("FASTFCGI_TEST_HANG", "")
    while hang and os.path.exists(hang):
        time.sleep(0.05)
    name = os.environ.get("FASTFCGI_TEST_HOST", "?")
    return _respond(start_response, ("%s %d\n" % (name, os.getpid())).encode() + body)


@validator
def errors(environ, start_response):
    environ["wsgi.errors"].write("a line for the web server's error log\n")
    environ["wsgi.errors"].flush()
    return _respond(start_response, b"logged")


@validator
def write_callable(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    return [b"then returned"]


def raw_echo(request):
    """--raw: the Request API directly."""
    request.set_encoding("utf-8")
    body = request.read_stdin()
    request.print_stdout("Status: 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    request.print_stdout("%s %s %s|%s|%s" % (request.method, request.path, request.protocol,
                                            request.param("HTTP_X_TEST", "-"), body))
    request.print_stderr("raw request served\n")
    request.finish(0)


RAW_HEADS = {
    "status": "Content-Type: text/plain\r\nStatus: 404 Not Found\r\n\r\nnope",
    "location": "Location: http://example.com/\r\n\r\n",
    "plain": "Content-Type: text/plain\r\n\r\nhi",
    "lf": "Status: 503 Busy\nContent-Type: text/plain\n\nbusy",
    "superscript": "Status: \u00b200 X\r\n\r\nodd",       # not ASCII digits
    "unended": "Content-Type: text/plain\r\n",              # no blank line: no head
}


def raw_status(request):
    """--raw: the head named by the query string, printed in pieces (as
    str, or a memoryview then a bytearray for "lf")."""
    head = RAW_HEADS[request.query_string]
    if request.query_string == "lf":
        request.print_stdout(memoryview(head[:10].encode()))
        request.print_stdout(bytearray(head[10:].encode()))
    else:
        request.print_stdout(head[:10])
        request.print_stdout(head[10:])
    request.finish(0)


def flask_app():
    from flask import Flask, request
    app = Flask("fastfcgi_test")

    @app.route("/hello/<name>", methods=["GET", "POST"])
    def greet(name):
        return {"name": name, "form": request.form.to_dict(),
                "args": request.args.to_dict(), "path": request.path}
    return app


try:
    flask = flask_app()
except ImportError:
    flask = None


def _check_token(environ):
    """Grants requests whose query string is token=good, with variables."""
    if environ.get("QUERY_STRING") == "token=good":
        return {"AUTH_USER": "alice", "AUTH_LEVEL": "admin"}
    if environ.get("QUERY_STRING") == "token=expired":
        return ("401 Unauthorized", [("Content-Type", "text/plain"),
                                     ("WWW-Authenticate", 'Bearer realm="test"')],
                b"token expired\n")
    return False


def _check_token_and_report(environ):
    """_check_token; a grant also passes on what the authorizer itself was
    sent (its role and params, as JSON) in the variable AUTHORIZER_SENT."""
    result = _check_token(environ)
    if isinstance(result, dict):
        sent = {"role": environ["fastcgi.role"], "params": environ["fastcgi.request"].params}
        result = dict(result, AUTHORIZER_SENT=json.dumps(sent, sort_keys=True))
    return result


def _read_then_grant(environ):
    assert environ["wsgi.input"].read(100) == b""     # an authorizer gets no body
    return {"READ": "yes"}


try:        # fastfcgi_py is not importable where uWSGI serves this file
    import fastfcgi_py as _ffpy
    token_authorizer = validator(_ffpy.authorizer(_check_token))
    reporting_authorizer = validator(_ffpy.authorizer(_check_token_and_report))
    reading_authorizer = validator(_ffpy.authorizer(_read_then_grant))
except ImportError:     # pragma: no cover
    token_authorizer = reporting_authorizer = reading_authorizer = None


@validator
def filter_upper(environ, start_response):
    """FILTER role: answers the FCGI_DATA file upper-cased, and stdin's size."""
    stdin = environ["wsgi.input"].read(1 << 20)
    data = environ["fastcgi.data"].read()
    body = b"stdin=%d role=%s\n" % (len(stdin), environ["fastcgi.role"].encode()) + data.upper()
    return _respond(start_response, body)


def raw_tour(request):
    """--raw: the rest of the Request API (lines, bytes mode, file-like
    stdout that finishes on close, streaming with an exit code)."""
    first = request.read_stdin_line()           # str, UTF-8 by default
    request.set_encoding(None)
    rest = request.stdin.read()                 # bytes now
    out = request.stdout_with_close()
    out.write(b"Status: 201 Created\r\nContent-Type: text/plain\r\n\r\n")
    out.write(("first=%r rest=%r aborted=%s role=%d keep=%s\n"
               % (first, rest, request.is_aborted, request.role, request.keep_conn)).encode())
    if request.query_string == "stream":
        chunks = [b"a", b"b", b""]
        request.stream_stdout_then_finish(lambda: chunks.pop(0), 3)
    else:
        out.close()                             # finishes the request


@validator
def exc_info_app(environ, start_response):
    """start_response again with exc_info before the head went out: the
    second status wins (PEP 3333)."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("changed my mind")
    except ValueError:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")],
                       sys.exc_info())
    return [b"unavailable"]


def raw_http(request):
    """--raw: Net::Async::FastCGI's as_http_request / send_http_response."""
    http = request.as_http_request()
    request.send_http_response(201, [("Content-Type", "text/plain")],
                               "%s %s %s %s %r" % (http.method, http.uri, http.header("X-Thing"),
                                                   http.protocol, http.body))
