"""The access log (--access-log-format, --access-log-file, SIGUSR1) and
--max-rss, on both cores: the lines a real server writes for real
requests, a log file moved away as logrotate does, a worker recycled for
its memory, and bad options."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

import fastfcgi_py
from servers import ROOT, TESTS, free_port, wait_until
from test_status import fcgi, status_json


def lines(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def json_lines(path):
    return [json.loads(line) for line in lines(path)]


@pytest.mark.parametrize("mode", ["wsgi", "asgi"])
def test_json_lines_carry_every_field(start, tmp_path, mode):
    log_path = str(tmp_path / "access.log")
    args = ["--workers", "2", "--access-log-format", "json", "--access-log-file", log_path,
            "--status-path", "/status", "--ping-path", "/ping"]
    server = start("--asgi", *args, app="asgi_apps:app") if mode == "asgi" else start(*args)
    started = fastfcgi_py.time.time()
    assert fcgi(server.address, "/hello", "a=1", HTTP_HOST="example.test",
                HTTP_USER_AGENT="pytest", HTTP_X_REQUEST_START="t=%.3f" % (started - 2.5)
                ).status == 200
    assert fcgi(server.address, "/nosuch").status == 404
    # The status and ping paths are the server's, not requests: not logged.
    assert fcgi(server.address, "/ping").status == 200
    assert fcgi(server.address, "/status", "json").status == 200
    assert wait_until(lambda: len(lines(log_path)) >= 2, 10), server.log()
    # (Two workers write in the order they finish, not the requests'.)
    hello, missing = sorted(json_lines(log_path), key=lambda entry: entry["uri"])
    assert set(hello) == set(fastfcgi_py.ACCESS_LOG_FIELDS)
    assert (hello["method"], hello["uri"], hello["status"], hello["host"],
            hello["user_agent"], hello["client"]) == (
        "GET", "/hello?a=1", 200, "example.test", "pytest", "127.0.0.1")
    assert (missing["uri"], missing["status"], missing["referer"], missing["queue_ms"]) == (
        "/nosuch", 404, "-", None)
    # Waited 2.5 s before a worker took it (X-Request-Start in the past).
    assert 2400 < hello["queue_ms"] < 60000, hello
    assert hello["bytes"] > len(b"Hello, world!") and hello["duration_ms"] >= 0
    assert hello["rss_kb"] > 1000 and isinstance(hello["rss_growth_kb"], int)
    # An asyncio worker interleaves its requests: no CPU time of one.
    assert (hello["cpu_ms"] is None) if mode == "asgi" else hello["cpu_ms"] >= 0
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$", hello["time"])
    assert hello["pid"] != server.proc.pid and hello["request_id"] == 1
    assert all(entry["pid"] in server_pids(server) for entry in (hello, missing))


def server_pids(server):
    out = subprocess.run(["pgrep", "-P", str(server.proc.pid)], stdout=subprocess.PIPE)
    return {int(pid) for pid in out.stdout.split()}


def test_a_template_names_its_fields_and_escapes_what_a_request_sends(start, tmp_path):
    log_path = str(tmp_path / "access.log")
    server = start("--access-log-format", '{method} {uri} {status} {bytes} q={queue_ms} '
                   'ua="{user_agent}" pid={pid}', "--access-log-file", log_path)
    fcgi(server.address, "/hello", HTTP_USER_AGENT='evil"\nforged 200 line\\')
    fcgi(server.address, "/hello", REQUEST_URI='/hello/"x"\r\n')
    assert wait_until(lambda: len(lines(log_path)) == 2, 10), server.log()
    first, second = lines(log_path)
    # One line each: the quote, the newline and the backslash cannot
    # forge a line or end the field.
    assert re.match(r'GET /hello 200 \d+ q=- ua="evil\\x22\\x0Aforged 200 line\\x5C" pid=\d+$',
                    first), first
    assert second.startswith("GET /hello/\\x22x\\x22\\x0D\\x0A 200 "), second


def test_status_and_ping_requests_are_logged_when_asked(start, tmp_path):
    log_path = str(tmp_path / "access.log")
    server = start("--access-log-status", "--access-log-format", "{uri} {status}",
                   "--access-log-file", log_path, "--ping-path", "/ping", "--workers", "2",
                   "--drain-file", str(tmp_path / "drain"))
    fcgi(server.address, "/ping")
    open(str(tmp_path / "drain"), "w").close()
    assert wait_until(lambda: fcgi(server.address, "/ping").status == 503, 5)
    assert wait_until(lambda: {"/ping 200", "/ping 503"} <= set(lines(log_path)), 5), \
        lines(log_path)


def test_the_default_line_goes_through_the_log(start):
    server = start("--access-log")
    fcgi(server.address, "/hello")
    assert wait_until(lambda: re.search(r'INFO 127\.0\.0\.1 "GET /hello HTTP/1\.1" 200 \d+ '
                                        r'\d+\.\dms', server.log()), 5), server.log()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigusr1_reopens_the_file_logrotate_moved(start, tmp_path, workers):
    """logrotate's way: rename the file, SIGUSR1; the next lines go to a
    new file under the old name, from every worker, and from a worker
    started after the signal.  One worker serves without the supervisor:
    it reopens too."""
    log_path = str(tmp_path / "access.log")
    server = start("--workers", workers, "--access-log-format", "{uri} {pid}",
                   "--access-log-file", log_path)
    for i in range(4):
        fcgi(server.address, "/hello/%d" % i)
    assert wait_until(lambda: len(lines(log_path)) == 4, 10), server.log()
    os.rename(log_path, log_path + ".1")
    server.signal(signal.SIGUSR1)
    # The supervisor forwards the signal; a worker reopens before its next
    # line.  Wait until the workers are past the signal: a request served
    # after it lands in the new file.
    assert wait_until(lambda: fcgi(server.address, "/hello/after") and
                      os.path.exists(log_path), 10), server.log()
    for i in range(4):
        fcgi(server.address, "/hello/new%d" % i)
    if workers == "2":
        server.signal(signal.SIGTTIN)           # a third worker, started after
        assert wait_until(lambda: len(server_pids(server)) == 3, 10)
        for i in range(6):
            fcgi(server.address, "/hello/third%d" % i)
    # A worker writes its line just after its answer went out.
    expected = 10 if workers == "2" else 4
    assert wait_until(lambda: len([line for line in lines(log_path)
                                   if "/new" in line or "third" in line]) == expected, 10), \
        (lines(log_path), server.log())
    old, new = lines(log_path + ".1"), lines(log_path)
    # (Two workers write in the order they finish, not the requests'.)
    assert sorted(line.split()[0] for line in old[:4]) == ["/hello/%d" % i for i in range(4)]
    assert not [line for line in old if "/new" in line or "third" in line], old
    assert len([line for line in new if "/new" in line]) == 4, new
    if workers == "2":
        assert len([line for line in new if "third" in line]) == 6, new
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("logged", [False, True], ids=["", "logged"])
def test_max_rss_recycles_a_worker_that_grew(start, tmp_path, logged):
    """With the access log's memory fields too: they are the worker's own
    (its supervisor made the AccessLog), and --max-rss reads the same."""
    status_address = "127.0.0.1:%d" % free_port()
    log_path = str(tmp_path / "access.log")
    server = start("--workers", "1", "--max-rss", "150", "--status", status_address,
                   "--status-path", "/status",
                   *(("--access-log-format", "json", "--access-log-file", log_path)
                     if logged else ()))
    first = fcgi(server.address, "/grow", "1").body
    assert fcgi(server.address, "/grow", "1").body == first      # under the limit: kept
    doc = json.loads(fcgi(server.address, "/status", "full&json").body)
    worker = doc["worker"][0]
    # The RSS after each request is measured for --max-rss, and shown.
    assert worker["last_request_rss_bytes"] > 10 << 20 and worker["rss_bytes"] > 10 << 20
    assert fcgi(server.address, "/grow", "200").status == 200     # answered, then recycled
    assert wait_until(lambda: status_json(status_address)["worker_respawns_total"]["rss"] == 1,
                      10), status_json(status_address)
    assert re.search(r"worker %s: \d+ MB resident after a request, over --max-rss 150 MB: "
                     r"recycling it" % first.decode(), server.log()), server.log()
    # A new worker serves on, small again.
    assert wait_until(lambda: fcgi(server.address, "/grow", "1").body != first, 10)
    assert status_json(status_address)["worker_respawns_total"] == {
        "crash": 0, "timeout": 0, "max_requests": 0, "reload": 0, "rss": 1}
    if logged:
        grown = [entry for entry in json_lines(log_path) if entry["uri"] == "/grow?200"]
        assert grown[0]["pid"] == int(first) and grown[0]["rss_kb"] > 150 * 1024, grown
        assert grown[0]["rss_growth_kb"] > 150 * 1024, grown


def test_a_log_file_that_cannot_be_reopened_keeps_the_old_one(start, tmp_path):
    """logrotate moved the directory away: SIGUSR1 cannot reopen the file.
    The workers write on to the old file, with a warning, and serve."""
    directory = tmp_path / "logs"
    directory.mkdir()
    log_path = str(directory / "access.log")
    server = start("--workers", "2", "--access-log-format", "{uri}", "--access-log-file",
                   log_path)
    fcgi(server.address, "/hello/before")
    os.rename(str(directory), str(tmp_path / "moved"))
    server.signal(signal.SIGUSR1)
    for i in range(6):
        assert fcgi(server.address, "/hello/%d" % i).status == 200
    moved = str(tmp_path / "moved" / "access.log")
    assert wait_until(lambda: len(lines(moved)) == 7, 10), (lines(moved), server.log())
    log = server.log()
    assert "access log: cannot reopen %s" % log_path in log
    assert "crashed" not in log and "died" not in log, log


def test_max_rss_in_an_asyncio_worker(start):
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--asgi", "--workers", "1", "--max-rss", "1", "--status", status_address,
                   app="asgi_apps:app")
    # Every worker is over 1 MB: a request recycles its worker, which
    # still answers it (and what reaches it before it stops).

    def answered_then_recycled_twice():
        assert fcgi(server.address, "/hello").status == 200
        return status_json(status_address)["worker_respawns_total"]["rss"] >= 2
    assert wait_until(answered_then_recycled_twice, 20), server.log()
    assert "over --max-rss 1 MB: recycling it" in server.log()


@pytest.mark.parametrize("option, value, code, message", [
    ("--access-log-format", "{nosuch} {uri}", 2, "unknown field(s) {nosuch}; the fields are"),
    ("--access-log-format", "{uri} {}", 2, "unknown field(s) {}"),
    ("--access-log-file", "/nonexistent/dir/access.log", 1, "cannot open /nonexistent/dir"),
    ("--max-rss", "-5", 2, "--max-rss must not be negative"),
    ("--access-log-format", "{queue_ms:.1f}", 2, "fields take no format spec or conversion"),
    ("--access-log-format", "{uri!r}", 2, "fields take no format spec or conversion"),
])
def test_bad_options_say_what_is_wrong(core_id, option, value, code, message):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]),
                       FASTFCGI_PURE="1" if core_id == "py" else "0")
    result = subprocess.run([sys.executable, "-c",
                             "import sys, fastfcgi_py; sys.exit(fastfcgi_py.main())",
                             "--fcgi", "127.0.0.1:%d" % free_port(), option, value,
                             "dispatch:app"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=environment, cwd=TESTS, timeout=30)
    assert result.returncode == code, result.stdout
    assert message in result.stdout.decode(), result.stdout


def test_AccessLog_of_a_gateway_and_of_the_server(tmp_path):
    """The API: Server(access_log=AccessLog(...)), and a gateway made with
    access_log=True (what servers before the access log's move took)."""
    gateway = fastfcgi_py.WSGIGateway(lambda e, s: [], access_log=True)
    listener = fastfcgi_py.bind_listener("127.0.0.1:0")
    try:
        server = fastfcgi_py.Server(gateway, listener)
        assert server.extras.access_log.format == "common"
        custom = fastfcgi_py.AccessLog("{uri}", str(tmp_path / "a.log"))
        server = fastfcgi_py.Server(gateway, listener, access_log=custom)
        assert server.extras.access_log is custom and custom.fields == ("uri",)
        assert fastfcgi_py.Server(fastfcgi_py.WSGIGateway(lambda e, s: []),
                                  listener).extras is None
    finally:
        listener.close()
