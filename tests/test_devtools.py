"""Development tools on both cores: --http, --reload, and the FastCGI client
(the command line, against fastfcgi and against a foreign server)."""

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

import fastfcgi_py
from conftest import need_frontend
from servers import (ROOT, TESTS, FastCGIProcess, Nginx, free_port, need_nginx, send_then_stall,
                     stop_process, wait_until)


@contextlib.contextmanager
def running_http(core_id, tmp_path, *options, app="dispatch:app"):
    """``--http`` on a free port: yields (host, port, log path)."""
    address = "127.0.0.1:%d" % free_port()
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
    if core_id == "py":
        environment["FASTFCGI_PURE"] = "1"
    log_path = str(tmp_path / "http.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c",
                                 "import sys, fastfcgi_py; sys.exit(fastfcgi_py.main())",
                                 "--http", address] + list(options) + [app],
                                stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=TESTS)
    host, port = address.split(":")
    try:
        from servers import accepts
        assert wait_until(lambda: accepts(address) or proc.poll() is not None)
        yield host, int(port), log_path
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


@pytest.fixture
def http_server(core_id, tmp_path):
    with running_http(core_id, tmp_path) as server:
        yield server


def test_http_timeout_covers_a_client_that_stalls_mid_head(core_id, tmp_path):
    """As over FastCGI: --timeout counts from the first read of a request."""
    with running_http(core_id, tmp_path, "--timeout", "1") as (host, port, log_path):
        # A head without its blank line; then the worker is killed.
        send_then_stall(socket.AF_INET, (host, port), b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        log = open(log_path).read()
        assert "over --timeout" in log and "_read_request" in log, log
        status, _, body = http_get(host, port, "GET", "/hello")
        assert (status, body) == (200, b"Hello, world!")


def http_get(host, port, method, path, body=None, headers=None, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection(host, port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    result = resp.status, dict(resp.getheaders()), resp.read()
    if own:
        conn.close()
    return result


def test_http_says_it_is_for_development(http_server):
    host, port, log_path = http_server
    assert "FOR DEVELOPMENT ONLY" in open(log_path).read()


def test_http_keep_alive_head_and_errors(http_server):
    host, port, _ = http_server
    conn = http.client.HTTPConnection(host, port, timeout=30)
    for _ in range(3):              # one connection, kept
        status, headers, body = http_get(host, port, "GET", "/hello", conn=conn)
        assert (status, body, headers["Connection"]) == (200, b"Hello, world!", "keep-alive")
    status, headers, body = http_get(host, port, "HEAD", "/hello", conn=conn)
    assert (status, body, headers["Content-Length"]) == (200, b"", "13")
    status, _, body = http_get(host, port, "GET", "/nope", conn=conn)
    assert status == 404
    status, _, body = http_get(host, port, "GET", "/fail_before_head", conn=conn)
    assert status == 500
    conn.close()


def test_http_serves_asgi_applications_with_their_lifespan(core_id, tmp_path):
    """--http --asgi: the development server runs an ASGI application (one
    request at a time), its lifespan startup first and shutdown at exit."""
    with running_http(core_id, tmp_path, "--asgi", app="asgi_apps:app") as (host, port, log):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        status, _, body = http_get(host, port, "GET", "/scope/x?a=1", conn=conn)
        scope = json.loads(body)
        assert (status, scope["path"], scope["query_string"], scope["state"]) == \
            (200, "/scope/x", "a=1", {"greeting": "hello from lifespan"})
        status, _, body = http_get(host, port, "POST", "/upload", conn=conn, body=b"z" * 100000)
        assert (status, json.loads(body)["size"]) == (200, 100000)
        status, _, body = http_get(host, port, "GET", "/chunks?30", conn=conn)
        assert (status, len(body)) == (200, 3000)
        path = str(tmp_path / "file.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(70000))
        status, _, body = http_get(host, port, "GET", "/pathsend?" + path, conn=conn)
        with open(path, "rb") as f:
            assert (status, body) == (200, f.read())
        status, _, _ = http_get(host, port, "GET", "/fail_before_head", conn=conn)
        assert status == 500
        conn.close()
    with open(log) as f:
        assert "lifespan shutdown ran" in f.read()


def test_http_chunked_request_body(http_server):
    host, port, _ = http_server
    data = os.urandom(300000)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/upload", body=iter([data[:1000], data[1000:]]),
                 encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    result = json.loads(conn.getresponse().read())
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    # The same connection serves on after a chunked body.
    assert http_get(host, port, "GET", "/hello", conn=conn)[2] == b"Hello, world!"
    conn.close()


def test_http_streams_responses(http_server, tmp_path):
    host, port, _ = http_server
    flag = str(tmp_path / "flag")
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/stream?" + flag)
    resp = conn.getresponse()
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.read(12) == b"first chunk\n"      # sent while the app still runs
    open(flag, "w").close()
    assert resp.read() == b"second chunk\n"
    conn.close()


# Keys that name the server itself, so they differ between any two servers.
SERVER_SPECIFIC = {"SERVER_SOFTWARE", "SERVER_PORT", "SERVER_NAME", "SERVER_ADDR",
                   "REMOTE_PORT", "HTTP_HOST", "DOCUMENT_ROOT", "pid", "boot_id"}


@pytest.mark.frontend
def test_http_environ_matches_nginx_with_the_readme_config(http_server, core_id, tmp_path):
    need_nginx()
    host, port, _ = http_server
    backend = FastCGIProcess(core_id, "dispatch:app", tmpdir=str(tmp_path)).wait_ready()
    nginx = Nginx(backend.address)
    try:
        path = "/environ/a%20b/c?x=1&y=%C3%A9"
        headers = {"X-Custom": "v", "Accept": "text/html", "Cookie": "a=b",
                   "Content-Type": "text/plain"}
        _, _, via_nginx = nginx.request("POST", path, body=b"abc", headers=headers)
        _, _, via_http = http_get(host, port, "POST", path, body=b"abc", headers=headers)
    finally:
        nginx.stop()
        backend.stop()
    a = {k: v for k, v in json.loads(via_nginx).items() if k not in SERVER_SPECIFIC}
    b = {k: v for k, v in json.loads(via_http).items() if k not in SERVER_SPECIFIC}
    assert a == b


# -- --reload -----------------------------------------------------------------------

APP_TEMPLATE = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%s"]
'''


def test_reload_on_change_keeps_serving_through_a_syntax_error(core_id, tmp_path):
    source = tmp_path / "reloadapp.py"
    source.write_text(APP_TEMPLATE % "v1")
    server = FastCGIProcess(core_id, "reloadapp:app", "--reload", tmpdir=str(tmp_path),
                            env={"PYTHONPATH": os.pathsep.join([str(tmp_path), TESTS, ROOT])})
    try:
        server.wait_ready()

        def body():
            try:
                with fastfcgi_py.Client(server.address, timeout=10) as c:
                    return c.request({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}).body
            except OSError:
                return None
        assert wait_until(lambda: body() == b"v1", 10)
        time.sleep(1.1)             # a new mtime, even on coarse file systems
        source.write_text(APP_TEMPLATE % "v2")
        assert wait_until(lambda: body() == b"v2", 15), server.log()
        source.write_text("def app(:\n")
        assert wait_until(lambda: "not reloading" in server.log(), 15), server.log()
        assert body() == b"v2"      # the old workers serve on
        source.write_text(APP_TEMPLATE % "v3")
        assert wait_until(lambda: body() == b"v3", 15), server.log()
    finally:
        server.stop()


# -- the client -----------------------------------------------------------------------

def client_cli(*args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "fastfcgi_py.py"), "client"]
                          + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=60)
    return proc.returncode, proc.stdout, proc.stderr.decode()


def test_client_cli_against_fastfcgi(core_id, tmp_path):
    server = FastCGIProcess(core_id, "dispatch:app", tmpdir=str(tmp_path)).wait_ready()
    try:
        code, out, err = client_cli(server.address, "/hello", "-i")
        assert code == 0
        assert out.startswith(b"Status: 200 OK\n") and out.endswith(b"\n\nHello, world!")
        assert "200 OK, 13 body bytes, app status 0, protocol status REQUEST_COMPLETE" in err
        assert " ms" in err
        code, out, err = client_cli(server.address, "/upload", "-d", "x" * 1000, "-X", "PUT")
        assert json.loads(out)["size"] == 1000
        code, out, err = client_cli(server.address, "/environ?q=1", "-H", "X-Probe: yes")
        env = json.loads(out)
        assert env["HTTP_X_PROBE"] == "yes" and env["QUERY_STRING"] == "q=1"
        code, out, err = client_cli(server.address, "/hello", "-n", "3")
        assert out == b"Hello, world!" * 3 and err.count("connection kept") == 2
        code, out, err = client_cli(server.address, "--get-values")
        assert out.decode().split() == ["FCGI_MAX_CONNS=64", "FCGI_MAX_REQS=1",
                                         "FCGI_MPXS_CONNS=0"]
        code, out, err = client_cli(server.address, "/hello", "--role", "9")
        assert code == 1 and "UNKNOWN_ROLE" in err
    finally:
        server.stop()


@pytest.mark.frontend
def test_client_against_a_foreign_server_uwsgi(tmp_path):
    uwsgi = shutil.which("uwsgi")
    plugin = "/usr/lib/uwsgi/plugins/python3_plugin.so"
    need_frontend("uwsgi", None if uwsgi and os.path.exists(plugin) else
                  "uwsgi with its python3 plugin is not installed (Debian: uwsgi "
                  "uwsgi-plugin-python3)")
    port = free_port()
    log = open(str(tmp_path / "uwsgi.log"), "w")
    proc = subprocess.Popen([uwsgi, "--plugin", "python3", "--fastcgi-socket",
                             "127.0.0.1:%d" % port, "--wsgi-file", os.path.join(TESTS, "apps.py"),
                             "--callable", "hello_plain", "--processes", "1",
                             "--disable-logging"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=str(tmp_path))
    try:
        from servers import accepts
        assert wait_until(lambda: accepts("127.0.0.1:%d" % port))
        with fastfcgi_py.Client("127.0.0.1:%d" % port) as client:
            response = client.request({"REQUEST_METHOD": "GET", "PATH_INFO": "/",
                                       "SERVER_NAME": "x", "SERVER_PORT": "80",
                                       "SERVER_PROTOCOL": "HTTP/1.1", "QUERY_STRING": ""})
        assert (response.status, response.body) == (200, b"Hello, world!")
        code, out, err = client_cli("127.0.0.1:%d" % port, "/")
        assert (code, out) == (0, b"Hello, world!")
        assert "200 OK" in err
    finally:
        stop_process(proc)
        log.close()
