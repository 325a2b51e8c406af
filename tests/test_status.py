"""--status, --status-path, --ping-path: the scoreboard the workers publish
and the supervisor serves, on both cores.  Counts after a known load, the
status page while every worker is stuck, the listen queue of TCP and unix
sockets, the formats (the metrics checked by Prometheus' own promtool),
and bad input on the status listener."""

import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

import fastfcgi_py
from conftest import need_frontend
from servers import (NGINX_CONF, Nginx, free_port, need_nginx, read_to_end, stop_process,
                     wait_until)

ENV = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "SERVER_NAME": "test", "SERVER_PORT": "80",
       "SERVER_PROTOCOL": "HTTP/1.1", "QUERY_STRING": "", "REMOTE_ADDR": "127.0.0.1"}


def fcgi(address, path, query="", body=b"", timeout=30, **extra):
    env = dict(ENV, PATH_INFO=path, REQUEST_URI=path + ("?" + query if query else ""),
               QUERY_STRING=query)
    env.update(extra)
    with fastfcgi_py.Client(address, timeout=timeout) as client:
        return client.request(env, body)


def http_get(address, target, method="GET"):
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, target)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def status_json(status_address):
    code, headers, body = http_get(status_address, "/status?json")
    assert code == 200 and headers["Content-Type"] == "application/json", body
    return json.loads(body)


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_status_counts_what_was_served(start, mode):
    status_address = "127.0.0.1:%d" % free_port()
    args = ["--workers", "2", "--status", status_address, "--status-path", "/status",
            "--ping-path", "/ping", "--max-body", "10"]
    if mode == "asgi":
        server = start("--asgi", *args, app="asgi_apps:app")
    else:
        server = start(*args)
    for _ in range(5):
        assert fcgi(server.address, "/hello").status == 200
    for _ in range(2):
        assert fcgi(server.address, "/nosuch").status == 404
    refused = fcgi(server.address, "/hello", body=b"x" * 20, REQUEST_METHOD="POST",
                   CONTENT_LENGTH="20")
    assert refused.status == 413
    # The ping path is the worker's, never the application's (which has
    # no /ping: it would answer 404); scrapes and pings are not counted.
    pong = fcgi(server.address, "/ping")
    assert (pong.status, pong.body) == (200, b"pong\n")

    # A worker counts a request just after its answer went out, and the
    # second worker may still be importing the application: wait for both.
    expected = {"1xx": 0, "2xx": 5, "3xx": 0, "4xx": 2, "5xx": 0, "other": 0}
    assert wait_until(lambda: status_json(status_address)["responses_total"] == expected
                      and status_json(status_address)["workers"]["booting"] == 0, 10), \
        status_json(status_address)
    doc = status_json(status_address)
    assert doc["requests_total"] == 7                   # not the 413, not the ping
    assert doc["rejected_requests_total"] == 1
    assert doc["accepted_connections_total"] == 10      # and the readiness probe
    assert doc["request_duration_seconds"]["count"] == 7
    assert doc["request_duration_seconds"]["buckets"][-1] == ["+Inf", 7]
    assert doc["workers"] == {"idle": 2, "busy": 0, "booting": 0}
    assert doc["core"] == ("compiled" if server.core_id == "c" else "pure")
    assert doc["config"]["workers"] == 2 and doc["config"]["mode"] == mode

    # The same document through FastCGI, on the status listener and on the
    # main listener's status path (where the worker answering is busy).
    over_fcgi = json.loads(fcgi(status_address, "/status", "json").body)
    assert over_fcgi["responses_total"] == doc["responses_total"]
    on_main = json.loads(fcgi(server.address, "/status", "json").body)
    assert on_main["responses_total"] == doc["responses_total"]
    assert on_main["workers"]["busy"] == 1          # the one answering
    assert status_json(status_address)["requests_total"] == 7


def test_status_answers_while_every_worker_is_stuck(start):
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "2", "--status", status_address, "--ping-path", "/ping")
    assert wait_until(lambda: status_json(status_address)["workers"]["idle"] == 2, 10)
    threads = [threading.Thread(target=fcgi, args=(server.address, "/slow", "5"))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: status_json(status_address)["workers"]["busy"] == 2, 4)
        began = time.monotonic()
        code, _, body = http_get(status_address, "/status?full&json")
        over_http = time.monotonic() - began
        began = time.monotonic()
        response = fcgi(status_address, "/ping")
        over_fcgi = time.monotonic() - began
        # A worker could answer only when its 5 s request is over; the
        # supervisor answers at once (about a millisecond here; the bound
        # leaves room for a loaded machine).
        assert over_http < 1.0 and over_fcgi < 1.0, (over_http, over_fcgi)
        assert code == 200 and (response.status, response.body) == (200, b"pong\n")
        doc = json.loads(body)
        assert doc["workers"]["busy"] == 2 and doc["max_busy_workers"] == 2
        assert doc["max_workers_reached_total"] >= 1
        busy = [w for w in doc["worker"] if w["state"] == "busy"]
        assert len(busy) == 2
        assert all(w["current_request"] == "GET /slow?5" and w["elapsed_seconds"] > 0
                   and w["current_client"] == "127.0.0.1" for w in busy), busy
        assert "GET /slow?5" in http_get(status_address, "/status?full")[2].decode()
    finally:
        for thread in threads:
            thread.join(20)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_status_shows_the_listen_queue(start, tmp_path, transport):
    """Every worker stuck: connections wait in the kernel's accept queue,
    and the status says how many (TCP_INFO for TCP, sock_diag for a unix
    socket), with the backlog."""
    status_address = "127.0.0.1:%d" % free_port()
    address = "unix:%s/app.sock" % tmp_path if transport == "unix" else None
    server = start("--workers", "1", "--timeout", "30", "--backlog", "50",
                   "--status", status_address, address=address)
    assert wait_until(lambda: status_json(status_address)["workers"]["idle"] == 1, 10)
    stuck = threading.Thread(target=fcgi, args=(server.address, "/slow", "4"))
    stuck.start()
    waiting = []
    try:
        assert wait_until(lambda: status_json(status_address)["workers"]["busy"] == 1, 3)
        family, where = fastfcgi_py.parse_address(server.address)
        for _ in range(5):
            sock = socket.socket(family)
            sock.connect(where)
            # A web server sends at once (and TCP_DEFER_ACCEPT queues a
            # TCP connection only then).
            sock.sendall(b"\x01")
            waiting.append(sock)
        assert wait_until(lambda: status_json(status_address)["listen_queue"] == 5, 3), \
            status_json(status_address)
        doc = status_json(status_address)
        assert doc["listen_queue_backlog"] == 50 and doc["listen_queue_max"] >= 5
    finally:
        for sock in waiting:
            sock.close()
        stuck.join(20)


def test_status_listener_honours_allow(start, tmp_path):
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "1", "--timeout", "30", "--status", status_address,
                   "--allow", "10.1.2.3", address="unix:%s/app.sock" % tmp_path)
    host, port = status_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        assert read_to_end(sock) == b""         # closed at once, unanswered
    assert wait_until(lambda: "--status: connection from 127.0.0.1 refused: not in --allow"
                      in server.log(), 5)
    # The unix listener (no address to check) serves on.
    assert fcgi(server.address, "/hello").status == 200


def test_status_counts_respawns_by_reason(start):
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "1", "--max-requests", "2", "--timeout", "1",
                   "--status", status_address)
    for _ in range(2):
        assert fcgi(server.address, "/hello").status == 200
    assert wait_until(lambda: status_json(status_address)["worker_respawns_total"]
                      ["max_requests"] == 1, 5)
    with pytest.raises(Exception):
        fcgi(server.address, "/slow", "5", timeout=10)       # killed at --timeout
    assert wait_until(lambda: status_json(status_address)["worker_respawns_total"]
                      ["timeout"] == 1, 10)
    doc = status_json(status_address)
    # What the replaced workers served stays counted.
    assert doc["responses_total"]["2xx"] == 2 and doc["requests_total"] == 2


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_slow_log_reports_the_stack_once_and_the_request_runs_on(start, mode):
    status_address = "127.0.0.1:%d" % free_port()
    args = ("--slow-log", "0.5", "--status", status_address)
    if mode == "asgi":
        server = start("--asgi", *args, app="asgi_apps:app")
        path, query, frame = "/sleep", "2000", "asgi_apps.py"
    else:
        server = start(*args)
        path, query, frame = "/slow", "2", "in slow"
    assert fcgi(server.address, path, query).status == 200     # not killed
    assert fcgi(server.address, "/hello").status == 200         # fast: not reported
    log = server.log()
    assert log.count("over --slow-log") == 1, log
    report = log[log.index("over --slow-log"):]
    assert "GET %s?%s" % (path, query) in report.splitlines()[0]
    assert frame in report, report
    assert status_json(status_address)["slow_requests_total"] == 1


NOW = 1800000000.0      # seconds since the epoch, in 2027


@pytest.mark.parametrize("value, expected", [
    ("t=1799999990.5", 9.5),            # nginx: fastcgi_param ... "t=${msec}"
    ("1799999990500", 9.5),             # milliseconds
    ("t=1799999990500000", 9.5),        # microseconds (Apache's %t)
    ("t=1800000001", 0.0),              # a clock a little ahead: no negative wait
    ("t=", None), ("t=abc", None), ("nan", None), ("t=inf", None), ("-5", None),
    ("t=1e300", None), ("", None),
])
def test_queue_wait_reads_x_request_start(core, value, expected):
    wait = core.queue_wait(value, NOW)
    assert wait == (pytest.approx(expected) if expected is not None else None)


def test_queue_time_and_max_queue_wait(start):
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "1", "--status", status_address, "--max-queue-wait", "3")
    now = time.time()
    waited = fcgi(server.address, "/hello", HTTP_X_REQUEST_START="t=%.3f" % (now - 1))
    assert waited.status == 200
    late = fcgi(server.address, "/hello", HTTP_X_REQUEST_START="t=%d" % ((now - 10) * 1e6))
    assert (late.status, late.body) == (503, b"the request waited too long for a worker\n")
    # Malformed: ignored, the request served, nothing counted.
    assert fcgi(server.address, "/hello", HTTP_X_REQUEST_START="t=yesterday").status == 200
    assert fcgi(server.address, "/hello").status == 200

    def counted():
        doc = status_json(status_address)
        return (doc["request_queue_seconds"]["count"], doc["max_queue_wait_exceeded_total"],
                doc["responses_total"]["5xx"], doc["requests_total"])
    assert wait_until(lambda: counted() == (2, 1, 1, 4), 5), counted()
    doc = status_json(status_address)
    assert 10 < doc["request_queue_seconds"]["sum"] < 20
    buckets = dict((str(b), n) for b, n in doc["request_queue_seconds"]["buckets"])
    assert (buckets["0.75"], buckets["2.5"], buckets["10.0"]) == (0, 1, 1)
    log = server.log()
    assert log.count("waited over --max-queue-wait 3.0s") == 1 and "GET /hello" in log
    assert "Traceback" not in log


@pytest.mark.frontend
def test_queue_time_from_nginx_x_request_start(start, tmp_path):
    """The README's nginx line: fastcgi_param HTTP_X_REQUEST_START "t=${msec}"."""
    need_nginx()
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "1", "--status", status_address)
    conf = NGINX_CONF.replace("{params}", '{params}\n            fastcgi_param '
                              'HTTP_X_REQUEST_START "t=${{msec}}";')
    nginx = Nginx(server.address, conf)
    try:
        for _ in range(3):
            assert nginx.request("GET", "/hello")[0] == 200
    finally:
        nginx.stop()
    assert wait_until(lambda: status_json(status_address)["request_queue_seconds"]["count"]
                      == 3, 5)
    # Over loopback a request waits well under a second.
    assert status_json(status_address)["request_queue_seconds"]["sum"] < 3


def test_status_openmetrics_is_valid_for_prometheus(start):
    promtool = shutil.which("promtool")
    need_frontend("promtool", None if promtool else
                  "promtool is not installed (Debian: prometheus)")
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "2", "--status", status_address)
    assert fcgi(server.address, "/hello").status == 200
    for query in ("openmetrics", "openmetrics&full"):
        code, headers, body = http_get(status_address, "/status?" + query)
        assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        check = subprocess.run([promtool, "check", "metrics"], input=body,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert check.returncode == 0, check.stdout.decode() + body.decode()
        text = body.decode()
        for name in ('fastfcgi_workers{state="idle"}', 'fastfcgi_requests_total{status="2xx"} 1',
                     "fastfcgi_listen_queue ", "fastfcgi_listen_queue_max ",
                     "fastfcgi_max_workers_reached_total ",
                     'fastfcgi_request_duration_seconds_bucket{le="+Inf"} 1'):
            assert name in text, name


def test_status_listener_survives_bad_clients(start):
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "1", "--timeout", "30", "--status", status_address,
                   "--status-path", "/fastcgi-status")
    host, port = status_address.rsplit(":", 1)
    # A request of an unknown role (spec 5.1: answered UNKNOWN_ROLE), then
    # broken records; silence then a close; an unknown path; a POST.
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"\x01\x01\x00\x01\x00\x08\x00\x00" + b"\xff" * 40)
        assert read_to_end(sock) == b"\x01\x03\x00\x01\x00\x08\x00\x00" + bytes([0, 0, 0, 0, 3, 0, 0, 0])
    with socket.create_connection((host, int(port)), timeout=5):
        pass
    assert http_get(status_address, "/other")[0] == 404
    assert http_get(status_address, "/fastcgi-status", "POST")[0] == 405
    assert fcgi(status_address, "/other").status == 404
    # The status listener answers the status path only, never the app.
    code, _, body = http_get(status_address, "/fastcgi-status")
    assert code == 200 and b"requests total:" in body
    # A request line ended by a bare LF is answered.
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /fastcgi-status?json HTTP/1.0\n\n")
        assert read_to_end(sock).startswith(b"HTTP/1.0 200 OK\r\n")
    # A client that trickles bytes holds the supervisor one second at most:
    # a scrape made meanwhile is answered, and the trickler is cut off.
    trickler = socket.create_connection((host, int(port)), timeout=10)
    stop = threading.Event()

    def trickle():
        try:
            while not stop.is_set():
                trickler.sendall(b"G")
                time.sleep(0.2)
        except OSError:
            pass
    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        time.sleep(0.3)
        began = time.monotonic()
        assert http_get(status_address, "/fastcgi-status")[0] == 200
        assert time.monotonic() - began < 5
    finally:
        stop.set()
        thread.join()
        trickler.close()
    assert "took too long" in server.log()
    # JSON stays JSON whatever a request's URI holds.
    assert fcgi(server.address, "/hello", "Infinity").status == 200
    json.loads(http_get(status_address, "/fastcgi-status?json&full")[2])
    assert fcgi(server.address, "/hello").status == 200
    assert server.proc.poll() is None


# -- a real Prometheus, scraping through nginx (the README's lines) ----------------

NGINX_STATUS_CONF = NGINX_CONF.split("    server {{")[0] + """    server {{
        listen 127.0.0.1:{port};
        location = /fastcgi-status {{
            allow 127.0.0.1; deny all;
            fastcgi_pass @STATUS@;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_NAME "";
            fastcgi_param PATH_INFO /status;
        }}
        location / {{
            {params}
            fastcgi_pass {backend};
        }}
    }}
}}
"""

PROMETHEUS_CONF = """
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: fastfcgi
    metrics_path: /fastcgi-status
    params: {openmetrics: [""]}
    static_configs: [{targets: ["127.0.0.1:%d"]}]
"""


def prometheus_value(port, query):
    from urllib.parse import quote
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/api/v1/query?query=" + quote(query))
        data = json.loads(conn.getresponse().read())
    except (OSError, ValueError):
        return None
    finally:
        conn.close()
    result = data.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


@pytest.mark.frontend
def test_prometheus_scrapes_the_status_through_nginx(start, tmp_path):
    prometheus = shutil.which("prometheus")
    need_nginx()
    need_frontend("prometheus", None if prometheus else
                  "prometheus is not installed (Debian: prometheus)")
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "2", "--status", status_address)
    nginx = Nginx(server.address, NGINX_STATUS_CONF.replace("@STATUS@", status_address))
    port = free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text(PROMETHEUS_CONF % nginx.port)
    log = open(str(tmp_path / "prometheus.log"), "w")
    proc = subprocess.Popen([prometheus, "--config.file", str(conf),
                             "--storage.tsdb.path", str(tmp_path / "data"),
                             "--web.listen-address", "127.0.0.1:%d" % port],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(7):
            assert nginx.request("GET", "/hello")[0] == 200
        for _ in range(3):
            assert nginx.request("GET", "/nosuch")[0] == 404
        assert nginx.request("GET", "/fastcgi-status")[0] == 200    # people read it too

        def scraped(query, value):
            return wait_until(lambda: prometheus_value(port, query) == value, 30)
        assert scraped('sum(fastfcgi_requests_total{status="2xx"})', 7), \
            open(str(tmp_path / "prometheus.log")).read()[-2000:]
        assert scraped('sum(fastfcgi_requests_total{status="4xx"})', 3)
        assert scraped("fastfcgi_request_duration_seconds_count", 10)
        assert scraped('fastfcgi_workers{state="idle"}', 2)
        assert scraped("fastfcgi_listen_queue", 0)
        assert scraped('up{job="fastfcgi"}', 1)
    finally:
        stop_process(proc)
        log.close()
        nginx.stop()
