"""The main job end to end: real nginx in front of a real fastfcgi process,
on both cores, over TCP and a unix socket."""

import hashlib
import json
import os
import socket
import tempfile
import threading

import pytest

from conftest import core_id_or_skip
from servers import FastCGIProcess, Nginx, free_port, need_nginx

# Every test here puts a web server in front (see conftest.need_frontend).
pytestmark = pytest.mark.frontend

BIG = 50 * 1024 * 1024


@pytest.fixture(scope="module", params=[("c", "tcp"), ("py", "tcp"), ("c", "unix"), ("py", "unix")],
                ids=["c-tcp", "py-tcp", "c-unix", "py-unix"])
def stack(request, tmp_path_factory):
    """fastfcgi serving tests/apps.py's dispatcher, behind nginx."""
    core_id, transport = request.param
    core_id_or_skip(core_id)
    need_nginx()
    tmp = str(tmp_path_factory.mktemp("stack"))
    address = "unix:%s/app.sock" % tmp if transport == "unix" else None
    big = os.path.join(tmp, "big.bin")
    with open(big, "wb") as f:
        f.write(os.urandom(1 << 20) * (BIG >> 20))
    server = FastCGIProcess(core_id, "dispatch:app", "--workers", "2", address=address,
                            env={"DOWNLOAD_FILE": big}, tmpdir=tmp).wait_ready()
    nginx = Nginx(server.address)
    yield server, nginx, big
    nginx.stop()
    assert server.stop() == 0, server.log()


def test_nginx_get(stack):
    server, nginx, _ = stack
    status, headers, body = nginx.request("GET", "/hello")
    assert (status, body) == (200, b"Hello, world!")
    assert headers["Content-Type"] == "text/plain"


def test_nginx_environ_is_what_nginx_sent(stack):
    server, nginx, _ = stack
    status, _, body = nginx.request("GET", "/environ/some%20path?a=1&b=%C3%A9",
                                    headers={"X-Custom": "caf\xe9".encode("latin-1").decode("latin-1"),
                                             "Cookie": "k=v"})
    env = json.loads(body)
    assert status == 200
    assert env["REQUEST_URI"] == "/environ/some%20path?a=1&b=%C3%A9"    # untouched
    assert env["PATH_INFO"] == "/environ/some path"
    assert env["SCRIPT_NAME"] == ""
    assert env["QUERY_STRING"] == "a=1&b=%C3%A9"
    assert env["HTTP_X_CUSTOM"] == "caf\xe9"
    assert env["HTTP_COOKIE"] == "k=v"
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multiprocess"] is True and env["wsgi.multithread"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"


def test_nginx_https_param_gives_https_scheme(stack):
    # nginx's fastcgi_params sends HTTPS=on over TLS; /tls/ sets it by hand.
    server, nginx, _ = stack
    _, _, body = nginx.request("GET", "/tls/environ")
    env = json.loads(body)
    assert env["HTTPS"] == "on" and env["wsgi.url_scheme"] == "https"


def test_nginx_post_form(stack):
    server, nginx, _ = stack
    form = ("field=" + "x" * 10000).encode()
    status, _, body = nginx.request("POST", "/upload", body=form,
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    result = json.loads(body)
    assert status == 200
    assert result == {"sha256": hashlib.sha256(form).hexdigest(), "size": len(form),
                      "content_length": str(len(form))}


def test_nginx_body_read_by_lines(stack):
    server, nginx, _ = stack
    data = b"".join(b"line %d\n" % i for i in range(20000)) + b"no newline at the end"
    _, _, body = nginx.request("POST", "/upload?lines", body=data)
    assert json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()


def test_nginx_50mb_upload(stack):
    server, nginx, _ = stack
    data = os.urandom(1 << 20) * 50
    status, _, body = nginx.request("POST", "/upload", body=data,
                                    headers={"Content-Type": "application/octet-stream"})
    assert status == 200
    assert json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()


def test_nginx_50mb_download_via_file_wrapper(stack):
    server, nginx, big = stack
    status, headers, body = nginx.request("GET", "/download")
    assert status == 200
    assert int(headers["Content-Length"]) == BIG
    with open(big, "rb") as f:
        assert hashlib.sha256(body).digest() == hashlib.sha256(f.read()).digest()


def test_nginx_streamed_response_arrives_before_the_app_finishes(stack, tmp_path):
    server, nginx, _ = stack
    flag = str(tmp_path / "flag")
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
    conn.request("GET", "/stream/stream?" + flag)
    resp = conn.getresponse()
    assert resp.status == 200
    # The app waits for the flag before its second chunk: this read returns
    # only because the first chunk was sent while the app was still running.
    assert resp.read(12) == b"first chunk\n"
    open(flag, "w").close()
    assert resp.read() == b"second chunk\n"
    conn.close()


def test_nginx_keep_conn_with_upstream_keepalive(stack):
    server, nginx, _ = stack
    pids = set()
    for i in range(30):
        status, _, body = nginx.request("GET", "/keep/environ")
        assert status == 200
        pids.add(json.loads(body)["pid"])
    status, _, body = nginx.request("POST", "/keep/upload", body=b"z" * 300000)
    assert json.loads(body)["size"] == 300000
    # Unread bodies on a kept connection must not leak into the next request.
    for i in range(5):
        status, _, body = nginx.request("POST", "/keep/hello", body=b"unread" * 50000)
        assert (status, body) == (200, b"Hello, world!")
    assert nginx.request("GET", "/keep/hello")[2] == b"Hello, world!"


def test_nginx_concurrent_requests(stack):
    server, nginx, _ = stack
    results = []

    def client(path):
        for _ in range(10):
            results.append(nginx.request("GET", path)[:3:2])
    threads = [threading.Thread(target=client, args=(p,))
               for p in ["/hello", "/keep/hello"] * 8]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(200, b"Hello, world!")] * 160


def test_nginx_head_has_no_body(stack):
    server, nginx, _ = stack
    status, headers, body = nginx.request("HEAD", "/hello")
    assert (status, body, headers["Content-Length"]) == (200, b"", "13")


def test_nginx_app_error_is_500_and_logged(stack):
    server, nginx, _ = stack
    status, _, body = nginx.request("GET", "/fail_before_head")
    assert status == 500 and body == b"Internal Server Error\n"
    assert "boom before the head" in server.log()
    assert "Traceback" in server.log()
    assert nginx.request("GET", "/hello")[0] == 200


def test_nginx_error_after_head_cuts_response_short(stack):
    # The body stops where the application failed; END_REQUEST carries a
    # non-zero app status (checked at the record level in test_server.py).
    server, nginx, _ = stack
    status, _, body = nginx.request("GET", "/fail_after_head")
    assert (status, body) == (200, b"partial")
    assert "boom after the head" in server.log()
    assert nginx.request("GET", "/hello")[0] == 200


def test_nginx_wsgi_errors_reach_nginx_error_log(stack):
    server, nginx, _ = stack
    assert nginx.request("GET", "/errors")[2] == b"logged"
    assert "a line for the web server's error log" in nginx.error_log()


def test_nginx_write_callable(stack):
    server, nginx, _ = stack
    assert nginx.request("GET", "/write_callable")[2] == b"written then returned"


def test_nginx_flask_app(stack):
    pytest.importorskip("flask")
    server, nginx, _ = stack
    status, _, body = nginx.request("POST", "/flask/hello/world?x=1", body=b"a=b&c=d",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    assert json.loads(body) == {"name": "world", "form": {"a": "b", "c": "d"},
                                "args": {"x": "1"}, "path": "/hello/world"}
