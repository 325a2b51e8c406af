"""Every web server fastfcgi runs behind, as a private process: its own
config in a temporary directory, a free loopback port, run in the foreground
and stopped by PID.  servers.Nginx is the model; the HTTP client and the stop
logic are its own, shared rather than copied.

    Lighttpd      mod_fastcgi to a running fastfcgi (host/port or socket),
                  spawning it (bin-path), or behind a FastCGI authorizer
    ApacheProxy   mod_proxy_fcgi: TCP, enablereuse=on, or a unix socket
    ApacheFcgid   mod_fcgid, which spawns the application itself
    Caddy         reverse_proxy with the fastcgi transport
    H2O           fastcgi.connect
    HAProxy       fcgi-app with option keep-conn (HAProxy 2.1+ speaks FastCGI)
    CgiFcgi       libfcgi's cgi-fcgi: one process per request, CGI in and out
    SpawnFcgi     spawn-fcgi starting fastfcgi on a socket it bound
    NginxFrontend servers.Nginx, with the streaming read the others have

Each HTTP server also serves HTTPS on ``tls_port`` with a self-signed
certificate, where the openssl command (and the server's TLS module) is
there: the params over TLS are part of what the tests document.

Where a web server starts fastfcgi itself it runs a SpawnedApp script, which
records the PID of every process so that a test can stop, by PID, whatever
the web server left behind.
"""

import atexit
import contextlib
import http.client
import os
import pwd
import select
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile

from servers import ROOT, TESTS, Nginx, accepts, exchange, free_port, wait_until

APACHE_MODULES = "/usr/lib/apache2/modules"


def find_binary(name, *candidates):
    """The path of a web server's binary, or None when it is not installed
    (sbin directories are often not on a user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    return None


def _lines(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


_CERTIFICATE = []


def tls_certificate():
    """(certificate, key) files of a self-signed certificate for the TLS
    listeners, made once with the openssl command; None without it."""
    if not _CERTIFICATE:
        openssl = find_binary("openssl", "/usr/bin/openssl")
        made = None
        if openssl:
            where = tempfile.mkdtemp(prefix="fastfcgi-tls-")
            atexit.register(shutil.rmtree, where, True)
            cert, key = os.path.join(where, "cert.pem"), os.path.join(where, "key.pem")
            if subprocess.call([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                                "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout", key,
                                "-out", cert], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) == 0:
                made = (cert, key)
        _CERTIFICATE.append(made)
    return _CERTIFICATE[0]


class WebServer(object):
    """A web server process on 127.0.0.1:``port``, and HTTPS on
    ``tls_port`` where it can (None where not), with its files in ``tmp``
    (its error log is ``tmp``/error.log).  Subclasses write the config and
    call ``start``."""

    name = "web server"
    tls = True              # whether the subclass configures tls_port
    # The same client and the same stop as servers.Nginx.
    request = Nginx.request
    error_log = Nginx.error_log
    stop = Nginx.stop

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="fastfcgi-%s-" % self.name.split()[0].lower())
        self.port = free_port()
        self.certificate = tls_certificate() if self.tls else None
        self.tls_port = free_port() if self.certificate else None
        self.proc = None

    def path(self, name):
        return os.path.join(self.tmp, name)

    def write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    def start(self, cmd, env=None):
        """Run ``cmd`` (its output goes to console.log) until its ports
        accept connections; on failure stop it and raise with its logs."""
        with open(self.path("console.log"), "w") as console:
            self.proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self.tmp)
        ports = [p for p in (self.port, self.tls_port) if p]
        if not wait_until(lambda: all(accepts("127.0.0.1:%d" % p) for p in ports)
                          or self.proc.poll() is not None) or self.proc.poll() is not None:
            logs = self.logs()
            self.stop()
            raise RuntimeError("%s did not start (%s):\n%s" % (self.name, cmd, logs))
        return self

    def logs(self):
        return _lines(self.path("console.log")) + self.error_log()

    def tls_request(self, method, path, body=None, headers=None, timeout=60):
        """``request`` over HTTPS to ``tls_port`` (the certificate is not
        checked: it is our own)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return exchange(http.client.HTTPSConnection("127.0.0.1", self.tls_port,
                                                    timeout=timeout, context=context),
                        method, path, body, headers)

    @contextlib.contextmanager
    def stream(self, path, timeout=10):
        """GET ``path`` and yield the response unread, to be read piece by
        piece; a read waits at most ``timeout`` seconds."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            yield conn.getresponse()
        finally:
            conn.close()


class NginxFrontend(Nginx):
    """servers.Nginx (its config has /stream/ unbuffered), with the
    streaming read of the other front ends."""

    stream = WebServer.stream
    tls_port = None


# -- fastfcgi started by the web server --------------------------------------

class SpawnedApp(object):
    """fastfcgi as a web server starts it: a shell script (lighttpd's
    bin-path, mod_fcgid's script, spawn-fcgi's command) that runs this
    interpreter on the project, serving the listening socket it is given on
    fd 0.  The core comes from FASTFCGI_PURE, which each web server passes
    its own way.  Each process appends its PID to ``pids``, and its log to
    ``log``."""

    def __init__(self, tmp, app="dispatch:app"):
        self.tmp = tmp
        self.script = os.path.join(tmp, "app.sh")
        self.log_path = os.path.join(tmp, "app.log")
        self.pids_path = os.path.join(tmp, "app.pids")
        # Marks our processes in /proc/PID/environ, against PID reuse.
        self.tag = "%s:%d" % (tmp, os.getpid())
        for path in (self.log_path, self.pids_path):
            open(path, "w").close()
            os.chmod(path, 0o666)     # the web server may run it as another user
        q = shlex.quote
        with open(self.script, "w") as f:
            f.write("#!/bin/sh\n"
                    "# Started by a web server with a listening socket on fd 0.\n"
                    "echo $$ >> %s\n" % q(self.pids_path) +
                    "FASTFCGI_TEST_SPAWN=%s; export FASTFCGI_TEST_SPAWN\n" % q(self.tag) +
                    "PYTHONPATH=%s; export PYTHONPATH\n" % q(os.pathsep.join([TESTS, ROOT])) +
                    "cd %s || exit 1\n" % q(TESTS) +
                    "exec %s -c 'import sys, fastfcgi_py; sys.exit(fastfcgi_py.main())' %s "
                    "2>> %s\n" % (q(sys.executable), q(app), q(self.log_path)))
        os.chmod(self.script, 0o755)

    def log(self):
        return _lines(self.log_path)

    def pids(self):
        return [int(line) for line in _lines(self.pids_path).split() if line.isdigit()]

    def serving(self):
        """The start-up lines of the processes started so far."""
        return [line for line in self.log().splitlines() if " serving " in line]

    def wait_ready(self, core_id, count=1, timeout=15):
        """Wait for ``count`` processes to serve, and check they all run the
        core ``core_id``."""
        if not wait_until(lambda: len(self.serving()) >= count, timeout):
            raise RuntimeError("fastfcgi did not start %d time(s):\n%s" % (count, self.log()))
        want = "compiled core" if core_id == "c" else "pure core"
        assert all(want in line for line in self.serving()), self.log()
        return self

    def _ours(self, pid):
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                return ("FASTFCGI_TEST_SPAWN=" + self.tag).encode() in f.read().split(b"\0")
        except OSError:
            return False

    def alive(self):
        return [pid for pid in self.pids() if self._ours(pid)]

    def stop(self, grace=10, timeout=10):
        """Once the web server is stopped: wait ``grace`` seconds for the
        processes it started to exit (it tells them to), then TERM those left,
        KILL them after ``timeout``.  Returns the PIDs that had to be stopped
        here."""
        wait_until(lambda: not self.alive(), grace)
        left = self.alive()
        for pid in left:
            os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not self.alive(), timeout):
            for pid in self.alive():
                os.kill(pid, signal.SIGKILL)
        return left


# -- lighttpd ----------------------------------------------------------------

LIGHTTPD_BIN = find_binary("lighttpd", "/usr/sbin/lighttpd")


def _lighttpd_value(value):
    if isinstance(value, bool):
        return '"enable"' if value else '"disable"'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "(" + ", ".join('"%s" => %s' % (k, _lighttpd_value(v))
                               for k, v in value.items()) + ")"
    return '"%s"' % value


def lighttpd_backend(address, **options):
    """A fastcgi.server host entry for a fastfcgi at ``address`` (HOST:PORT
    or unix:/PATH), mounted at /.  lighttpd checks that a file exists under
    the document root unless check-local is disabled, and splits the first
    path segment off into SCRIPT_NAME unless fix-root-scriptname is on."""
    if address.startswith("unix:"):
        entry = {"socket": address[5:]}
    else:
        host, port = address.rsplit(":", 1)
        entry = {"host": host, "port": int(port)}
    entry.update({"check-local": False, "fix-root-scriptname": True})
    entry.update(options)
    return entry


LIGHTTPD_CONF = """
server.document-root = "{tmp}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{tmp}/error.log"
server.modules += ("mod_fastcgi")
# Send the application's output on as it comes (the default, 0, buffers the
# whole response first).
server.stream-response-body = 2
fastcgi.server = ("/" => {hosts})
{tls}
"""

LIGHTTPD_TLS = """
server.modules += ("mod_openssl")
$SERVER["socket"] == "127.0.0.1:{tls_port}" {{
    ssl.engine = "enable"
    ssl.pemfile = "{cert}"
    ssl.privkey = "{key}"
}}
"""


class Lighttpd(WebServer):
    """lighttpd with mod_fastcgi: ``hosts`` is {label: fastcgi.server host
    entry}, all for the prefix "/" (see lighttpd_backend)."""

    name = "lighttpd"
    # Debian ships lighttpd's TLS in its own package (lighttpd-mod-openssl).
    tls = os.path.exists("/usr/lib/lighttpd/mod_openssl.so")

    def __init__(self, hosts):
        WebServer.__init__(self)
        tls = ""
        if self.tls_port:
            tls = LIGHTTPD_TLS.format(tls_port=self.tls_port, cert=self.certificate[0],
                                      key=self.certificate[1])
        self.conf = LIGHTTPD_CONF.format(tmp=self.tmp, port=self.port,
                                         hosts=_lighttpd_value(hosts), tls=tls)
        self.start([LIGHTTPD_BIN, "-D", "-f", self.write("lighttpd.conf", self.conf)])


# -- Apache httpd ------------------------------------------------------------

APACHE_BIN = find_binary("apache2", "/usr/sbin/apache2")

APACHE_CONF = """
ServerRoot "{tmp}"
Listen 127.0.0.1:{port}
ServerName 127.0.0.1
PidFile "{tmp}/httpd.pid"
ErrorLog "{tmp}/error.log"
LogLevel warn
DefaultRuntimeDir "{tmp}"
LoadModule mpm_event_module {modules}/mod_mpm_event.so
# Without an authorization module Apache answers 500 ("couldn't check user").
LoadModule authz_core_module {modules}/mod_authz_core.so
# One child process, with threads enough for the concurrent tests.
StartServers 1
ServerLimit 1
ThreadsPerChild 32
MaxRequestWorkers 32
MinSpareThreads 1
MaxSpareThreads 64
{user}
{site}
{tls}
"""

APACHE_TLS = """
LoadModule ssl_module {modules}/mod_ssl.so
Listen 127.0.0.1:{tls_port}
<VirtualHost 127.0.0.1:{tls_port}>
    SSLEngine on
    SSLCertificateFile "{cert}"
    SSLCertificateKeyFile "{key}"
</VirtualHost>
"""

APACHE_PROXY_SITE = """
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_fcgi_module {modules}/mod_proxy_fcgi.so
# flushpackets=on passes each piece of the response on as it comes (by
# default mod_proxy_fcgi buffers it).
ProxyPass "/" "{url}" flushpackets=on{reuse}
# mod_proxy_fcgi sends the whole path as SCRIPT_NAME and no PATH_INFO
# (ap_expr's REQUEST_URI is the decoded path, without the query string).
ProxyFCGISetEnvIf "true" PATH_INFO "%{{REQUEST_URI}}"
ProxyFCGISetEnvIf "true" SCRIPT_NAME ""
"""

APACHE_FCGID_SITE = """
LoadModule alias_module {modules}/mod_alias.so
LoadModule fcgid_module {modules}/mod_fcgid.so
FcgidIPCDir "{tmp}/fcgid"
FcgidProcessTableFile "{tmp}/fcgid.shm"
FcgidInitialEnv FASTFCGI_PURE {pure}
# mod_fcgid sends one request at a time to each process it started, and
# starts more of them up to these limits.
FcgidMaxProcesses 8
FcgidMaxProcessesPerClass 4
# Pass output on at once (the default buffers 64 KiB of it), and accept
# bodies over the default limit of 128 KiB.
FcgidOutputBufferSize 0
FcgidMaxRequestLen 67108864
ScriptAlias / "{script}/"
<Location "/">
    SetHandler fcgid-script
    Options +ExecCGI
</Location>
"""


def _apache_user():
    """User and Group lines: as root Apache must switch to another user
    (it refuses to serve as root)."""
    if os.geteuid() != 0:
        return ""
    import grp
    entry = pwd.getpwnam("nobody")
    return 'User nobody\nGroup "%s"' % grp.getgrgid(entry.pw_gid).gr_name


class _Apache(WebServer):
    """Apache 2.4 (mpm_event), loading only the modules it needs."""

    name = "apache2"
    modules = ("mod_mpm_event.so", "mod_authz_core.so", "mod_ssl.so")

    def run(self, site, prefix=()):
        os.chmod(self.tmp, 0o755)     # for the User Apache switches to
        tls = ""
        if self.tls_port:
            tls = APACHE_TLS.format(modules=APACHE_MODULES, tls_port=self.tls_port,
                                    cert=self.certificate[0], key=self.certificate[1])
        self.conf = APACHE_CONF.format(tmp=self.tmp, port=self.port, modules=APACHE_MODULES,
                                       user=_apache_user(), site=site, tls=tls)
        self.start(list(prefix) + [APACHE_BIN, "-DFOREGROUND", "-f",
                                   self.write("httpd.conf", self.conf)])


class ApacheProxy(_Apache):
    """Apache with mod_proxy_fcgi in front of ``backend`` (HOST:PORT or
    unix:/PATH); ``reuse`` keeps backend connections open (enablereuse=on)."""

    modules = _Apache.modules + ("mod_proxy.so", "mod_proxy_fcgi.so")

    def __init__(self, backend, reuse=False):
        WebServer.__init__(self)
        url = ("unix:%s|fcgi://localhost/" % backend[5:] if backend.startswith("unix:")
               else "fcgi://%s/" % backend)
        self.run(APACHE_PROXY_SITE.format(modules=APACHE_MODULES, url=url,
                                          reuse=" enablereuse=on" if reuse else ""))


def _run_as(uid, gid, cmd, **kw):
    def demote():
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    try:
        return subprocess.call(cmd, preexec_fn=demote, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, **kw) == 0
    except OSError:
        return False


_FCGID_MODE = []


def fcgid_mode():
    """How mod_fcgid can start this interpreter: ("plain", "") when Apache
    runs as us or its User can run it; ("userns", why) when only we can (as
    root with the interpreter in /root, say): then Apache runs in a user
    namespace in which it is already unprivileged, so it switches to no
    User and what it starts keeps our credentials; ("skip", why) when
    neither works."""
    if _FCGID_MODE:
        return _FCGID_MODE[0]
    mode = ("plain", "")
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        check = [sys.executable, "-c", "import fastfcgi_py, dispatch"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
        if not _run_as(nobody.pw_uid, nobody.pw_gid, check, cwd="/", env=env):
            why = "Apache's User nobody cannot run %s" % sys.executable
            unshare = find_binary("unshare", "/usr/bin/unshare")
            if unshare and subprocess.call(
                    [unshare] + _userns_args(nobody) + ["true"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0:
                mode = ("userns", why)
            else:
                mode = ("skip", why + ", and no user namespace can be made (unshare)")
    _FCGID_MODE.append(mode)
    return mode


def _userns_args(entry):
    return ["--user", "--map-user=%d" % entry.pw_uid, "--map-group=%d" % entry.pw_gid]


class ApacheFcgid(_Apache):
    """Apache with mod_fcgid starting ``spawned`` (a SpawnedApp) itself, on
    the core ``core_id``, as it needs more processes."""

    name = "apache2 mod_fcgid"
    modules = _Apache.modules + ("mod_alias.so", "mod_fcgid.so")

    def __init__(self, spawned, core_id):
        WebServer.__init__(self)
        prefix = []
        if fcgid_mode()[0] == "userns":
            prefix = [find_binary("unshare", "/usr/bin/unshare")] + \
                _userns_args(pwd.getpwnam("nobody"))
        self.run(APACHE_FCGID_SITE.format(modules=APACHE_MODULES, tmp=self.tmp,
                                          pure="1" if core_id == "py" else "0",
                                          script=spawned.script), prefix)


def apache_missing(server_class):
    """Why ``server_class`` cannot run here, or None."""
    if APACHE_BIN is None:
        return "apache2 is not installed"
    for module in server_class.modules:
        if not os.path.exists(os.path.join(APACHE_MODULES, module)):
            return "%s is not installed" % module
    return None


# -- Caddy -------------------------------------------------------------------

CADDY_BIN = find_binary("caddy", "/usr/bin/caddy")

CADDYFILE = """
{
	admin off
	auto_https off
}
"""

CADDY_SITE = """
{address} {{
	bind 127.0.0.1
	{tls}
	reverse_proxy {backend} {{
		# Pass output on at once (by default it is buffered).
		flush_interval -1
		transport fastcgi
	}}
}}
"""


class Caddy(WebServer):
    """Caddy 2: reverse_proxy with the fastcgi transport, no admin endpoint,
    no automatic HTTPS (the TLS site has our certificate); its log (stderr)
    is the error log."""

    name = "caddy"

    def __init__(self, backend):
        WebServer.__init__(self)
        if backend.startswith("unix:"):
            backend = "unix/" + backend[5:]
        self.conf = CADDYFILE + CADDY_SITE.format(
            address="http://:%d" % self.port, tls="", backend=backend)
        if self.tls_port:
            self.conf += CADDY_SITE.format(
                address="https://:%d" % self.tls_port, backend=backend,
                tls="tls %s %s" % self.certificate)
        # Caddy keeps state under $HOME and the XDG directories.
        env = dict(os.environ, HOME=self.tmp, XDG_CONFIG_HOME=self.path("config"),
                   XDG_DATA_HOME=self.path("data"))
        self.start([CADDY_BIN, "run", "--config", self.write("Caddyfile", self.conf),
                    "--adapter", "caddyfile"], env=env)

    def error_log(self):
        return _lines(self.path("console.log"))


# -- H2O ---------------------------------------------------------------------

H2O_BIN = find_binary("h2o", "/usr/bin/h2o", "/usr/sbin/h2o")

H2O_HOST = """
  "127.0.0.1:{port}":
    listen:
      host: 127.0.0.1
      port: {port}{ssl}
    paths:
      /:
        fastcgi.connect:
{connect}
"""

H2O_SSL = """
      ssl:
        certificate-file: {cert}
        key-file: {key}"""


class H2O(WebServer):
    """H2O with fastcgi.connect (as root it serves as nobody)."""

    name = "h2o"

    def __init__(self, backend):
        WebServer.__init__(self)
        if backend.startswith("unix:"):
            connect = "          port: %s\n          type: unix" % backend[5:]
        else:
            host, port = backend.rsplit(":", 1)
            connect = "          host: %s\n          port: %s\n          type: tcp" % (host, port)
        self.conf = "error-log: %s/error.log\nhosts:" % self.tmp
        self.conf += H2O_HOST.format(port=self.port, ssl="", connect=connect)
        if self.tls_port:
            ssl = H2O_SSL.format(cert=self.certificate[0], key=self.certificate[1])
            self.conf += H2O_HOST.format(port=self.tls_port, ssl=ssl, connect=connect)
        self.start([H2O_BIN, "-c", self.write("h2o.conf", self.conf)])


# -- cgi-fcgi ----------------------------------------------------------------

CGI_FCGI_BIN = find_binary("cgi-fcgi", "/usr/bin/cgi-fcgi")


def parse_cgi_head(head):
    """(status, headers dict) of a CGI response head (RFC 3875 6.3)."""
    status, headers = 200, {}
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name:
            headers[name] = value.strip()
    return status, headers


class _PipeResponse(object):
    """cgi-fcgi's output after the head, read with a timeout per read."""

    def __init__(self, proc, timeout):
        self.proc = proc
        self.timeout = timeout
        self.buffer = b""
        head = self._until(b"\n\n", b"\r\n\r\n")
        self.status, self.headers = parse_cgi_head(head)

    def _fill(self):
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            raise TimeoutError("cgi-fcgi sent nothing for %s s" % self.timeout)
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        self.buffer += chunk
        return chunk

    def _until(self, *separators):
        while True:
            for sep in separators:
                at = self.buffer.find(sep)
                if at >= 0:
                    head, self.buffer = self.buffer[:at], self.buffer[at + len(sep):]
                    return head
            if not self._fill():
                head, self.buffer = self.buffer, b""
                return head

    def read(self, size=None):
        while size is None or len(self.buffer) < size:
            if not self._fill():
                break
        if size is None:
            size = len(self.buffer)
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


class CgiFcgi(object):
    """libfcgi's cgi-fcgi as the front end of fastfcgi at ``backend``: each
    request is one ``cgi-fcgi -bind -connect`` process, given the CGI
    meta-variables (RFC 3875) as its whole environment and the body on stdin;
    it prints the CGI response.  It serves one request, so concurrency means
    parallel processes."""

    name = "cgi-fcgi"
    tls_port = None

    def __init__(self, backend):
        self.backend = backend[5:] if backend.startswith("unix:") else backend

    def environ(self, method, path, body=b"", headers=None):
        from urllib.parse import unquote
        target, _, query = path.partition("?")
        env = {"GATEWAY_INTERFACE": "CGI/1.1", "SERVER_SOFTWARE": "cgi-fcgi",
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
               "REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": method, "REQUEST_URI": path,
               "SCRIPT_NAME": "", "PATH_INFO": unquote(target, "latin-1"), "QUERY_STRING": query}
        if body:
            env["CONTENT_LENGTH"] = str(len(body))
        for name, value in (headers or {}).items():
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                env[key] = value
            else:
                env["HTTP_" + key] = value
        return env

    def _popen(self, method, path, body, headers):
        return subprocess.Popen([CGI_FCGI_BIN, "-bind", "-connect", self.backend],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                env=self.environ(method, path, body, headers))

    def request(self, method, path, body=None, headers=None, timeout=60):
        """One request; returns (status, headers dict, body bytes)."""
        body = body or b""
        proc = self._popen(method, path, body, headers)
        out, err = proc.communicate(body, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError("cgi-fcgi exited %d: %s" % (proc.returncode, err))
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, rest = out.partition(sep)
        status, headers = parse_cgi_head(head)
        return status, headers, rest

    @contextlib.contextmanager
    def stream(self, path, timeout=10):
        proc = self._popen("GET", path, b"", None)
        proc.stdin.close()
        try:
            yield _PipeResponse(proc, timeout)
        finally:
            proc.stdout.close()
            proc.stderr.close()
            if proc.poll() is None:
                proc.terminate()
            proc.wait()

    def error_log(self):
        return ""

    def stop(self):
        pass


# -- HAProxy -----------------------------------------------------------------

HAPROXY_BIN = find_binary("haproxy", "/usr/sbin/haproxy")

# HAProxy's own FastCGI client (fcgi-app): kept connections to the
# application, the next request sent on one as soon as the previous
# response's body is in (before END_REQUEST).  path-info splits the path as
# the README wants it: SCRIPT_NAME "", PATH_INFO the whole path.  Logs go
# to stdout (console.log).  "timeout server" is short enough that a request
# the application never answers shows up as a 504 inside a test.
HAPROXY_CONF = """
global
    log stdout format raw local0 info
    maxconn 1000
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 60s
    timeout server 30s
fcgi-app app
    docroot {tmp}
    path-info ^()(/.*)$
    option keep-conn
    log-stderr global
backend app
    use-fcgi-app app
    server app1 {backend} proto fcgi
frontend http
    bind 127.0.0.1:{port}{tls}
    default_backend app
"""


class HAProxy(WebServer):
    """HAProxy 2.6 in front of fastfcgi over FastCGI (fcgi-app, keep-conn);
    HTTPS with our certificate where it has one."""

    name = "haproxy"

    def __init__(self, backend):
        WebServer.__init__(self)
        backend = backend[5:] if backend.startswith("unix:") else backend
        tls = ""
        if self.tls_port:
            # HAProxy wants the certificate and its key in one file.
            cert, key = self.certificate
            pem = self.write("site.pem", _lines(cert) + _lines(key))
            tls = "\n    bind 127.0.0.1:%d ssl crt %s" % (self.tls_port, pem)
        self.conf = HAPROXY_CONF.format(tmp=self.tmp, port=self.port, tls=tls, backend=backend)
        self.start([HAPROXY_BIN, "-db", "-f", self.write("haproxy.cfg", self.conf)])

    def error_log(self):
        return _lines(self.path("console.log"))


# -- spawn-fcgi --------------------------------------------------------------

SPAWN_FCGI_BIN = find_binary("spawn-fcgi", "/usr/bin/spawn-fcgi")


class SpawnFcgi(object):
    """spawn-fcgi binding ``address`` (127.0.0.1, a free port) and running
    ``spawned`` (a SpawnedApp) on it in the foreground (-n: it execs the
    command, so its PID is fastfcgi's).  The core comes from its
    environment."""

    def __init__(self, spawned, core_id):
        self.spawned = spawned
        self.address = "127.0.0.1:%d" % free_port()
        env = dict(os.environ, FASTFCGI_PURE="1" if core_id == "py" else "0")
        host, port = self.address.split(":")
        self.proc = subprocess.Popen([SPAWN_FCGI_BIN, "-a", host, "-p", port, "-n", "--",
                                      spawned.script], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            spawned.wait_ready(core_id)
            assert spawned.pids() == [self.proc.pid], spawned.pids()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
