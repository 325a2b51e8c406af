"""The status page's ?html format and the history its chart draws: the
page built from a scoreboard in this process (escaping, a row per worker,
the rates), then served by a real server on both cores and rendered by
headless Chromium, directly and through nginx."""

import os
import shutil
import signal
import socket
import subprocess
import time
from html.parser import HTMLParser

import pytest

import fastfcgi_py
from conftest import need_frontend
from servers import Nginx, free_port, need_nginx, wait_until
from test_status import fcgi, http_get, status_json

HOSTILE_URI = "/search?q=<script>alert('x')</script>&a=\"b\""


class Page(HTMLParser):
    """What the tests look at in a page: its tables (header cells, then
    each body row's cell texts), the points of its polylines, its meta
    tags."""

    def __init__(self, text):
        super().__init__()
        self.tables, self.polylines, self.metas, self.scripts = [], [], [], 0
        self._cell = None       # the text of the cell being read
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"head": [], "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "polyline":
            self.polylines.append(attrs.get("points", "").split())
        elif tag == "meta":
            self.metas.append(attrs)
        elif tag == "script":
            self.scripts += 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "thead":
            self.tables[-1]["head"] = self.tables[-1]["rows"].pop()

    def table(self, first_heading):
        """The body rows of the table whose first column is ``first_heading``."""
        for table in self.tables:
            if table["head"][:1] == [first_heading]:
                return table["rows"]
        raise AssertionError("no table headed %r in %r" % (first_heading, self.tables))


class HostileRequest(object):
    params = {"REQUEST_METHOD": "GET", "REQUEST_URI": HOSTILE_URI,
              "REMOTE_ADDR": "<i>10.0.0.1"}


def board_with_workers(core, count):
    """A scoreboard (pure, shared by both cores) with ``count`` workers
    whose rows the core's WorkerRow writes."""
    board = core.Scoreboard(count + 1, {"core": "test", "workers": count})
    rows = []
    for slot in range(count):
        board.claim(slot)
        board.set_pid(slot, 4000 + slot)
        row = core.WorkerRow(board, slot)
        row.busy(0.0)
        rows.append(row)
    return board, rows


def test_html_status_escapes_the_request_and_has_a_row_per_worker(core):
    board, rows = board_with_workers(core, 3)
    rows[0].done(200, 0.002)
    rows[1].busy(time.monotonic())
    rows[1].began(HostileRequest())
    kind, body = board.render("html")
    assert kind == "text/html; charset=utf-8"
    text = body.decode()
    assert "<script" not in text and "alert(&#x27;x&#x27;)" in text
    assert "&lt;script&gt;" in text and "&amp;a=&quot;b&quot;" in text
    page = Page(text)
    assert page.scripts == 0
    workers = page.table("pid")
    assert [row[0] for row in workers] == ["4000", "4001", "4002"]
    assert [row[1] for row in workers] == ["idle", "busy", "idle"]
    # The parser gives back the text as the client sent it: escaped once.
    assert workers[1][3] == "GET " + HOSTILE_URI
    assert workers[1][4] == "<i>10.0.0.1" and "<i>" not in text     # escaped, as sent
    assert {"http-equiv": "refresh", "content": "5"} in page.metas
    assert page.polylines == []         # no history yet: a note instead of a line
    assert "no point yet" in text


def test_Scoreboard_history_gives_requests_per_second(core):
    board, rows = board_with_workers(core, 2)
    listener = socket.socket()
    step = fastfcgi_py._HISTORY_STEP

    def sample():
        board._history_due = 0.0         # the test does not wait for the step
        board.sample(listener, 2)
    try:
        sample()
        assert board.snapshot()["history"]["requests_per_second"] == []
        for _ in range(3 * step):
            rows[0].done(200, 0.01)
        for _ in range(step):
            rows[1].done(404, 0.01)
        sample()
        # A worker replaced: what it served stays counted, no drop.
        board.release(0, "max_requests")
        sample()
        history = board.snapshot()["history"]
        assert history["requests_per_second"] == [4.0, 0.0]
        assert history["step_seconds"] == step
        assert abs(history["end_time_seconds"] - time.time()) < 60
        # The ring wraps: the newest samples stay, one fewer than it holds.
        for i in range(150):
            for _ in range(i % 3 * step):
                rows[1].done(200, 0.01)
            sample()
        rates = board.snapshot()["history"]["requests_per_second"]
        assert len(rates) == fastfcgi_py._HISTORY_SIZE - 2
        assert rates[-3:] == [float(i % 3) for i in range(147, 150)]
    finally:
        listener.close()


def test_Scoreboard_render_picks_html_first_and_shows_every_worker(core):
    board, _ = board_with_workers(core, 2)
    for query in ("html", "json&html", "html&openmetrics", "full&html=1"):
        kind, body = board.render(query)
        assert kind == "text/html; charset=utf-8", query
        assert len(Page(body.decode()).table("pid")) == 2
    # The other formats are as they were: history in JSON only.
    assert b'"requests_per_second"' in board.render("json")[1]
    assert b"history" not in board.render("openmetrics&full")[1]
    assert b"history" not in board.render("")[1]


# -- a real server, a real browser --------------------------------------------------

CHROMIUM = shutil.which("chromium")


def need_chromium():
    need_frontend("chromium", None if CHROMIUM else
                  "chromium is not installed (Debian: chromium)")


def chromium(tmp_path, *args):
    """Headless Chromium's stdout.  As root it needs --no-sandbox; its
    profile lives in the test's directory; should it hang, its process
    group is killed."""
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--user-data-dir=%s" % (tmp_path / "chromium")] + list(args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)         # hung
        proc.communicate()
        raise
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)     # its stray children
        except (ProcessLookupError, PermissionError):
            pass
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


@pytest.mark.frontend
def test_status_html_renders_in_chromium(start, tmp_path):
    need_chromium()
    status_address = "127.0.0.1:%d" % free_port()
    server = start("--workers", "3", "--status", status_address)
    for _ in range(20):
        assert fcgi(server.address, "/hello").status == 200
    # The supervisor samples at its start, then every step: one rate
    # comes after a step (5 s).
    assert wait_until(lambda: status_json(status_address)["history"]["requests_per_second"],
                      15), status_json(status_address)
    code, headers, _ = http_get(status_address, "/status?html")
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")

    url = "http://%s/status?html" % status_address
    page = Page(chromium(tmp_path, "--dump-dom", url).decode())
    workers = page.table("pid")
    assert len(workers) == 3, workers
    assert sum(int(row[2]) for row in workers) == 20
    assert len(page.polylines) == 1 and len(page.polylines[0]) >= 2, page.polylines
    assert all(len(point.split(",")) == 2 for point in page.polylines[0])

    shot = tmp_path / "status.png"
    chromium(tmp_path, "--hide-scrollbars", "--window-size=1100,900",
             "--screenshot=%s" % shot, url)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10000, len(data)


@pytest.mark.frontend
def test_status_html_through_nginx(start, tmp_path):
    """--status-path on the main listener, behind nginx's location: the
    page arrives as HTML, and its refresh names no URL, so the browser
    asks for the same /fastcgi-status?html again."""
    need_nginx()
    need_chromium()
    server = start("--workers", "2", "--status-path", "/fastcgi-status")
    nginx = Nginx(server.address)
    try:
        assert nginx.request("GET", "/hello")[0] == 200
        code, headers, body = nginx.request("GET", "/fastcgi-status?html")
        assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8", body
        assert {"http-equiv": "refresh", "content": "5"} in Page(body.decode()).metas
        page = Page(chromium(tmp_path, "--dump-dom",
                             "http://127.0.0.1:%d/fastcgi-status?html" % nginx.port).decode())
    finally:
        nginx.stop()
    workers = page.table("pid")
    assert len(workers) == 2
    # The worker answering is busy with this very request.
    assert ["busy", "GET /fastcgi-status?html", "127.0.0.1"] in [
        [row[1], row[3], row[4]] for row in workers], workers
