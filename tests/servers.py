"""Real processes for the integration tests: fastfcgi as a subprocess on a
free port or unix socket, and a private nginx in front of it.

Every process is started with its own temporary files and stopped by PID.
"""

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(predicate, timeout=15.0, interval=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def send_then_stall(family, address, data, timeout=15):
    """Connect, send ``data`` (part of a request), say nothing more, and
    return once the server closes the connection (b"" or a reset); a
    server that waits on for ever fails the test with socket.timeout."""
    sock = socket.socket(family)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
        sock.sendall(data)
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
    finally:
        sock.close()


def accepts(address):
    """Ready means the address accepts connections."""
    try:
        if address.startswith("unix:"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(address[5:])
        else:
            host, port = address.rsplit(":", 1)
            s = socket.create_connection((host.strip("[]"), int(port)), timeout=1)
        s.close()
        return True
    except OSError:
        return False


class FastCGIProcess(object):
    """``fastfcgi`` in a subprocess, on the given core ("c" or "py");
    ``prefix`` goes before the command (``ip netns exec NAME``: tests/netns.py,
    whose subclass also redefines ``accepts`` for an address in a namespace)."""

    def __init__(self, core_id, app, *args, address=None, env=None, tmpdir=None, prefix=()):
        self.tmpdir = tmpdir or tempfile.mkdtemp(prefix="fastfcgi-test-")
        self.address = address or "127.0.0.1:%d" % free_port()
        self.log_path = os.path.join(self.tmpdir, "fastfcgi-%d.log" % free_port())
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join([TESTS, ROOT, environment.get("PYTHONPATH", "")])
        environment.pop("FASTFCGI_PURE", None)
        # PyPy sizes its GC nursery from the cache size /proc/cpuinfo gives:
        # on a large server that is a 480 MB L3, and the heap then grows in
        # steps of a hundred MB or more, which would swamp what the memory
        # tests measure (our buffers).  2 MB, an L2's size, is the nursery
        # PyPy picks on most machines.
        if sys.implementation.name == "pypy":
            environment.setdefault("PYPY_GC_NURSERY", "2MB")
        if core_id == "py":
            environment["FASTFCGI_PURE"] = "1"
        environment.update(env or {})
        cmd = list(prefix) + [
            sys.executable, "-c", "import sys, fastfcgi_py; sys.exit(fastfcgi_py.main())",
            "--fcgi", self.address] + list(args) + [app]
        self.log_file = open(self.log_path, "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     env=environment, cwd=TESTS, start_new_session=True)
        self.core_id = core_id

    def wait_ready(self):
        if not wait_until(lambda: self.accepts() or self.proc.poll() is not None):
            raise RuntimeError("fastfcgi did not start:\n" + self.log())
        if self.proc.poll() is not None:
            raise RuntimeError("fastfcgi exited %s:\n%s" % (self.proc.returncode, self.log()))
        want = "compiled core" if self.core_id == "c" else "pure core"
        assert wait_until(lambda: want in self.log(), 5), self.log()
        return self

    def accepts(self):
        return accepts(self.address)

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, timeout=20):
        """TERM, wait; KILL the process group if it does not go."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # stray workers, if any
        except (ProcessLookupError, PermissionError):
            pass
        self.log_file.close()
        return self.proc.returncode


def exchange(conn, method, path, body=None, headers=None):
    """One request on the http.client connection ``conn``, which is closed
    after; returns (status, headers dict, body bytes)."""
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log {tmp}/error.log info;
pid {tmp}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    fastcgi_temp_path {tmp}/fastcgi;
    proxy_temp_path {tmp}/proxy;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 200m;
    upstream app_keepalive {{
        server {backend};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            {params}
            fastcgi_pass {backend};
        }}
        location /stream/ {{
            {params}
            fastcgi_buffering off;
            fastcgi_pass {backend};
        }}
        location /tls/ {{
            {params}
            fastcgi_param HTTPS on;
            fastcgi_pass {backend};
        }}
        location /keep/ {{
            {params}
            fastcgi_keep_conn on;
            fastcgi_pass app_keepalive;
        }}
    }}
}}
"""

# The README's nginx configuration for an ASGI application: kept connections,
# the body streamed to the application, the response streamed to the client.
NGINX_ASGI_CONF = NGINX_CONF.split("    server {{")[0] + """    server {{
        listen 127.0.0.1:{port};
        location / {{
            {params}
            fastcgi_keep_conn on;
            fastcgi_request_buffering off;
            fastcgi_buffering off;
            client_max_body_size 0;
            fastcgi_pass app_keepalive;
        }}
    }}
}}
"""

# The README's nginx params for a WSGI application mounted at /: the whole
# path is PATH_INFO, SCRIPT_NAME is empty.
NGINX_PARAMS = """
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_NAME "";
            fastcgi_param PATH_INFO $uri;
"""


def stop_process(proc, timeout=10):
    """TERM a helper process (uwsgi, Prometheus...), KILL it if it stays."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_to_end(sock):
    """All a socket receives until the peer closes."""
    got = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return got
        got += data


def need_nginx():
    """Go on when nginx is here (see conftest.need_frontend); a test calls
    this before it starts anything, so a skip leaves nothing running."""
    from conftest import need_frontend      # pytest's: bench.py imports this module too
    need_frontend("nginx", None if os.access(NGINX, os.X_OK)
                  else "nginx is not installed (Debian: nginx-light)")


class Nginx(object):
    """A private nginx in front of ``backend`` (host:port or unix:/path)."""

    def __init__(self, backend, conf_template=None):
        self.tmp = tempfile.mkdtemp(prefix="fastfcgi-nginx-")
        self.port = free_port()
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write((conf_template or NGINX_CONF).format(
                tmp=self.tmp, port=self.port, backend=backend, params=NGINX_PARAMS))
        self.proc = subprocess.Popen([NGINX, "-p", self.tmp, "-c", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if not wait_until(lambda: accepts("127.0.0.1:%d" % self.port)
                          or self.proc.poll() is not None):
            raise RuntimeError("nginx did not start: " + self.error_log())
        if self.proc.poll() is not None:
            raise RuntimeError("nginx exited: " + self.error_log())

    def error_log(self):
        try:
            with open(os.path.join(self.tmp, "error.log")) as f:
                return f.read()
        except OSError:
            return ""

    def request(self, method, path, body=None, headers=None, timeout=60):
        """One HTTP request; returns (status, headers dict, body bytes)."""
        return exchange(http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout),
                        method, path, body, headers)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)
