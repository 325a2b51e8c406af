"""fastfcgi behind every web server it documents, on both cores: lighttpd
(mod_fastcgi to a running fastfcgi over TCP and a unix socket, spawning it
with bin-path, and in the AUTHORIZER role), Apache (mod_proxy_fcgi over TCP,
with enablereuse, over a unix socket; mod_fcgid spawning it), Caddy and H2O
(over TCP and a unix socket), HAProxy's fcgi-app with kept connections (over
TCP and a unix socket), libfcgi's cgi-fcgi, and spawn-fcgi behind nginx.

Each web server starts once per core (module-scoped fixtures) and gets the
same checks: GET, a POST body's sha256, request headers, an application 404,
a streamed response, 20 concurrent requests, and the params that
docs/frontends.md documents, so that the document stays true.
"""

import hashlib
import http.client
import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time

import pytest

from conftest import core_id_or_skip, need_frontend, rec
from frontends import (CADDY_BIN, CGI_FCGI_BIN, H2O, H2O_BIN, HAPROXY_BIN, LIGHTTPD_BIN,
                       SPAWN_FCGI_BIN, ApacheFcgid, ApacheProxy, Caddy, CgiFcgi, HAProxy,
                       Lighttpd, NginxFrontend, SpawnedApp, SpawnFcgi, apache_missing,
                       fcgid_mode, lighttpd_backend)
from servers import FastCGIProcess, need_nginx

# Every test here puts a web server in front (see conftest.need_frontend).
pytestmark = pytest.mark.frontend


class Stack(object):
    """A front end and the fastfcgi processes behind it, on one core."""

    def __init__(self, name, kind, core_id):
        self.name = name
        self.kind = kind            # its row in FACTS
        self.core_id = core_id
        # Not pytest's tmp_path, whose parents are private: some web servers
        # (and what they start) run as nobody.
        self.tmp = tempfile.mkdtemp(prefix="fastfcgi-%s-" % name)
        os.chmod(self.tmp, 0o755)
        self.frontend = None
        self.servers = []           # the fastfcgi processes we started
        self.spawned = None         # a SpawnedApp, where the web server starts fastfcgi
        self.others = []            # more processes to stop (spawn-fcgi)
        self.stream_prefix = ""     # where the front end does not buffer

    def serve(self, *args, app="dispatch:app", **kw):
        """Start fastfcgi serving ``app`` on the stack's core."""
        server = FastCGIProcess(self.core_id, app, *args, tmpdir=self.tmp, **kw)
        self.servers.append(server)
        return server.wait_ready()

    def logs(self):
        out = [self.frontend.error_log() if self.frontend else ""]
        out += [server.log() for server in self.servers]
        out += [self.spawned.log()] if self.spawned else []
        return "\n".join(out)

    def stop(self):
        """Stop everything, the front end first; returns what went wrong
        (a fastfcgi that did not exit 0, processes the web server left)."""
        problems = []
        if self.frontend is not None:
            self.frontend.stop()
        for other in reversed(self.others):
            code = other.stop()
            if code != 0:
                problems.append("%s exited %s:\n%s" % (self.name, code, self.logs()))
        if self.spawned is not None:
            left = self.spawned.stop()
            if left:
                problems.append("%s left fastfcgi running: %s" % (self.name, left))
        for server in self.servers:
            code = server.stop()
            if code != 0:
                problems.append("fastfcgi exited %s:\n%s" % (code, server.log()))
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problems


def need(found, name, package=None):
    """Go on with front end ``name`` when its binary was ``found``."""
    need_frontend(name, None if found else "%s is not installed (Debian: %s)"
                  % (name, package or name))


def need_apache(server_class):
    need_frontend("apache", apache_missing(server_class))


# -- the stacks --------------------------------------------------------------

def lighttpd_tcp(stack):
    need(LIGHTTPD_BIN, "lighttpd")
    server = stack.serve("--workers", "2")
    stack.frontend = Lighttpd({"app": lighttpd_backend(server.address)})


def lighttpd_unix(stack):
    need(LIGHTTPD_BIN, "lighttpd")
    server = stack.serve("--workers", "2", address="unix:%s/app.sock" % stack.tmp)
    stack.frontend = Lighttpd({"app": lighttpd_backend(server.address)})


def lighttpd_spawn(stack):
    """lighttpd starts two fastfcgi processes at once (min-procs), each on
    its own socket (app.sock-0, app.sock-1) handed over on fd 0."""
    need(LIGHTTPD_BIN, "lighttpd")
    stack.spawned = SpawnedApp(stack.tmp)
    host = lighttpd_backend("unix:%s/app.sock" % stack.tmp, **{
        "bin-path": stack.spawned.script,
        "bin-environment": {"FASTFCGI_PURE": "1" if stack.core_id == "py" else "0"},
        "min-procs": 2, "max-procs": 2})
    stack.frontend = Lighttpd({"app": host})
    stack.spawned.wait_ready(stack.core_id, count=2)


def apache_tcp(stack, **kw):
    need_apache(ApacheProxy)
    server = stack.serve("--workers", "2")
    stack.frontend = ApacheProxy(server.address, **kw)


def apache_reuse(stack):
    apache_tcp(stack, reuse=True)


def apache_unix(stack):
    need_apache(ApacheProxy)
    # As root Apache's workers run as nobody: the socket must let them in.
    server = stack.serve("--workers", "2", "--socket-mode", "666",
                         address="unix:%s/app.sock" % stack.tmp)
    stack.frontend = ApacheProxy(server.address)


def apache_fcgid(stack):
    # mod_fcgid as root needs a user namespace: without one this machine
    # cannot run it, which no package install changes.
    missing = apache_missing(ApacheFcgid)
    mode, why = fcgid_mode() if missing is None else (None, None)
    need_frontend("mod_fcgid", missing or (why if mode == "skip" else None),
                  installable=mode != "skip")
    stack.spawned = SpawnedApp(stack.tmp)
    stack.frontend = ApacheFcgid(stack.spawned, stack.core_id)
    # mod_fcgid starts the application for the first request.
    status, _, _ = stack.frontend.request("GET", "/hello")
    assert status == 200, stack.logs()
    stack.spawned.wait_ready(stack.core_id)


def caddy(stack, *args, **kw):
    need(CADDY_BIN, "caddy")
    server = stack.serve("--workers", "2", *args, **kw)
    stack.frontend = Caddy(server.address)


def caddy_unix(stack):
    caddy(stack, address="unix:%s/app.sock" % stack.tmp)


def h2o(stack, *args, **kw):
    need(H2O_BIN, "h2o")
    server = stack.serve("--workers", "2", *args, **kw)
    stack.frontend = H2O(server.address)


def h2o_unix(stack):
    # As root h2o serves as nobody: the socket must let it in.
    h2o(stack, "--socket-mode", "666", address="unix:%s/app.sock" % stack.tmp)


def haproxy(stack, *args, **kw):
    need(HAPROXY_BIN, "haproxy")
    server = stack.serve("--workers", "2", *args, **kw)
    stack.frontend = HAProxy(server.address)


def haproxy_unix(stack):
    haproxy(stack, address="unix:%s/app.sock" % stack.tmp)


def cgi_fcgi(stack):
    need(CGI_FCGI_BIN, "cgi-fcgi", "libfcgi-bin")
    server = stack.serve("--workers", "2")
    stack.frontend = CgiFcgi(server.address)


def spawn_fcgi(stack):
    """spawn-fcgi binds the socket and execs fastfcgi on it; nginx in front."""
    need(SPAWN_FCGI_BIN, "spawn-fcgi")
    need_nginx()
    stack.spawned = SpawnedApp(stack.tmp)
    spawner = SpawnFcgi(stack.spawned, stack.core_id)
    stack.others.append(spawner)
    stack.frontend = NginxFrontend(spawner.address)
    stack.stream_prefix = "/stream"     # servers.NGINX_CONF's location without buffering


# (id, how to start it, its row in FACTS)
STACKS = [("lighttpd-tcp", lighttpd_tcp, "lighttpd"),
          ("lighttpd-unix", lighttpd_unix, "lighttpd"),
          ("lighttpd-spawn", lighttpd_spawn, "lighttpd"),
          ("apache-tcp", apache_tcp, "apache"),
          ("apache-reuse", apache_reuse, "apache"),
          ("apache-unix", apache_unix, "apache"),
          ("apache-fcgid", apache_fcgid, "mod_fcgid"),
          ("caddy", caddy, "caddy"),
          ("caddy-unix", caddy_unix, "caddy"),
          ("h2o", h2o, "h2o"),
          ("h2o-unix", h2o_unix, "h2o"),
          ("haproxy", haproxy, "haproxy"),
          ("haproxy-unix", haproxy_unix, "haproxy"),
          ("cgi-fcgi", cgi_fcgi, "cgi-fcgi"),
          ("spawn-fcgi-nginx", spawn_fcgi, "nginx")]


def start_stack(name, core_id):
    _, start, kind = [entry for entry in STACKS if entry[0] == name][0]
    stack = Stack(name, kind, core_id)
    try:
        start(stack)
    except BaseException:
        stack.stop()
        raise
    return stack


STACK_PARAMS = [(name, core) for name, _, _ in STACKS for core in ("c", "py")]


@pytest.fixture(scope="module", params=STACK_PARAMS, ids=["%s-%s" % p for p in STACK_PARAMS])
def stack(request):
    name, core_id = request.param
    core_id_or_skip(core_id)
    stack = start_stack(name, core_id)
    yield stack
    problems = stack.stop()
    assert not problems, "\n".join(problems)


def header(headers, name):
    """A response header, whatever case the web server gave its name."""
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


# -- the same checks through every front end ---------------------------------

def test_frontend_get(stack):
    status, headers, body = stack.frontend.request("GET", "/hello")
    assert (status, body) == (200, b"Hello, world!"), stack.logs()
    assert header(headers, "Content-Type") == "text/plain"


def test_frontend_post_body_round_trip(stack):
    data = os.urandom(1 << 20)
    status, _, body = stack.frontend.request("POST", "/upload", body=data,
                                             headers={"Content-Type": "application/octet-stream"})
    assert status == 200, stack.logs()
    assert json.loads(body) == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                "content_length": str(len(data))}


def test_frontend_request_headers_reach_the_app(stack):
    status, _, body = stack.frontend.request(
        "GET", "/environ", headers={"X-Custom-Header": "some value", "X-Second": "2"})
    env = json.loads(body)
    assert status == 200
    assert (env["HTTP_X_CUSTOM_HEADER"], env["HTTP_X_SECOND"]) == ("some value", "2")


def test_frontend_unknown_app_is_the_apps_404(stack):
    status, _, body = stack.frontend.request("GET", "/no_such_app/x")
    assert (status, body) == (404, b"no such app\n")


def test_frontend_streams_the_response(stack):
    # Every front end here streams once told to (see each config in
    # frontends.py); by default lighttpd, Apache (both modules) and Caddy
    # buffer the whole response, h2o and nginx-for-/stream/ do not.
    flag = os.path.join(stack.tmp, "stream-flag")
    with stack.frontend.stream(stack.stream_prefix + "/stream?" + flag, timeout=10) as resp:
        assert resp.status == 200
        # The app waits (up to 20 s) for the flag before its second chunk,
        # and a read waits 10 s at most: this one returns only because the
        # first chunk was passed on while the app still ran.
        assert resp.read(12) == b"first chunk\n"
        open(flag, "w").close()
        assert resp.read() == b"second chunk\n"


def test_frontend_20_concurrent_requests(stack):
    bodies = [os.urandom(997 * i + 1) for i in range(20)]
    results = [None] * 20
    start = threading.Barrier(20)

    def client(i):
        try:
            start.wait(30)
            status, _, body = stack.frontend.request("POST", "/upload", body=bodies[i])
            results[i] = (status, json.loads(body)["sha256"])
        except Exception as exc:        # any failure is a wrong result
            results[i] = repr(exc)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [(200, hashlib.sha256(b).hexdigest()) for b in bodies], stack.logs()


def test_frontend_runs_the_core_it_was_given(stack):
    # Where the web server starts fastfcgi, the core travels in its own way
    # (bin-environment, FcgidInitialEnv, spawn-fcgi's environment).
    want = "compiled core" if stack.core_id == "c" else "pure core"
    lines = [line for server in stack.servers for line in server.log().splitlines()
             if " serving " in line]
    if stack.spawned:
        lines += stack.spawned.serving()
        pid = json.loads(stack.frontend.request("GET", "/environ")[2])["pid"]
        assert pid in stack.spawned.pids()
    assert lines and all(want in line for line in lines), lines


# -- what the application is sent: the facts docs/frontends.md documents -----

class Either(object):
    """An expected value that varies from run to run: equal to any of these."""

    def __init__(self, *values):
        self.values = values

    def __eq__(self, other):
        return other in self.values

    def __repr__(self):
        return "Either%r" % (self.values,)


PROBE = "/params_dump/a%20b/c?x=1&y=%C3%A9"
PROBE_HEADERS = {"X-Probe": "1", "Proxy": "http://proxy.invalid/", "X_Under": "u"}
# RFC 3875's meta-variables, REQUEST_URI, REQUEST_SCHEME, HTTPS and the
# headers the probe sends: "more params" lists what a front end adds.
USUAL_PARAMS = {
    "AUTH_TYPE", "CONTENT_LENGTH", "CONTENT_TYPE", "GATEWAY_INTERFACE", "PATH_INFO",
    "PATH_TRANSLATED", "QUERY_STRING", "REMOTE_ADDR", "REMOTE_HOST", "REMOTE_IDENT",
    "REMOTE_USER", "REQUEST_METHOD", "SCRIPT_NAME", "SERVER_NAME", "SERVER_PORT",
    "SERVER_PROTOCOL", "SERVER_SOFTWARE", "REQUEST_URI", "REQUEST_SCHEME", "HTTPS",
    "HTTP_HOST", "HTTP_ACCEPT_ENCODING", "HTTP_X_PROBE", "HTTP_PROXY", "HTTP_X_UNDER"}

SPLIT = ("", "/params_dump/a b/c")
URI = ("/params_dump/a%20b/c?x=1&y=%C3%A9", "x=1&y=%C3%A9")
POST = ("3", "text/plain")
APACHE_MORE = ["CONTEXT_DOCUMENT_ROOT", "CONTEXT_PREFIX", "DOCUMENT_ROOT", "PATH",
               "REMOTE_PORT", "SCRIPT_FILENAME", "SERVER_ADDR", "SERVER_ADMIN",
               "SERVER_SIGNATURE"]

# What each front end sends, with the configs in frontends.py (measured with
# the Debian 12 packages: lighttpd 1.4.69, Apache 2.4 with mod_fcgid 2.3.9,
# Caddy 2.6.2, h2o 2.2.5, HAProxy 2.6.12, nginx 1.22; cgi-fcgi passes on the
# environment it is given).  None: not sent, or not measured for that front end.
FACTS = {
    "lighttpd": {
        "SCRIPT_NAME, PATH_INFO": SPLIT, "REQUEST_URI, QUERY_STRING": URI,
        "PATH_INFO of /a%2Fb, or the status": "/params_dump/a/b",
        "PATH_INFO of /a/../b//c/./d": "/params_dump/b/c/d",
        "GET: CONTENT_LENGTH, CONTENT_TYPE": ("0", None),
        "POST: CONTENT_LENGTH, CONTENT_TYPE": POST,
        "POST: HTTP_CONTENT_LENGTH, HTTP_CONTENT_TYPE": ("3", None),
        "HTTP: REQUEST_SCHEME, HTTPS": ("http", None),
        "TLS: REQUEST_SCHEME, HTTPS, wsgi.url_scheme": ("https", "on", "https"),
        "GATEWAY_INTERFACE": "CGI/1.1",
        "Host example.org:8080: SERVER_NAME, SERVER_PORT, HTTP_HOST":
            ("example.org", "<port>", "example.org:8080"),
        "chunked POST: status, CONTENT_LENGTH the app sees": (200, "7"),
        "header Proxy: as HTTP_PROXY": None,
        "header X_Under: as HTTP_X_UNDER": "u",
        "more params": ["DOCUMENT_ROOT", "REDIRECT_STATUS", "REMOTE_PORT", "SCRIPT_FILENAME",
                        "SERVER_ADDR"],
    },
    "apache": {
        "SCRIPT_NAME, PATH_INFO": SPLIT, "REQUEST_URI, QUERY_STRING": URI,
        # Apache's own 404 (AllowEncodedSlashes Off).
        "PATH_INFO of /a%2Fb, or the status": 404,
        "PATH_INFO of /a/../b//c/./d": "/params_dump/b/c/d",
        "GET: CONTENT_LENGTH, CONTENT_TYPE": (None, None),
        "POST: CONTENT_LENGTH, CONTENT_TYPE": POST,
        "POST: HTTP_CONTENT_LENGTH, HTTP_CONTENT_TYPE": (None, None),
        "HTTP: REQUEST_SCHEME, HTTPS": ("http", None),
        "TLS: REQUEST_SCHEME, HTTPS, wsgi.url_scheme": ("https", "on", "https"),
        "GATEWAY_INTERFACE": "CGI/1.1",
        "Host example.org:8080: SERVER_NAME, SERVER_PORT, HTTP_HOST":
            ("example.org", "8080", "example.org:8080"),
        # mod_proxy_fcgi sets CONTENT_LENGTH when the whole chunked body came
        # with its first read, and streams it without one otherwise.
        "chunked POST: status, CONTENT_LENGTH the app sees": Either((200, "7"), (200, None)),
        "header Proxy: as HTTP_PROXY": None,
        "header X_Under: as HTTP_X_UNDER": None,
        "more params": APACHE_MORE,
    },
    "mod_fcgid": {
        "SCRIPT_NAME, PATH_INFO": SPLIT, "REQUEST_URI, QUERY_STRING": URI,
        "PATH_INFO of /a%2Fb, or the status": 404,
        "PATH_INFO of /a/../b//c/./d": "/params_dump/b/c/d",
        "GET: CONTENT_LENGTH, CONTENT_TYPE": ("0", None),
        "POST: CONTENT_LENGTH, CONTENT_TYPE": POST,
        "POST: HTTP_CONTENT_LENGTH, HTTP_CONTENT_TYPE": (None, None),
        "HTTP: REQUEST_SCHEME, HTTPS": ("http", None),
        "TLS: REQUEST_SCHEME, HTTPS, wsgi.url_scheme": ("https", "on", "https"),
        "GATEWAY_INTERFACE": "CGI/1.1",
        "Host example.org:8080: SERVER_NAME, SERVER_PORT, HTTP_HOST":
            ("example.org", "8080", "example.org:8080"),
        "chunked POST: status, CONTENT_LENGTH the app sees": (200, "7"),
        "header Proxy: as HTTP_PROXY": None,
        "header X_Under: as HTTP_X_UNDER": None,
        "more params": sorted(APACHE_MORE + ["HTTP_CONNECTION"]),
    },
    "caddy": {
        "SCRIPT_NAME, PATH_INFO": SPLIT, "REQUEST_URI, QUERY_STRING": URI,
        "PATH_INFO of /a%2Fb, or the status": "/params_dump/a/b",
        # Caddy passes dot segments and double slashes through.
        "PATH_INFO of /a/../b//c/./d": "/params_dump/a/../b//c/./d",
        "GET: CONTENT_LENGTH, CONTENT_TYPE": ("0", ""),
        "POST: CONTENT_LENGTH, CONTENT_TYPE": POST,
        "POST: HTTP_CONTENT_LENGTH, HTTP_CONTENT_TYPE": POST,
        "HTTP: REQUEST_SCHEME, HTTPS": ("http", None),
        "TLS: REQUEST_SCHEME, HTTPS, wsgi.url_scheme": ("https", "on", "https"),
        "GATEWAY_INTERFACE": "CGI/1.1",
        "Host example.org:8080: SERVER_NAME, SERVER_PORT, HTTP_HOST":
            ("example.org", "8080", "example.org:8080"),
        # Caddy 2.6 sends CONTENT_LENGTH "-1" for a chunked body: fastfcgi
        # reads it as "unknown" and the app sees an empty CONTENT_LENGTH.
        "chunked POST: status, CONTENT_LENGTH the app sees": (200, ""),
        "header Proxy: as HTTP_PROXY": "http://proxy.invalid/",
        "header X_Under: as HTTP_X_UNDER": "u",
        "more params": ["DOCUMENT_ROOT", "DOCUMENT_URI", "HTTP_USER_AGENT",
                        "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_HOST",
                        "HTTP_X_FORWARDED_PROTO", "REMOTE_PORT", "SCRIPT_FILENAME"],
    },
    "h2o": {
        "SCRIPT_NAME, PATH_INFO": SPLIT, "REQUEST_URI, QUERY_STRING": URI,
        "PATH_INFO of /a%2Fb, or the status": "/params_dump/a/b",
        "PATH_INFO of /a/../b//c/./d": "/params_dump/b//c/d",
        "GET: CONTENT_LENGTH, CONTENT_TYPE": (None, None),
        "POST: CONTENT_LENGTH, CONTENT_TYPE": POST,
        "POST: HTTP_CONTENT_LENGTH, HTTP_CONTENT_TYPE": (None, None),
        "HTTP: REQUEST_SCHEME, HTTPS": (None, None),
        "TLS: REQUEST_SCHEME, HTTPS, wsgi.url_scheme": (None, "on", "https"),
        "GATEWAY_INTERFACE": None,
        "Host example.org:8080: SERVER_NAME, SERVER_PORT, HTTP_HOST":
            ("127.0.0.1", "<port>", "example.org:8080"),
        "chunked POST: status, CONTENT_LENGTH the app sees": (200, "7"),
        "header Proxy: as HTTP_PROXY": "http://proxy.invalid/",
        "header X_Under: as HTTP_X_UNDER": "u",
        "more params": ["REMOTE_PORT", "SERVER_ADDR"],
    },
    "haproxy": {
        # path-info's empty first capture: no SCRIPT_NAME at all (the WSGI
        # gateway adds it, empty).
        "SCRIPT_NAME, PATH_INFO": (None, "/params_dump/a b/c"), "REQUEST_URI, QUERY_STRING": URI,
        "PATH_INFO of /a%2Fb, or the status": "/params_dump/a/b",
        "PATH_INFO of /a/../b//c/./d": "/params_dump/a/../b//c/./d",
        "GET: CONTENT_LENGTH, CONTENT_TYPE": ("0", None),
        "POST: CONTENT_LENGTH, CONTENT_TYPE": POST,
        "POST: HTTP_CONTENT_LENGTH, HTTP_CONTENT_TYPE": (None, None),
        "HTTP: REQUEST_SCHEME, HTTPS": (None, None),
        "TLS: REQUEST_SCHEME, HTTPS, wsgi.url_scheme": (None, "on", "https"),
        "GATEWAY_INTERFACE": "CGI/1.1",
        # SERVER_NAME is the Host header as sent, port and all.
        "Host example.org:8080: SERVER_NAME, SERVER_PORT, HTTP_HOST":
            ("example.org:8080", "<port>", "example.org:8080"),
        "chunked POST: status, CONTENT_LENGTH the app sees": (200, "7"),
        "header Proxy: as HTTP_PROXY": None,
        "header X_Under: as HTTP_X_UNDER": None,
        "more params": ["DOCUMENT_ROOT", "REMOTE_PORT", "SCRIPT_FILENAME"],
    },
    "cgi-fcgi": {
        "SCRIPT_NAME, PATH_INFO": SPLIT, "REQUEST_URI, QUERY_STRING": URI,
        "PATH_INFO of /a%2Fb, or the status": "/params_dump/a/b",
        "PATH_INFO of /a/../b//c/./d": "/params_dump/a/../b//c/./d",
        "GET: CONTENT_LENGTH, CONTENT_TYPE": (None, None),
        "POST: CONTENT_LENGTH, CONTENT_TYPE": POST,
        "POST: HTTP_CONTENT_LENGTH, HTTP_CONTENT_TYPE": (None, None),
        "HTTP: REQUEST_SCHEME, HTTPS": (None, None),
        "TLS: REQUEST_SCHEME, HTTPS, wsgi.url_scheme": None,
        "GATEWAY_INTERFACE": "CGI/1.1",
        "Host example.org:8080: SERVER_NAME, SERVER_PORT, HTTP_HOST": None,
        "chunked POST: status, CONTENT_LENGTH the app sees": None,
        "header Proxy: as HTTP_PROXY": "http://proxy.invalid/",
        "header X_Under: as HTTP_X_UNDER": "u",
        "more params": [],
    },
    "nginx": {
        "SCRIPT_NAME, PATH_INFO": SPLIT, "REQUEST_URI, QUERY_STRING": URI,
        "PATH_INFO of /a%2Fb, or the status": "/params_dump/a/b",
        "PATH_INFO of /a/../b//c/./d": "/params_dump/b/c/d",
        "GET: CONTENT_LENGTH, CONTENT_TYPE": ("", ""),
        "POST: CONTENT_LENGTH, CONTENT_TYPE": POST,
        "POST: HTTP_CONTENT_LENGTH, HTTP_CONTENT_TYPE": POST,
        "HTTP: REQUEST_SCHEME, HTTPS": ("http", None),
        "TLS: REQUEST_SCHEME, HTTPS, wsgi.url_scheme": None,
        "GATEWAY_INTERFACE": "CGI/1.1",
        # servers.NGINX_CONF has no server_name; Debian's fastcgi_params
        # send HTTP_HOST as $host, without the port.
        "Host example.org:8080: SERVER_NAME, SERVER_PORT, HTTP_HOST":
            ("", "<port>", "example.org"),
        "chunked POST: status, CONTENT_LENGTH the app sees": (200, "7"),
        "header Proxy: as HTTP_PROXY": "http://proxy.invalid/",
        "header X_Under: as HTTP_X_UNDER": None,
        "more params": ["DOCUMENT_ROOT", "DOCUMENT_URI", "REDIRECT_STATUS", "REMOTE_PORT",
                        "SERVER_ADDR"],
    },
}


def observe(stack):
    """The params the front end sends (apps.params_dump: as sent, before
    the WSGI gateway fills in or moves any), summed up as FACTS has them."""
    front = stack.frontend

    def params(method, path, send=None, **kw):
        status, _, body = (send or front.request)(method, path, **kw)
        assert status == 200, (status, body, stack.logs())
        return json.loads(body)

    def path_info(path):
        status, _, body = front.request("GET", "/params_dump" + path)
        return json.loads(body).get("PATH_INFO") if status == 200 else status

    get = params("GET", PROBE, headers=PROBE_HEADERS)
    post = params("POST", "/params_dump/", body=b"abc", headers={"Content-Type": "text/plain"})
    facts = {
        "PATH_INFO of /a%2Fb, or the status": path_info("/a%2Fb"),
        "PATH_INFO of /a/../b//c/./d": path_info("/a/../b//c/./d"),
        "SCRIPT_NAME, PATH_INFO": (get.get("SCRIPT_NAME"), get.get("PATH_INFO")),
        "REQUEST_URI, QUERY_STRING": (get.get("REQUEST_URI"), get.get("QUERY_STRING")),
        "GET: CONTENT_LENGTH, CONTENT_TYPE": (get.get("CONTENT_LENGTH"), get.get("CONTENT_TYPE")),
        "POST: CONTENT_LENGTH, CONTENT_TYPE": (post.get("CONTENT_LENGTH"),
                                               post.get("CONTENT_TYPE")),
        "POST: HTTP_CONTENT_LENGTH, HTTP_CONTENT_TYPE": (post.get("HTTP_CONTENT_LENGTH"),
                                                         post.get("HTTP_CONTENT_TYPE")),
        "HTTP: REQUEST_SCHEME, HTTPS": (get.get("REQUEST_SCHEME"), get.get("HTTPS")),
        "TLS: REQUEST_SCHEME, HTTPS, wsgi.url_scheme": None,
        "GATEWAY_INTERFACE": get.get("GATEWAY_INTERFACE"),
        "Host example.org:8080: SERVER_NAME, SERVER_PORT, HTTP_HOST": None,
        "chunked POST: status, CONTENT_LENGTH the app sees": None,
        "header Proxy: as HTTP_PROXY": get.get("HTTP_PROXY"),
        "header X_Under: as HTTP_X_UNDER": get.get("HTTP_X_UNDER"),
        "more params": sorted(set(get) - USUAL_PARAMS),
    }
    if front.tls_port:
        tls = params("GET", "/params_dump/", send=front.tls_request)
        env = params("GET", "/environ/", send=front.tls_request)
        facts["TLS: REQUEST_SCHEME, HTTPS, wsgi.url_scheme"] = (
            tls.get("REQUEST_SCHEME"), tls.get("HTTPS"), env["wsgi.url_scheme"])
    if hasattr(front, "port"):          # an HTTP server
        host = params("GET", "/params_dump/", headers={"Host": "example.org:8080"})
        port = str(front.port)
        facts["Host example.org:8080: SERVER_NAME, SERVER_PORT, HTTP_HOST"] = tuple(
            "<port>" if value == port else value
            for value in (host.get("SERVER_NAME"), host.get("SERVER_PORT"), host.get("HTTP_HOST")))
        # An iterable body of no known length goes out chunked.
        status, _, body = front.request("POST", "/upload", body=iter([b"abc", b"defg"]))
        facts["chunked POST: status, CONTENT_LENGTH the app sees"] = (
            status, json.loads(body)["content_length"] if status == 200 else None)
    return facts


def test_frontend_sends_the_documented_params(stack):
    facts = FACTS[stack.kind]
    tls = "TLS: REQUEST_SCHEME, HTTPS, wsgi.url_scheme"
    if stack.frontend.tls_port is None and facts[tls] is not None:
        need_frontend(stack.kind + " TLS", "no openssl command or TLS module "
                      "(Debian: openssl, lighttpd-mod-openssl): its params are not checked",
                      skip=False)
        facts = dict(facts, **{tls: None})
    assert observe(stack) == facts


def test_frontend_app_sees_script_name_empty_and_the_whole_path(stack):
    # The README's rule, through the WSGI gateway: mounted at /.
    _, _, body = stack.frontend.request("GET", "/environ/a%20b/c?x=1")
    env = json.loads(body)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == \
        ("", "/environ/a b/c", "x=1")
    assert env["wsgi.url_scheme"] == "http"


# -- lighttpd with a FastCGI authorizer --------------------------------------

@pytest.fixture(scope="module", params=["c", "py"])
def authorized(request):
    """lighttpd asking apps.reporting_authorizer before dispatch:app serves
    a request: the authorizer and the responder share the prefix "/"."""
    core_id = core_id_or_skip(request.param)
    need(LIGHTTPD_BIN, "lighttpd")
    stack = Stack("lighttpd-authorizer", "lighttpd", core_id)
    try:
        auth = stack.serve(app="apps:reporting_authorizer")
        app = stack.serve("--workers", "2")
        host, port = auth.address.rsplit(":", 1)
        stack.frontend = Lighttpd({
            "auth": {"mode": "authorizer", "host": host, "port": int(port),
                     "check-local": False},
            "app": lighttpd_backend(app.address)})
    except BaseException:
        stack.stop()
        raise
    yield stack
    problems = stack.stop()
    assert not problems, "\n".join(problems)


def test_lighttpd_authorizer_grant_runs_the_responder_with_its_variables(authorized):
    status, _, body = authorized.frontend.request("GET", "/environ/x?token=good")
    assert status == 200, authorized.logs()
    env = json.loads(body)
    # Each Variable-NAME header of the 200 becomes the responder's param NAME.
    assert (env["AUTH_USER"], env["AUTH_LEVEL"]) == ("alice", "admin")
    assert "HTTP_VARIABLE_AUTH_USER" not in env and "Variable-AUTH_USER" not in env
    assert (env["fastcgi.role"], env["SCRIPT_NAME"], env["PATH_INFO"]) == \
        ("RESPONDER", "", "/environ/x")
    sent = json.loads(env["AUTHORIZER_SENT"])
    assert sent["role"] == "AUTHORIZER"


def test_lighttpd_authorizer_gets_no_body_and_the_responder_all_of_it(authorized):
    data = os.urandom(300000)
    status, _, body = authorized.frontend.request("POST", "/upload?token=good", body=data)
    assert status == 200, authorized.logs()
    assert json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()
    _, _, body = authorized.frontend.request("POST", "/environ/x?token=good", body=b"12345")
    sent = json.loads(json.loads(body)["AUTHORIZER_SENT"])["params"]
    # lighttpd 1.4.69 sends an authorizer no FCGI_STDIN at all (spec 6.3
    # gives it none), no CONTENT_LENGTH, SCRIPT_NAME or PATH_INFO (as 6.3
    # says), but the client's Content-Length header as HTTP_CONTENT_LENGTH.
    assert sent["HTTP_CONTENT_LENGTH"] == "5"
    assert not {"CONTENT_LENGTH", "SCRIPT_NAME", "PATH_INFO"} & set(sent)
    assert sent["REQUEST_URI"] == "/environ/x?token=good"


def test_lighttpd_authorizer_denial_is_403_with_its_body(authorized):
    status, _, body = authorized.frontend.request("GET", "/environ/x?token=bad")
    assert (status, body) == (403, b"Forbidden\n")


def test_lighttpd_authorizer_denial_passes_its_status_headers_and_body(authorized):
    status, headers, body = authorized.frontend.request("GET", "/environ/x?token=expired")
    assert (status, body) == (401, b"token expired\n")
    assert header(headers, "WWW-Authenticate") == 'Bearer realm="test"'


def _authorize_once(listener, seen, linger=1.0):
    """Play a FastCGI authorizer for one request, by hand: record the
    (type, content) of each record lighttpd sends, waiting ``linger``
    seconds after the params for any stdin, then grant with a variable."""
    try:
        conn, _ = listener.accept()
    except OSError as exc:
        seen.append(("no connection", repr(exc)))
        return
    conn.settimeout(0.1)
    data, request_id = b"", 1
    deadline = time.time() + 20         # until the params end, then linger
    with conn:
        while time.time() < deadline:
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                break
            data += chunk
            while len(data) >= 8:
                _, rtype, request_id, length, padding = struct.unpack_from("!BBHHBx", data)
                if len(data) < 8 + length + padding:
                    break
                seen.append((rtype, data[8:8 + length]))
                data = data[8 + length + padding:]
                if rtype == 4 and length == 0:      # the params ended
                    deadline = time.time() + linger
        head = b"Status: 200 OK\r\nVariable-AUTH_USER: raw\r\n\r\n"
        conn.sendall(rec(6, request_id, head) + rec(6, request_id) +
                     rec(3, request_id, struct.pack("!IB3x", 0, 0)))


def test_lighttpd_authorizer_is_sent_no_stdin_when_there_is_a_body(authorized):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2)
    listener.settimeout(30)
    seen = {"GET": [], "POST": []}

    def authorizer():
        for method in ("GET", "POST"):
            _authorize_once(listener, seen[method])
    thread = threading.Thread(target=authorizer)
    thread.start()
    try:
        front = Lighttpd({
            "auth": {"mode": "authorizer", "host": "127.0.0.1",
                     "port": listener.getsockname()[1], "check-local": False},
            "app": lighttpd_backend(authorized.servers[1].address)})
        try:
            results = [front.request("GET", "/environ/x"),
                       front.request("POST", "/environ/x", body=b"12345")]
        finally:
            front.stop()
    finally:
        thread.join(30)
        listener.close()
    for status, _, body in results:
        assert status == 200 and json.loads(body)["AUTH_USER"] == "raw"
    get, post = [[rtype for rtype, _ in seen[m]] for m in ("GET", "POST")]
    # BEGIN_REQUEST for the AUTHORIZER role, then the params, ...
    for records in seen.values():
        assert records[0][0] == 1 and struct.unpack_from("!H", records[0][1])[0] == 2
    # ... then, without a body, the empty stdin record that ends the stream;
    # with one, no FCGI_STDIN record at all (lighttpd keeps the body for the
    # responder): an authorizer must not wait for the end of its stdin.
    assert get[-2:] == [4, 5] and seen["GET"][-1] == (5, b"")
    assert 5 not in post and seen["POST"][-1] == (4, b"")


# -- HAProxy: the next request before END_REQUEST --------------------------------

@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_haproxy_keep_conn_under_concurrent_load_answers_every_request(core_id, transport):
    """HAProxy's keep-conn sends the next BEGIN_REQUEST on a connection as
    soon as it has the previous response's body, before its END_REQUEST
    (streamed responses make that window wide).  Every request must be
    answered: one read while the previous was finishing and then left
    waiting would hang until HAProxy's server timeout (504)."""
    need(HAPROXY_BIN, "haproxy")
    stack = Stack("haproxy-load", "haproxy", core_id)
    try:
        address = "unix:%s/app.sock" % stack.tmp if transport == "unix" else None
        server = stack.serve("--workers", "2", address=address)
        stack.frontend = HAProxy(server.address)
        paths = ["/chunks?5", "/hello", "/chunks?2", "/upload"]
        failures = []
        done = []

        def client(n):
            conn = http.client.HTTPConnection("127.0.0.1", stack.frontend.port, timeout=10)
            try:
                for i in range(60):
                    path = paths[(n + i) % len(paths)]
                    body = b"x" * (n * 100 + i) if path == "/upload" else None
                    conn.request("POST" if body is not None else "GET", path, body=body)
                    resp = conn.getresponse()
                    data = resp.read()
                    ok = resp.status == 200 and (
                        json.loads(data)["size"] == len(body) if body is not None
                        else len(data) in (13, 200, 500))
                    if not ok:
                        failures.append((path, resp.status, data[:100]))
                    done.append(1)
            except Exception as exc:        # a timeout is the hang this test is about
                failures.append((n, repr(exc)))
            finally:
                conn.close()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert failures == [], "%s\n%s" % (failures[:5], stack.logs()[-3000:])
        assert len(done) == 8 * 60
    finally:
        problems = stack.stop()
    assert not problems, problems
