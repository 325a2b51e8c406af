"""--asgi behind real nginx (kept connections, request and response
buffering off), on both cores: Starlette and FastAPI responses equal their
own TestClient's; streaming both ways with bounded memory; a reload under
load drops nothing."""

import http.client
import json
import os
import signal
import threading
import time

import pytest

from conftest import core_id_or_skip
from servers import NGINX_ASGI_CONF, FastCGIProcess, Nginx, need_nginx, wait_until

# Every test here puts a web server in front (see conftest.need_frontend).
pytestmark = pytest.mark.frontend

pytest.importorskip("starlette")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

# What the application decides; nginx adds Date, Server, Connection and may
# change the framing (Content-Length or chunked).
APP_HEADERS = ("content-type", "content-length", "set-cookie", "location", "x-teapot",
               "etag", "last-modified")


@pytest.fixture(scope="module", params=[("c", "tcp"), ("py", "unix")], ids=["c-tcp", "py-unix"])
def stack(request, tmp_path_factory):
    core_id, transport = request.param
    core_id_or_skip(core_id)
    need_nginx()
    tmp = str(tmp_path_factory.mktemp("asgi"))
    address = "unix:%s/app.sock" % tmp if transport == "unix" else None
    server = FastCGIProcess(core_id, "asgi_frameworks:app", "--asgi", "--workers", "2",
                            address=address,
                            tmpdir=tmp).wait_ready()
    nginx = Nginx(server.address, NGINX_ASGI_CONF)
    yield server, nginx
    nginx.stop()
    assert server.stop() == 0, server.log()


@pytest.fixture
def client():
    """A fresh TestClient for each request (its cookie jar stays empty)."""
    from starlette.testclient import TestClient
    import asgi_frameworks
    with TestClient(asgi_frameworks.app, follow_redirects=False) as test_client:
        yield test_client


def app_headers(headers):
    return sorted((name.lower(), value) for name, value in headers
                  if name.lower() in APP_HEADERS and not (
                      name.lower() == "content-length" and value == "0"))


CASES = [
    ("GET", "/starlette/hello", None, {}),
    ("POST", "/starlette/echo?a=1&b=caf%C3%A9", b"x" * 10000,
     {"Content-Type": "application/octet-stream", "X-Custom": "yes", "Cookie": "k=v; k2=v2"}),
    ("PUT", "/starlette/echo", b"", {}),
    ("POST", "/starlette/form", b"name=fast+cgi&lang=%C3%A9",
     {"Content-Type": "application/x-www-form-urlencoded"}),
    ("GET", "/starlette/stream", None, {}),
    ("GET", "/starlette/cookie", None, {}),
    ("GET", "/starlette/redirect", None, {}),
    ("GET", "/starlette/teapot", None, {}),
    ("GET", "/starlette/file", None, {}),
    ("GET", "/starlette/nowhere", None, {}),
    ("HEAD", "/starlette/hello", None, {}),
    ("GET", "/fastapi/items/42?q=search", None, {}),
    ("GET", "/fastapi/items/404", None, {}),
    ("GET", "/fastapi/items/notanint", None, {}),
    ("POST", "/fastapi/items", json.dumps({"name": "lamp", "price": 10, "tags": ["a"]}).encode(),
     {"Content-Type": "application/json"}),
    ("POST", "/fastapi/items", b'{"name": 3}', {"Content-Type": "application/json"}),
    ("GET", "/fastapi/sync", None, {}),
]


@pytest.mark.parametrize("method, path, body, headers", CASES,
                         ids=["%s %s" % (c[0], c[1]) for c in CASES])
def test_asgi_frameworks_through_nginx_equal_their_test_client(stack, client, method, path,
                                                               body, headers):
    server, nginx = stack
    status, got_headers, got_body = nginx_request(nginx, method, path, body, headers)
    expected = client.request(method, path, content=body, headers=headers)
    assert status == expected.status_code
    assert app_headers(got_headers) == app_headers(expected.headers.items())
    assert got_body == expected.content


def nginx_request(nginx, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def test_asgi_sse_first_event_arrives_before_the_application_finishes(stack, tmp_path):
    server, nginx = stack
    flag = str(tmp_path / "finish")
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
    conn.request("GET", "/raw/sse?" + flag)
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    first = b""
    while not first.endswith(b"\n\n"):
        first += response.read1(100)
    assert first == b"data: first\n\n"          # the application waits for us now
    open(flag, "w").close()
    assert response.read() == b"data: last\n\n"
    conn.close()


def worker_pids(server):
    with open("/proc/%d/task/%d/children" % (server.proc.pid, server.proc.pid)) as f:
        return sorted(int(pid) for pid in f.read().split())


def rss_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])


GIB = 1 << 30


def test_asgi_1_gib_upload_and_download_in_bounded_memory(stack):
    """The body streams through (fastcgi_request_buffering off) and the
    response streams out, with back-pressure both ways: the worker's peak
    RSS grows less than 16 MB."""
    server, nginx = stack
    for _ in range(4):
        nginx_request(nginx, "POST", "/raw/count_body", b"warm up" * 10000)
    pids = worker_pids(server)
    before = {pid: rss_kib(pid, "VmRSS") for pid in pids}
    piece = os.urandom(1 << 20)

    def body():
        for _ in range(GIB >> 20):
            yield piece
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=300)
    conn.request("POST", "/raw/count_body", body=body(),
                 headers={"Content-Length": str(GIB), "Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert (response.status, answer["size"]) == (200, GIB)
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=300)
    conn.request("GET", "/raw/download?%d" % GIB)
    response = conn.getresponse()
    received = 0
    while True:
        chunk = response.read(1 << 20)
        if not chunk:
            break
        received += len(chunk)
    conn.close()
    assert (response.status, received) == (200, GIB)
    grown = max(rss_kib(pid, "VmHWM") - before[pid] for pid in pids)
    assert grown < 16 * 1024, "a worker's peak RSS grew %d KiB" % grown


def test_asgi_reload_under_load_fails_no_request(stack):
    """HUP: the workers are replaced while requests keep coming over kept
    connections; every request succeeds."""
    server, nginx = stack
    first_pids = worker_pids(server)
    failures = []
    done = []
    stop = threading.Event()

    def load():
        conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
        while not stop.is_set():
            try:
                conn.request("GET", "/starlette/hello")
                response = conn.getresponse()
                body = response.read()
                if response.status != 200 or body != b"Hello from Starlette":
                    failures.append((response.status, body[:100]))
                done.append(1)
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
        conn.close()
    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    server.signal(signal.SIGHUP)
    assert wait_until(lambda: not set(worker_pids(server)) & set(first_pids), 20), server.log()
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert failures == [], (failures[:5], nginx.error_log()[-3000:], server.log()[-3000:])
    assert len(done) > 100
