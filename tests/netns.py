"""A small cluster in network namespaces, for the scale-out tests (issue 18):
one balancer namespace and N host namespaces, each host linked to the
balancer by its own veth pair, fastfcgi in every host and nginx or HAProxy
in the balancer.  Root only (``ip netns``); the tests skip elsewhere.

    balancer ns  ffTAG-lb   127.0.0.1:8080 (nginx / HAProxy), ffTAG-bI 10.77.I+1.1/24
    host ns I    ffTAG-hI   ffTAG-vI 10.77.I+1.2/24, fastfcgi on 10.77.I+1.2:9000

TAG is 4 random hex digits, so runs in parallel and leftovers of an
aborted run never collide; every name fits the 15 characters of an
interface name.  Both ends of every veth live in namespaces the test made,
so the 10.77/16 addresses never meet the machine's own (which has none in
10/8 anyway): routing stays inside the cluster.

The test process itself reaches into the namespaces with setns(2) on one
thread at a time (a network namespace is per thread, and a socket belongs
to the namespace its creator was in): the load generator and the readiness
probes run on such threads, so every client sits in the balancer's
namespace and sees what a user would.  Everything the cluster starts is
killed by process group, and every namespace deleted, even after a failure.

``bench.py e2e --hosts N`` builds the same cluster and balancers to
measure how throughput scales with hosts, so this module imports no
pytest (a test hands ``Cluster`` conftest.need_frontend).
"""

import collections
import ctypes
import http.client
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time

from frontends import HAPROXY_BIN, HAPROXY_CONF
from servers import NGINX, NGINX_CONF, NGINX_PARAMS, FastCGIProcess, accepts, wait_until

IP = shutil.which("ip") or "/usr/sbin/ip"
CLONE_NEWNET = 0x40000000
FCGI_PORT = 9000
HTTP_PORT = 8080
BALANCER_ADDRESS = "127.0.0.1:%d" % HTTP_PORT


def enter_netns(name):
    """Move the calling thread (only it) into network namespace ``name``."""
    fd = os.open("/run/netns/" + name, os.O_RDONLY)
    try:
        if hasattr(os, "setns"):                    # Python 3.12+
            os.setns(fd, CLONE_NEWNET)
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, "setns(%s): %s" % (name, os.strerror(errno)))
    finally:
        os.close(fd)


def in_netns(name, function, *args):
    """``function(*args)`` on a new thread inside namespace ``name`` (so no
    thread of the test is left in a namespace); returns its result or
    raises its exception."""
    outcome = []

    def run():
        try:
            enter_netns(name)
            outcome.append((True, function(*args)))
        except BaseException as exc:        # handed to the caller
            outcome.append((False, exc))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


class HostServer(FastCGIProcess):
    """fastfcgi run by ``ip netns exec`` in host namespace ``ns``; ready
    when its address accepts connections from inside that namespace."""

    def __init__(self, ns, core_id, app, *args, **kw):
        self.ns = ns
        FastCGIProcess.__init__(self, core_id, app, *args,
                                prefix=[IP, "netns", "exec", ns], **kw)

    def accepts(self):
        return in_netns(self.ns, accepts, self.address)


def _ip(*args):
    done = subprocess.run([IP] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)
    if done.returncode:
        raise RuntimeError("ip %s: %s" % (" ".join(args), done.stderr.strip()))
    return done.stdout


def missing_is_an_error(name, missing=None, installable=True):
    """``Cluster``'s ``need`` outside pytest (bench.py): a piece this
    machine lacks is a RuntimeError naming it."""
    if missing is not None:
        raise RuntimeError("%s: %s" % (name, missing))


def netns_skip_reason():
    """Why this machine cannot make network namespaces, or None."""
    if not os.access(IP, os.X_OK):
        return "the ip command is not installed (Debian: iproute2)"
    if os.geteuid() != 0:
        return "ip netns needs root (CI runs the suite as root)"
    return None


class Cluster(object):
    """The balancer namespace and ``hosts`` host namespaces (see the module
    docstring), files in ``tmpdir``.  A context manager: leaving it kills
    everything it started and deletes the namespaces.  ``need`` is told
    whether the namespaces can be made, as conftest.need_frontend is (the
    tests pass that: a machine without them skips)."""

    def __init__(self, tmpdir, hosts=3, need=missing_is_an_error):
        self.need = need
        self.tmp = tmpdir
        self.tag = secrets.token_hex(2)
        self.balancer = "ff%s-lb" % self.tag
        self.hosts = ["ff%s-h%d" % (self.tag, i) for i in range(hosts)]
        self.addresses = ["10.77.%d.2:%d" % (i + 1, FCGI_PORT) for i in range(hosts)]
        self.servers = [None] * hosts       # host index -> its HostServer
        self.balancer_proc = None
        self.made = []                      # namespaces to delete
        self.started = []                   # every Popen, to kill

    def __enter__(self):
        missing = netns_skip_reason()
        if missing:
            self.need("netns", missing, installable=missing.startswith("the ip"))
        try:
            _ip("netns", "add", self.balancer)
        except RuntimeError as exc:
            self.need("netns", "ip netns is not permitted here: %s" % exc, installable=False)
        self.made.append(self.balancer)
        try:
            self._link()
        except BaseException:
            self.close()
            raise
        self.need("netns")
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _link(self):
        _ip("-n", self.balancer, "link", "set", "lo", "up")
        for i, ns in enumerate(self.hosts):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            outer, inner = "ff%s-b%d" % (self.tag, i), "ff%s-v%d" % (self.tag, i)
            # Made straight into the namespaces: never a name in the root one.
            _ip("link", "add", outer, "netns", self.balancer, "type", "veth",
                "peer", "name", inner, "netns", ns)
            _ip("-n", self.balancer, "addr", "add", "10.77.%d.1/24" % (i + 1), "dev", outer)
            _ip("-n", ns, "addr", "add", "10.77.%d.2/24" % (i + 1), "dev", inner)
            _ip("-n", self.balancer, "link", "set", outer, "up")
            _ip("-n", ns, "link", "set", inner, "up")

    # -- processes --------------------------------------------------------------

    def popen(self, ns, cmd, **kw):
        """``cmd`` in namespace ``ns`` (``ip netns exec`` execs it, so the
        Popen's pid is the command's), in a session of its own."""
        proc = subprocess.Popen([IP, "netns", "exec", ns] + list(cmd), start_new_session=True,
                                stdin=subprocess.DEVNULL, **kw)
        self.started.append(proc)
        return proc

    def start_host(self, i, core_id, app, *args):
        """fastfcgi serving ``app`` in host ``i`` (not waited for: see
        ``start_hosts``), with FASTFCGI_TEST_HOST=hI and the hang flag
        ``hang_flag(i)``; replaces host ``i``'s server when it ran before."""
        env = {"FASTFCGI_TEST_HOST": "h%d" % i, "FASTFCGI_TEST_HANG": self.hang_flag(i)}
        if self.servers[i] is not None:
            self.servers[i].log_file.close()       # its log() still reads the file
        server = HostServer(self.hosts[i], core_id, app, *args, address=self.addresses[i],
                            env=env, tmpdir=self.tmp)
        self.started.append(server.proc)
        self.servers[i] = server
        return server

    def start_hosts(self, core_id, app, *args):
        """fastfcgi in every host, started together, then waited for."""
        for i in range(len(self.hosts)):
            self.start_host(i, core_id, app, *args)
        for server in self.servers:
            server.wait_ready()

    def hang_flag(self, i):
        return os.path.join(self.tmp, "hang-h%d" % i)

    def start_balancer(self, kind):
        """nginx or HAProxy (``kind``) in the balancer namespace on
        BALANCER_ADDRESS, in front of every host; waits until it accepts."""
        if kind == "nginx":
            conf = self._write("nginx.conf", nginx_conf(self.tmp, self.addresses))
            cmd = [NGINX, "-p", self.tmp, "-c", conf]
        else:
            conf = self._write("haproxy.cfg", haproxy_conf(self.tmp, self.addresses))
            cmd = [HAPROXY_BIN, "-db", "-f", conf]
        with open(os.path.join(self.tmp, "balancer.log"), "w") as console:
            self.balancer_proc = self.popen(self.balancer, cmd, stdout=console,
                                            stderr=subprocess.STDOUT, cwd=self.tmp)
        if not wait_until(lambda: self.balancer_proc.poll() is not None
                          or in_netns(self.balancer, accepts, BALANCER_ADDRESS)) \
                or self.balancer_proc.poll() is not None:
            raise RuntimeError("%s did not start:\n%s" % (kind, self.balancer_log()))

    def balancer_log(self):
        """The balancer's console (HAProxy logs there) and nginx's error log."""
        text = ""
        for name in ("balancer.log", "error.log"):
            try:
                with open(os.path.join(self.tmp, name)) as f:
                    text += f.read()
            except OSError:
                pass
        return text

    def _write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def request(self, method, path, body=None, timeout=30):
        """One HTTP request to the balancer, from its namespace: (status,
        body)."""
        def ask():
            conn = http.client.HTTPConnection("127.0.0.1", HTTP_PORT, timeout=timeout)
            try:
                conn.request(method, path, body=body)
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()
        return in_netns(self.balancer, ask)

    def pids(self, ns):
        """Every process in namespace ``ns`` but this one (a thread of the
        test may be in it; the kernel lists the thread group)."""
        return [int(p) for p in _ip("netns", "pids", ns).split() if int(p) != os.getpid()]

    def close(self):
        """Kill what was started (process groups, then any process left in
        the namespaces), delete the namespaces, and with them the veths.
        Safe to call twice; it carries on past errors."""
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for server in self.servers:
            if server is not None:
                server.log_file.close()
        for ns in reversed(self.made):
            try:
                for pid in self.pids(ns):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                _ip("netns", "del", ns)
            except RuntimeError:
                pass
        self.made = []
        self.started = []


# -- balancer configurations ---------------------------------------------------
#
# Both retry an idempotent request on the next host after a connection
# error or a timeout, never a POST already sent; both keep connections to
# the hosts; a host that fails is left alone for a few seconds (nginx's
# max_fails/fail_timeout, HAProxy's health checks on the --ping-path).
# /pinned/ goes to host 0 while it is up, to the others as backups: it
# puts a request on a chosen host under the same rules as the rest.

# The upstream read timeout (2 s) is shorter than the hosts' --timeout
# (3 s), so the balancer gives up on a hung host before fastfcgi kills it.
NGINX_BALANCER_CONF = NGINX_CONF.split("    upstream app_keepalive")[0] + """\
    upstream hosts {{
{servers}
        keepalive 16;
    }}
    upstream pinned {{
{pinned}
        keepalive 16;
    }}
    server {{
        listen {listen};
        fastcgi_keep_conn on;
        fastcgi_connect_timeout 1s;
        fastcgi_read_timeout 2s;
        fastcgi_next_upstream error timeout;
        location / {{
            {params}
            fastcgi_pass hosts;
        }}
        location /pinned/ {{
            {params}
            fastcgi_pass pinned;
        }}
    }}
}}
"""


def _servers(line, addresses, pinned=False):
    """The server lines of an upstream or backend, ``line`` formatted with
    the host's index ``i``, ``address`` and ``backup``; ``pinned``: every
    host but the first is a backup."""
    return "\n".join(line.format(i=i, address=address, backup=" backup" if pinned and i else "")
                     for i, address in enumerate(addresses))


def nginx_conf(tmp, addresses, listen=BALANCER_ADDRESS):
    line = "        server {address} max_fails=1 fail_timeout=3s{backup};"
    return NGINX_BALANCER_CONF.format(
        tmp=tmp, listen=listen, params=NGINX_PARAMS,
        servers=_servers(line, addresses), pinned=_servers(line, addresses, pinned=True))


# frontends.HAPROXY_CONF's global and defaults sections and its fcgi-app
# (keep-conn, path-info), with shorter timeouts and three servers.  L7
# retries (response-timeout, empty-response) go to another server
# (redispatch on every retry), for GET and HEAD only: a POST is retried
# only when it could not be sent (conn-failure).  The health check asks
# the --ping-path over FastCGI (the server's proto).
HAPROXY_BALANCER_CONF = HAPROXY_CONF.split("    timeout connect")[0] + """\
    timeout connect 1s
    timeout client 30s
    timeout server 2s
    timeout queue 5s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
fcgi-app""" + HAPROXY_CONF.split("fcgi-app", 1)[1].split("backend app")[0] + """\
{backends}frontend http
    bind {listen}
    use_backend pinned if {{ path_beg /pinned/ }}
    default_backend hosts
"""

HAPROXY_BACKEND = """\
backend {name}
    use-fcgi-app app
    option httpchk GET /ping
    http-request disable-l7-retry if !METH_GET
    default-server proto fcgi check inter 500ms fall 2 rise 2
{servers}
"""


def haproxy_conf(tmp, addresses, listen=BALANCER_ADDRESS, log_requests=True):
    """``log_requests=False`` (bench.py) logs failed requests only, as
    nginx's ``access_log off`` logs none: a log line per request would be
    part of what is measured."""
    line = "    server h{i} {address}{backup}"
    backends = "".join(HAPROXY_BACKEND.format(name=name, servers=_servers(line, addresses, pinned))
                       for name, pinned in (("hosts", False), ("pinned", True)))
    conf = HAPROXY_BALANCER_CONF.format(tmp=tmp, listen=listen, backends=backends)
    if not log_requests:
        conf = conf.replace("    option httplog\n", "    option httplog\n    option dontlog-normal\n", 1)
    return conf


# -- load ----------------------------------------------------------------------

Result = collections.namedtuple("Result", "method status seconds error host started")


class Load(object):
    """Steady HTTP/1.1 load on the balancer from its namespace: ``clients``
    threads, each on a kept connection, send GET / (every ``post_every``-th
    request a POST whose body must come back) with a ``pause`` between,
    until ``stop``, ``limit`` requests in all, or ``seconds``.  A failure is
    anything but a 200 with the right body, as the client sees it."""

    def __init__(self, cluster, clients=4, post_every=0, pause=0.005, limit=20000, seconds=45):
        self.cluster = cluster
        self.post_every = post_every
        self.pause = pause
        self.limit = limit
        self.deadline = time.monotonic() + seconds
        self.results = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                        for n in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self, n):
        enter_netns(self.cluster.balancer)
        conn = None
        sent = 0
        while (not self.stopped.is_set() and len(self.results) < self.limit
               and time.monotonic() < self.deadline):
            sent += 1
            post = self.post_every and sent % self.post_every == 0
            body = b"%d-%d;" % (n, sent) * 100 if post else None
            started = time.monotonic()
            status = host = error = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", HTTP_PORT, timeout=30)
                conn.request("POST" if post else "GET", "/", body=body)
                resp = conn.getresponse()
                status, data = resp.status, resp.read()
                if resp.will_close:
                    conn.close()
                    conn = None
                first, _, rest = data.partition(b"\n")
                if status != 200:
                    error = "HTTP %d: %r" % (status, data[:80])
                elif rest != (body or b""):
                    error = "the body did not come back"
                else:
                    host = first.split()[0].decode()
            except (OSError, http.client.HTTPException) as exc:
                error = repr(exc)
                if conn is not None:
                    conn.close()
                conn = None
            self.results.append(Result("POST" if post else "GET", status,
                                       time.monotonic() - started, error, host, started))
            time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def stop(self):
        """Stop the clients; returns every result."""
        self.stopped.set()
        for thread in self.threads:
            thread.join(35)
        return self.results

    def served_by(self, host, since=0.0):
        """Whether ``host`` answered a request started after ``since``."""
        return any(r.host == host and r.started > since for r in list(self.results))


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def report(label, results):
    """Print and return requests, failures, p50/p99/max latency (ms) and the
    first errors: the figures for the issue's closing note."""
    failed = [r for r in results if r.error]
    latencies = [r.seconds for r in results]
    line = ("%s: %d requests (%d POST), %d failed, p50 %.1f ms, p99 %.1f ms, max %.1f ms"
            % (label, len(results), sum(r.method == "POST" for r in results), len(failed),
               1000 * percentile(latencies, 0.5), 1000 * percentile(latencies, 0.99),
               1000 * max(latencies or [0])))
    print("\n" + line)
    for r in failed[:5]:
        print("    failed %s after %.0f ms: %s" % (r.method, 1000 * r.seconds, r.error))
    return failed
