#!/usr/bin/env python3
"""Benchmarks for fastfcgi, each against its peers in the same run.

Usage::

    python bench.py core [--repeat N] [--min-time SECONDS] [--json]
    python bench.py e2e [--repeat N] [--duration SECONDS] [--conns 16,64]
                        [--transports tcp,unix] [--backends LIST] [--json] ...
    python bench.py e2e --hosts N [--balancers nginx,haproxy] [--repeat N] ...
    python bench.py instructions [--requests N] [--cores LIST] [--modes LIST]

``core`` times the protocol core alone, on real nginx input from
``tests/corpus``, with every contender this interpreter has:

* the compiled core (``import fastfcgi``; skipped with a note if not built),
* the pure core (``fastfcgi_py``),
* flup (``flup.server.fcgi_base``, if installed): the code its server runs
  per record, minus the ``select()`` it does before each one.

Parsing a request is what one new connection costs the application: a new
``Parser()``, ``feed()`` of the whole stream nginx sent, and ``next_event()``
until the empty STDIN record, keeping the params dict (latin-1 str, ready to
be a WSGI environ) and joining the body.  For flup it is ``Record.read`` on
an in-memory socket for each record, ``decode_pair`` into the same dict
(as ``Connection._do_params``), and the STDIN contents joined (as its
``InputStream``).  Writing is ``Writer.finish(1, b"Hello, world!")`` on one
``Writer``: STDOUT, the empty STDOUT and END_REQUEST in one bytes; for flup
the same three ``Record.write`` calls into an in-memory socket.  Before
timing, every contender's result is checked to be identical.

Note that flup formats a debug message for every record it reads or
writes unless Python runs with ``-O``; that is part of what its users run,
so it is part of what is measured.

Each sample runs one contender for about ``--min-time`` seconds (the
iteration count is calibrated per contender; ``timeit``'s defaults, so the
garbage collector is off during a sample).  Every repeat runs all samples,
interleaved, so drift in machine speed hits all contenders alike; the
table shows medians over the repeats, and ratios of those medians.

``e2e`` measures whole requests on loopback: wrk (``-t 2 --latency``, HTTP
keep-alive) -> nginx (one process: ``master_process off``, ``access_log
off``, a private config in a temp dir) -> a hello-world WSGI application
(examples/hello.py's, 13-byte body) on one worker of each contender:

* ``compiled``: ``fastfcgi_py.main()`` picking the compiled core,
* ``pure``: the same with ``FASTFCGI_PURE=1`` (the start-up log line must
  name the core asked for),
* ``uwsgi``: ``uwsgi --plugin python3 --fastcgi-socket ADDR --master
  --processes 1 --disable-logging`` (Debian's uwsgi-plugin-python3),
* ``flup``: ``flup.server.fcgi_fork.WSGIServer(app, bindAddress=...,
  minSpare=1, maxSpare=1, maxChildren=1)``,

each over TCP and over a unix socket, at each ``--conns``; and the two
fastfcgi cores again behind an upstream ``keepalive`` pool with
``fastcgi_keep_conn on`` (uWSGI closes every FastCGI connection, so that
row is set against uWSGI's best).  Every backend runs at once, each behind
its own nginx server block; a repeat runs every backend once per scenario
(transport, connections), in an order rotated by the repeat.  The table
shows medians of req/s and of wrk's 99% latency, and the CPU time the
backend's processes and nginx spent per request; then the targets as
PASS/FAIL lines.  Exit status: 0 no target fails, 1 one fails (or a run
had errors), 2 the benchmark could not run.  ``--profile DIR`` then samples
each fastfcgi backend with py-spy under one more wrk run (wall clock, idle
included, so time spent waiting shows) and prints its hottest functions.

``e2e --hosts N`` (root) measures scale-out instead: tests/netns.py's
cluster of a balancer namespace and N host namespaces, each host
``fastfcgi --workers 1`` on the compiled core (hello world), and in the
balancer namespace nginx and HAProxy (``--balancers``) in front of the
first 1, 2 ... N hosts, each instance with the scale-out tests'
configuration on a port of its own, all running at once; wrk runs in the
balancer namespace (``ip netns exec``), at each ``--conns`` (default 16:
the upstream keepalive pools hold 16).  A repeat runs every instance once,
in an order rotated by the repeat; the table shows medians of req/s and
p99, req/s against the same balancer's with one host, the CPU time of the
hosts, the balancer and wrk, and how busy the whole machine was.  Missing
nginx, HAProxy or wrk are installed with apt-get.  Without root it says
why and exits 2.

For a fair comparison every Python backend runs on Debian's
/usr/bin/python3, the interpreter uWSGI's plugin embeds: ``e2e`` makes a
venv from it in ``.venv-bench/`` (``--system-site-packages``; pip installs
Cython and flup there), and builds the extension for it from a snapshot of
fastfcgi.pyx, fastfcgi.pxd, fastfcgi_py.py and setup.py copied into
``.venv-bench/fastfcgi-build/`` (rebuilt when they change), which is the
fastfcgi backends' PYTHONPATH.  Missing Python headers or venv support are
installed with apt-get (python3-dev, python3-venv); for nginx, wrk or uWSGI
it names the Debian package to install.

Standard library only (plus what it measures), Python 3.6+; ``e2e`` needs
Linux (it reads /proc for the CPU times).
"""

import argparse
import functools
import glob
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

CORPUS = os.path.join(HERE, "tests", "corpus")
GET_FILE = "001-get-browser.bin"
POST_FILE = "002-post-form.bin"
HELLO = b"Hello, world!"
CONTENDERS = ("compiled", "pure", "flup")


# ############################################################################
# Contenders  ################################################################
# ############################################################################


def load_contenders():
    """{name: (module or None, description)} for compiled, pure and flup."""
    found = {}
    try:
        import fastfcgi
    except ImportError as exc:
        found["compiled"] = (None, "not built (%s)" % exc)
    else:
        if fastfcgi.CORE != "compiled":     # fastfcgi.py, the pure stand-in
            found["compiled"] = (None, "not built (fastfcgi is %s)" % fastfcgi.__file__)
    if "compiled" not in found:
        found["compiled"] = (fastfcgi, "fastfcgi %s, %s" % (
            getattr(fastfcgi, "__version__", "?"), fastfcgi.__file__))
    import fastfcgi_py
    found["pure"] = (fastfcgi_py, "fastfcgi_py %s, %s" % (
        fastfcgi_py.__version__, fastfcgi_py.__file__))
    try:
        from flup.server import fcgi_base
    except ImportError as exc:
        found["flup"] = (None, "not installed (%s)" % exc)
    else:
        found["flup"] = (fcgi_base, "flup %s, %s" % (
            _distribution_version("flup"), os.path.dirname(os.path.dirname(
                fcgi_base.__file__))))
    return found


def _distribution_version(name):
    try:
        from importlib.metadata import version   # 3.8+
        return version(name)
    except Exception:
        pass
    try:
        import pkg_resources
        return pkg_resources.get_distribution(name).version
    except Exception:
        return "?"


def fastfcgi_parser(core, stream):
    """A function parsing ``stream`` with ``core``'s sans-IO Parser into
    (params, body)."""
    Parser = core.Parser
    PARAMS = core.FCGI_PARAMS
    STDIN = core.FCGI_STDIN

    def parse():
        parser = Parser()
        parser.feed(stream)
        params = None
        chunks = []
        while True:
            event = parser.next_event()
            kind = event[0]     # a valid stream gives no None and no code
            if kind == PARAMS:
                params = event[4]
            elif kind == STDIN:
                if not event[2]:
                    break
                chunks.append(event[2])
        return params, b"".join(chunks)
    return parse


class _MemorySocket(object):
    """Just enough of a socket for flup's Record: recv, send, fileno."""

    __slots__ = ("data", "pos", "sent")

    def __init__(self, data=b""):
        self.data = data
        self.pos = 0
        self.sent = []

    def recv(self, n):
        pos = self.pos
        chunk = self.data[pos:pos + n]
        self.pos = pos + len(chunk)
        return chunk

    def send(self, data):
        self.sent.append(data)
        return len(data)

    def fileno(self):   # flup formats it into its debug messages
        return -1


def flup_parser(fcgi_base, stream):
    """A function parsing ``stream`` the way flup's Connection does."""
    Record = fcgi_base.Record
    decode_pair = fcgi_base.decode_pair
    BEGIN = fcgi_base.FCGI_BEGIN_REQUEST
    PARAMS = fcgi_base.FCGI_PARAMS
    STDIN = fcgi_base.FCGI_STDIN
    begin_body = fcgi_base.FCGI_BeginRequestBody

    def parse():
        sock = _MemorySocket(stream)
        params = {}
        chunks = []
        while True:
            rec = Record()
            rec.read(sock)
            kind = rec.type
            if kind == BEGIN:
                role, flags = struct.unpack(begin_body, rec.contentData)
            elif kind == PARAMS:
                if rec.contentLength:
                    pos = 0
                    while pos < rec.contentLength:
                        pos, (name, value) = decode_pair(rec.contentData, pos)
                        params[name.decode("latin-1")] = value.decode("latin-1")
            elif kind == STDIN:
                if not rec.contentLength:
                    break
                chunks.append(rec.contentData)
        return params, b"".join(chunks)
    return parse


def flup_finisher(fcgi_base):
    """A function writing STDOUT(HELLO), its end and END_REQUEST with
    flup's Record, as its Request.run does at the end of a request."""
    Record = fcgi_base.Record
    STDOUT = fcgi_base.FCGI_STDOUT
    END = fcgi_base.FCGI_END_REQUEST
    end_body = fcgi_base.FCGI_EndRequestBody
    complete = fcgi_base.FCGI_REQUEST_COMPLETE

    def finish():
        sock = _MemorySocket()
        rec = Record(STDOUT, 1)
        rec.contentData = HELLO
        rec.contentLength = len(HELLO)
        rec.write(sock)
        Record(STDOUT, 1).write(sock)
        rec = Record(END, 1)
        rec.contentData = struct.pack(end_body, 0, complete)
        rec.contentLength = len(rec.contentData)
        rec.write(sock)
        return b"".join(sock.sent)
    return finish


# ############################################################################
# Timing  ####################################################################
# ############################################################################


class Case(object):
    """One thing to time: a callable per contender, all giving one result."""

    def __init__(self, key, title, nbytes, funcs):
        self.key = key
        self.title = title
        self.nbytes = nbytes     # input size, for MB/s; 0 for none
        self.funcs = funcs       # {contender: callable}
        self.timers = {}
        self.numbers = {}
        self.samples = dict((name, []) for name in funcs)

    def check(self):
        """Every contender must give the same result; drop those that
        fail, with a note."""
        notes = []
        reference = None
        for name in list(self.funcs):
            try:
                result = self.funcs[name]()
            except Exception as exc:
                notes.append("%s: %s failed: %r" % (self.key, name, exc))
                del self.funcs[name]
                del self.samples[name]
                continue
            if reference is None:
                reference = (name, result)
            elif result != reference[1]:
                notes.append("%s: %s gives a different result than %s"
                             % (self.key, name, reference[0]))
        return notes

    def calibrate(self, min_time):
        for name, func in self.funcs.items():
            timer = timeit.Timer(func)
            number = 1
            while True:
                elapsed = timer.timeit(number)
                if elapsed >= min_time / 10:
                    break
                number *= 10
            self.timers[name] = timer
            self.numbers[name] = max(1, int(number * min_time / elapsed))

    def sample(self):
        for name, timer in self.timers.items():
            number = self.numbers[name]
            self.samples[name].append(timer.timeit(number) / number * 1e6)

    def medians(self):
        return dict((name, statistics.median(s)) for name, s in self.samples.items())


def _ratio(medians, slow, fast):
    if slow in medians and fast in medians:
        return medians[slow] / medians[fast]
    return None


# ############################################################################
# Modes  #####################################################################
# ############################################################################


def run_core(args):
    """The ``core`` mode: parse and write timings; returns the exit code."""
    found = load_contenders()
    mods = dict((name, mod) for name, (mod, _) in found.items() if mod is not None)
    with open(os.path.join(CORPUS, GET_FILE), "rb") as f:
        get_stream = f.read()
    with open(os.path.join(CORPUS, POST_FILE), "rb") as f:
        post_stream = f.read()

    cases = []
    for key, title, stream in (
            ("parse_get", "parse GET %s (%d B)" % (GET_FILE[:3], len(get_stream)), get_stream),
            ("parse_post", "parse POST %s (%d B)" % (POST_FILE[:3], len(post_stream)),
             post_stream)):
        funcs = {}
        for name in ("compiled", "pure"):
            if name in mods:
                funcs[name] = fastfcgi_parser(mods[name], stream)
        if "flup" in mods:
            funcs["flup"] = flup_parser(mods["flup"], stream)
        cases.append(Case(key, title, len(stream), funcs))
    funcs = {}
    for name in ("compiled", "pure"):
        if name in mods:
            funcs[name] = functools.partial(mods[name].Writer().finish, 1, HELLO)
    if "flup" in mods:
        funcs["flup"] = flup_finisher(mods["flup"])
    cases.append(Case("write", "write 13 B + END_REQUEST", 0, funcs))

    notes = []
    for case in cases:
        notes.extend(case.check())
    say = sys.stderr.write if args.json else sys.stdout.write
    say(header_text(found, args))
    say("calibrating...\n")
    for case in cases:
        case.calibrate(args.min_time)
    for i in range(args.repeat):
        say("repeat %d/%d\n" % (i + 1, args.repeat))
        for case in cases:
            case.sample()

    by_key = dict((case.key, case.medians()) for case in cases)
    ratios = [
        ("compiled parse vs flup, GET", _ratio(by_key["parse_get"], "flup", "compiled")),
        ("pure parse vs flup, GET", _ratio(by_key["parse_get"], "flup", "pure")),
        ("compiled parse vs flup, POST", _ratio(by_key["parse_post"], "flup", "compiled")),
        ("pure parse vs flup, POST", _ratio(by_key["parse_post"], "flup", "pure")),
        ("compiled parse vs pure, GET", _ratio(by_key["parse_get"], "pure", "compiled")),
        ("compiled parse vs pure, POST", _ratio(by_key["parse_post"], "pure", "compiled")),
        ("compiled writer vs pure writer", _ratio(by_key["write"], "pure", "compiled")),
        ("compiled writer vs flup writer", _ratio(by_key["write"], "flup", "compiled")),
        ("pure writer vs flup writer", _ratio(by_key["write"], "flup", "pure")),
    ]
    if args.json:
        json.dump(json_report(found, args, cases, ratios, notes), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(table_text(cases, ratios, notes))
    return 1 if notes else 0


# ############################################################################
# Output  ####################################################################
# ############################################################################


def interpreter():
    return "%s %s (%s)" % (platform.python_implementation(),
                           platform.python_version(), sys.executable)


def header_text(found, args):
    lines = ["interpreter: %s" % interpreter()]
    for name in CONTENDERS:
        lines.append("%-11s  %s" % (name + ":", found[name][1]))
    lines.append("inputs:      tests/corpus/%s, tests/corpus/%s" % (GET_FILE, POST_FILE))
    lines.append("%d repeats, samples of ~%.2g s, interleaved" % (args.repeat, args.min_time))
    return "\n".join(lines) + "\n"


def table_text(cases, ratios, notes):
    width = max(len(case.title) for case in cases)
    row = "%%-%ds  %%-9s %%12s %%12s %%10s" % width
    out = ["", row % ("benchmark", "contender", "median us", "min us", "MB/s")]
    for case in cases:
        medians = case.medians()
        for name in CONTENDERS:
            if name not in medians:
                continue
            us = medians[name]
            rate = "%.1f" % (case.nbytes / us) if case.nbytes else "-"
            out.append(row % (case.title, name, "%.3f" % us,
                              "%.3f" % min(case.samples[name]), rate))
        out.append("")
    out.append("ratios of medians (how many times faster):")
    for title, value in ratios:
        out.append("  %-34s %s" % (title, "%.2fx" % value if value else "n/a"))
    for note in notes:
        out.append("NOTE: " + note)
    return "\n".join(out) + "\n"


def json_report(found, args, cases, ratios, notes):
    return {
        "mode": "core",
        "python": {"implementation": platform.python_implementation(),
                   "version": platform.python_version(),
                   "executable": sys.executable},
        "contenders": dict((name, {"available": found[name][0] is not None,
                                   "description": found[name][1]})
                           for name in CONTENDERS),
        "repeat": args.repeat,
        "min_time": args.min_time,
        "benchmarks": [{
            "key": case.key,
            "title": case.title,
            "input_bytes": case.nbytes,
            "results": dict((name, {
                "median_us": statistics.median(samples),
                "min_us": min(samples),
                "samples_us": samples,
                "iterations_per_sample": case.numbers[name],
            }) for name, samples in case.samples.items()),
        } for case in cases],
        "ratios": dict(ratios),
        "notes": notes,
    }


# ############################################################################
# e2e: setup  ################################################################
# ############################################################################
#
# wrk -> nginx -> backend, all on loopback.  Every Python backend runs on
# Debian's /usr/bin/python3, the interpreter uWSGI's python3 plugin embeds:
# a venv made from it (--system-site-packages) holds Cython and flup, and
# the fastfcgi extension is built for it from a snapshot of the sources, so
# that both fastfcgi cores come from the same files.

DEBIAN_PYTHON = "/usr/bin/python3"
# ".venv*/" in .gitignore covers it.
BENCH_VENV = os.path.join(HERE, ".venv-bench")
BUILD_SOURCES = ("fastfcgi.pyx", "fastfcgi.pxd", "fastfcgi_py.py", "fastfcgi.py", "setup.py")
E2E_BACKENDS = ("compiled", "pure", "uwsgi", "flup",
                "asgi-compiled", "asgi-pure", "uvicorn", "granian")
# uWSGI closes every FastCGI connection; uvicorn and granian are HTTP
# servers, behind nginx's proxy_pass to an upstream with keepalive only.
KEEPALIVE_BACKENDS = ("compiled", "pure", "asgi-compiled", "asgi-pure", "uvicorn", "granian")
HTTP_BACKENDS = ("uvicorn", "granian")
FASTFCGI_BACKENDS = ("compiled", "pure", "asgi-compiled", "asgi-pure")
ASGI_BACKENDS = ("asgi-compiled", "uvicorn", "granian")     # --asgi's default
TRANSPORTS = ("tcp", "unix")

# The application every backend serves: examples/hello.py's, 13-byte body.
HELLO_APP = '''\
def app(environ, start_response):
    body = b"Hello, world!"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

# --asgi: the same response from an ASGI 3 application.
ASGI_HELLO_APP = '''\
START = {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]}
BODY = {"type": "http.response.body", "body": b"Hello, world!"}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send(START)
    await send(BODY)
'''

FASTFCGI_RUNNER = "import sys, fastfcgi_py; sys.exit(fastfcgi_py.main())"

FLUP_RUNNER = '''\
import sys
from flup.server.fcgi_fork import WSGIServer
from bench_hello import app

address = sys.argv[1]
if address.startswith("unix:"):
    bind = address[5:]
else:
    host, _, port = address.rpartition(":")
    bind = (host, int(port))
WSGIServer(app, bindAddress=bind, minSpare=1, maxSpare=1, maxChildren=1).run()
'''

# Where each missing tool comes from.
DEBIAN_PACKAGES = {
    "nginx": "nginx-light (or nginx)",
    "wrk": "wrk",
    "haproxy": "haproxy",
    "uwsgi": "uwsgi-core",
    "uwsgi python3 plugin": "uwsgi-plugin-python3",
    DEBIAN_PYTHON: "python3",
}


class BenchError(Exception):
    """Something the e2e benchmark needs is missing or broke."""


def _run(cmd, say, what, cwd=None, env=None, log_path=None):
    """Run ``cmd`` to completion; BenchError with its output's tail if it
    fails."""
    say("  $ %s\n" % " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.decode("utf-8", "replace")
    if log_path:
        with open(log_path, "w") as f:
            f.write(out)
    if proc.returncode != 0:
        tail = "\n".join(out.rstrip().splitlines()[-20:])
        raise BenchError("%s failed (exit %d):\n%s" % (what, proc.returncode, tail))
    return out


def _output(cmd, env=None, cwd=None):
    """stdout+stderr of a short command, or None if it cannot run."""
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=env, cwd=cwd, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.decode("utf-8", "replace").strip()


def _apt_install(packages, say, why):
    """Install Debian packages (root only); BenchError saying what to
    install otherwise."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError("%s: install the Debian package(s) %s" % (why, " ".join(packages)))
    say("%s: installing %s with apt-get\n" % (why, " ".join(packages)))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        _run(["apt-get", "install", "-y", "-q"] + list(packages), say, "apt-get install",
             env=env)
    except BenchError:
        _run(["apt-get", "update", "-q"], say, "apt-get update", env=env)
        _run(["apt-get", "install", "-y", "-q"] + list(packages), say, "apt-get install",
             env=env)


def check_tools(backends, fronts=("nginx",), say=None):
    """{tool: path}; BenchError naming the Debian packages of missing ones.
    With ``say`` (--hosts, which runs as root), missing web servers and wrk
    are installed with apt-get first."""
    tools = tuple(fronts) + ("wrk",)
    which = lambda tool: shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    absent = [tool for tool in tools if not which(tool)]
    if say and absent:
        _apt_install([DEBIAN_PACKAGES[tool].split()[0] for tool in absent], say,
                     "missing: %s" % ", ".join(absent))
    found = {}
    missing = []
    for tool in tools:
        found[tool] = which(tool)
        if not found[tool]:
            missing.append(tool)
    if "uwsgi" in backends:
        found["uwsgi"] = shutil.which("uwsgi")
        if not found["uwsgi"]:
            missing.append("uwsgi")
        plugins = glob.glob("/usr/lib/uwsgi/plugins/python3*_plugin.so")
        if not plugins:
            missing.append("uwsgi python3 plugin")
    if not os.path.exists(DEBIAN_PYTHON):
        missing.append(DEBIAN_PYTHON)
    if missing:
        raise BenchError("missing: %s.  Install the Debian packages: apt-get install %s" % (
            ", ".join(missing), " ".join(DEBIAN_PACKAGES[m].split()[0] for m in missing)))
    return found


def _clean_env(**extra):
    """The environment for a backend: ours without Python's path settings."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONOPTIMIZE",
                 "PYTHONDEVMODE", "PYTHONTRACEMALLOC", "PYTHONMALLOC", "VIRTUAL_ENV",
                 "FASTFCGI_PURE", "FCGI_WEB_SERVER_ADDRS", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    env.update(extra)
    return env


def prepare_python(args, say):
    """Make (or reuse) the venv on Debian's python3 with Cython and flup,
    and build the fastfcgi extension for it from a snapshot of the sources.

    Returns a dict: python (the venv's interpreter), build_dir (PYTHONPATH
    for the fastfcgi backends), and what was found about them.
    """
    venv = os.path.abspath(args.venv)
    info = {"venv": venv}
    include = _output([DEBIAN_PYTHON, "-c",
                       "import sysconfig; print(sysconfig.get_paths()['include'])"])
    if not include or not os.path.exists(os.path.join(include.splitlines()[-1], "Python.h")):
        _apt_install(["python3-dev"], say, "Python.h of %s is missing" % DEBIAN_PYTHON)
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        say("making the venv %s from %s\n" % (venv, DEBIAN_PYTHON))
        cmd = [DEBIAN_PYTHON, "-m", "venv", "--system-site-packages", venv]
        try:
            _run(cmd, say, "venv")
        except BenchError:
            shutil.rmtree(venv, ignore_errors=True)
            _apt_install(["python3-venv"], say, "%s -m venv failed" % DEBIAN_PYTHON)
            _run(cmd, say, "venv")
    env = _clean_env()
    wanted = []
    packages = [("Cython>=3.0", "Cython"), ("flup", "flup.server.fcgi_fork")]
    if set(getattr(args, "backends", ())) & set(ASGI_BACKENDS + ("asgi-pure",)):
        packages += [("uvloop", "uvloop"), ("uvicorn", "uvicorn"), ("httptools", "httptools"),
                     ("granian", "granian")]
    for package, module in packages:
        if _output([python, "-c", "import %s" % module], env=env) != "":
            wanted.append(package)
    if args.profile and not os.path.exists(os.path.join(venv, "bin", "py-spy")):
        wanted.append("py-spy")
    if wanted:
        say("installing %s into %s\n" % (", ".join(wanted), venv))
        _run([python, "-m", "pip", "install", "-q"] + wanted, say, "pip install", env=env)
    info["python"] = python
    info["python_version"] = _output(
        [python, "-c", "import sys; print(sys.version.split()[0])"], env=env)
    info["cython"] = _output([python, "-c", "import Cython; print(Cython.__version__)"],
                             env=env)
    for name in ("flup", "uvicorn", "granian", "uvloop"):
        info[name] = _output([python, "-c", "from importlib.metadata import version; "
                              "print(version(%r))" % name], env=env)

    # The snapshot: sources copied once, so concurrent edits cannot make
    # the two cores differ; rebuilt only when they changed.
    digest = hashlib.sha256(info["python_version"].encode())
    contents = {}
    for name in BUILD_SOURCES:
        with open(os.path.join(HERE, name), "rb") as f:
            contents[name] = f.read()
        digest.update(name.encode() + b"\0" + contents[name])
    digest = digest.hexdigest()[:16]
    build_dir = os.path.join(venv, "fastfcgi-build")
    stamp = os.path.join(build_dir, "sources.sha256")
    built = glob.glob(os.path.join(build_dir, "fastfcgi.*.so"))
    try:
        with open(stamp) as f:
            fresh = f.read().strip() == digest and built and not args.rebuild
    except OSError:
        fresh = False
    if not fresh:
        say("building the fastfcgi extension for %s in %s\n" % (python, build_dir))
        shutil.rmtree(build_dir, ignore_errors=True)
        os.makedirs(build_dir)
        for name, data in contents.items():
            with open(os.path.join(build_dir, name), "wb") as f:
                f.write(data)
        log_path = os.path.join(build_dir, "build.log")
        # A failed build must stop the bench, never measure the pure core
        # as "compiled".
        _run([python, "setup.py", "build_ext", "--inplace"], say, "build_ext",
             cwd=build_dir, env=dict(env, FASTFCGI_REQUIRE_EXT="1"), log_path=log_path)
        if not glob.glob(os.path.join(build_dir, "fastfcgi.*.so")):
            with open(log_path) as f:
                tail = "".join(f.readlines()[-15:])
            raise BenchError("build_ext made no extension (a pure build?):\n" + tail)
        with open(stamp, "w") as f:
            f.write(digest + "\n")
    info["build_dir"] = build_dir
    info["sources_sha256"] = digest
    # What "compiled" really runs: the core the CLI picks, and the Server,
    # Parser and Writer a server on that core runs.  (Run in the build dir:
    # "-c" puts the current directory first on sys.path.)
    probe = _output([python, "-c",
                     "import os, socket, fastfcgi, fastfcgi_py\n"
                     "core = fastfcgi_py.select_core()\n"
                     "S = core.Server(core.WSGIGateway(None), socket.socket())\n"
                     "name = lambda c: c.__module__ + '.' + c.__name__\n"
                     "print(core.__name__, name(type(S)), name(S.parser_class),"
                     " name(S.writer_class),"
                     " os.path.dirname(fastfcgi.__file__) == os.path.dirname("
                     "fastfcgi_py.__file__) == os.getcwd())"],
                    env=_clean_env(PYTHONPATH=build_dir), cwd=build_dir)
    fields = (probe or "").split()
    if len(fields) != 5 or fields[0] != "fastfcgi" or fields[4] != "True":
        raise BenchError("the built extension does not import from %s as the compiled "
                         "core:\n%s" % (build_dir, probe))
    info["compiled_server"], info["compiled_parser"], info["compiled_writer"] = fields[1:4]
    return info


def _git_revision():
    rev = _output(["git", "-C", HERE, "rev-parse", "--short", "HEAD"])
    if not rev or " " in rev:
        return "?"
    dirty = _output(["git", "-C", HERE, "status", "--porcelain", "--untracked-files=no"])
    return rev + ("+dirty" if dirty else "")


# ############################################################################
# e2e: processes  ############################################################
# ############################################################################


def _free_port(taken):
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in taken:
            taken.add(port)
            return port


def _proc_stat(pid):
    """(start time, utime, stime), in ticks, of ``pid``, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command: state is field 3 of stat(5); utime 14, stime 15,
    # starttime 22.
    return int(fields[19]), int(fields[11]), int(fields[12])


def _children(pid):
    kids = []
    for path in glob.glob("/proc/%d/task/*/children" % pid):
        try:
            with open(path) as f:
                kids.extend(int(k) for k in f.read().split())
        except OSError:
            pass
    return kids


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Proc(object):
    """A process we start, its log, and its descendants (remembered with
    their start times, so a recycled PID is never signalled)."""

    def __init__(self, name, cmd, env, cwd, log_path):
        self.name = name
        self.cmd = cmd
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.popen = None
        self.known = {}       # pid -> start time

    def start(self):
        with open(self.log_path, "wb") as log_file:
            # A session of its own: a Ctrl-C on our terminal reaches us
            # only, and we stop it by its PID.
            self.popen = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env,
                                          stdin=subprocess.DEVNULL, stdout=log_file,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        stat = _proc_stat(self.popen.pid)
        if stat:
            self.known[self.popen.pid] = stat[0]
        return self

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def tree(self):
        """The live PIDs of the process and its descendants."""
        if not self.alive():
            return []
        pids = [self.popen.pid]
        i = 0
        while i < len(pids):
            pids.extend(_children(pids[i]))
            i += 1
        for pid in pids:
            stat = _proc_stat(pid)
            if stat and pid not in self.known:
                self.known[pid] = stat[0]
        return pids

    def cpu_times(self):
        """(user, system) CPU seconds used so far by the live process tree."""
        user = system = 0
        for pid in self.tree():
            stat = _proc_stat(pid)
            if stat:
                user += stat[1]
                system += stat[2]
        return user / float(_TICKS), system / float(_TICKS)

    def log_text(self, tail=None):
        try:
            with open(self.log_path, "r", errors="replace") as f:
                text = f.read()
        except OSError:
            return ""
        if tail:
            return "\n".join(text.rstrip().splitlines()[-tail:])
        return text

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Signal the process, wait for it, then SIGKILL it and any
        descendant we saw that is still there."""
        if self.popen is None:
            return
        self.tree()
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait()
        deadline = time.monotonic() + 3.0
        for pid, started in self.known.items():
            if pid == self.popen.pid:
                continue
            while time.monotonic() < deadline:
                stat = _proc_stat(pid)
                if not stat or stat[0] != started:
                    break
                time.sleep(0.05)
            stat = _proc_stat(pid)
            if stat and stat[0] == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _netns():
    """tests/netns.py: the network namespaces of the scale-out tests, which
    --hosts builds the same way (it imports no pytest)."""
    tests = os.path.join(HERE, "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import netns
    return netns


def in_namespace(netns, cmd):
    """``cmd`` run by ``ip netns exec`` in namespace ``netns`` (it execs the
    command: the PID stays the command's), or as is without one."""
    return [_netns().IP, "netns", "exec", netns] + list(cmd) if netns else list(cmd)


def _connectable(address):
    """Does ``address`` (HOST:PORT or unix:/PATH) accept a connection?"""
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = address[5:]
    else:
        host, _, port = address.rpartition(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    s.settimeout(1.0)
    try:
        s.connect(target)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _wait_ready(proc, address, timeout=20.0, netns=None):
    """Wait until ``address`` accepts connections (from inside network
    namespace ``netns`` if given: --hosts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError("%s exited (%s) before accepting connections:\n%s"
                             % (proc.name, proc.popen.returncode, proc.log_text(20)))
        if (_netns().in_netns(netns, _connectable, address) if netns
                else _connectable(address)):
            return
        time.sleep(0.05)
    raise BenchError("%s does not accept connections on %s after %gs:\n%s"
                     % (proc.name, address, timeout, proc.log_text(20)))


class Target(object):
    """One thing wrk hits: a backend on a transport, behind its own nginx
    server block (with or without a keepalive upstream pool).  With
    --hosts, one of the hosts: ``key`` names it, it runs in network
    namespace ``netns`` with fastfcgi's ``options``."""

    def __init__(self, backend, transport, keepalive, key=None, netns=None, options=()):
        self.backend = backend
        self.transport = transport
        self.keepalive = keepalive
        self.key = key or "%s-%s%s" % (backend, transport, "-keepalive" if keepalive else "")
        self.netns = netns
        self.options = list(options)
        self.access_log = None  # with --access-log: the file its lines go to
        self.address = None    # the backend's, as fastfcgi spells it
        self.port = None       # nginx's
        self.proc = None
        self.core_line = None  # fastfcgi's start-up log line

    @property
    def label(self):
        return self.backend + ("+keepalive" if self.keepalive else "")


def backend_command(target, python, tmp):
    """(argv, extra environment) starting ``target``'s backend.  With
    ``target.access_log`` set (--access-log), one that has an access log
    writes it to a file: fastfcgi to that one, uWSGI its request log to
    that one, uvicorn and granian theirs to their output (``target.log``)."""
    address = target.address
    log = target.access_log
    if target.backend in ("compiled", "pure"):
        extra = {"FASTFCGI_PURE": "1"} if target.backend == "pure" else {}
        return [python, "-c", FASTFCGI_RUNNER, "--fcgi", address] + target.options + (
            ["--access-log-file", log] if log else []) + ["bench_hello:app"], extra
    if target.backend in ("asgi-compiled", "asgi-pure"):
        extra = {"FASTFCGI_PURE": "1"} if target.backend == "asgi-pure" else {}
        return [python, "-c", FASTFCGI_RUNNER, "--fcgi", address, "--asgi", "--loop", "uvloop"
                ] + (["--access-log-file", log] if log else []) + ["bench_hello_asgi:app"], extra
    if target.backend in HTTP_BACKENDS:
        if address.startswith("unix:"):
            bind = ["--uds", address[5:]]
        else:
            host, _, port = address.rpartition(":")
            bind = ["--host", host, "--port", port]
        # Their access logs are INFO lines: the log level lets them through.
        if target.backend == "uvicorn":
            return [python, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools",
                    "--lifespan", "off", "--workers", "1"] + (
                ["--log-level", "info"] if log else
                ["--no-access-log", "--log-level", "warning"]) + bind + [
                "bench_hello_asgi:app"], {}
        return [python, "-m", "granian", "--interface", "asgi", "--loop", "uvloop",
                "--workers", "1", "--no-ws"] + (
            ["--access-log", "--log-level", "info"] if log else
            ["--no-access-log", "--log-level", "warning"]) + bind + ["bench_hello_asgi:app"], {}
    if target.backend == "uwsgi":
        socket_arg = address[5:] if address.startswith("unix:") else address
        return ["uwsgi", "--plugin", "python3", "--fastcgi-socket", socket_arg,
                "--wsgi-file", os.path.join(tmp, "bench_hello.py"), "--callable", "app",
                "--master", "--processes", "1", "--need-app", "--listen", "1024"] + (
            ["--logto", log] if log else ["--disable-logging"]), {}
    if target.backend == "flup":
        return [python, os.path.join(tmp, "bench_flup.py"), address], {}
    raise ValueError(target.backend)


def start_backend(target, python, build_dir, tmp, say):
    cmd, extra = backend_command(target, python, tmp)
    pythonpath = tmp
    if target.backend in FASTFCGI_BACKENDS:
        pythonpath = build_dir + os.pathsep + tmp
    env = _clean_env(PYTHONPATH=pythonpath, **extra)
    target.proc = Proc(target.key, in_namespace(target.netns, cmd), env, tmp,
                       os.path.join(tmp, target.key + ".log"))
    target.proc.start()
    _wait_ready(target.proc, target.address, netns=target.netns)
    say("  %-26s pid %-7d %s\n" % (target.key, target.proc.pid, target.address))
    if target.backend in FASTFCGI_BACKENDS:
        # The start-up line names the core; it must be the one we asked for.
        deadline = time.monotonic() + 5.0
        while True:
            lines = [line for line in target.proc.log_text().splitlines()
                     if " core, Python " in line]
            if lines or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not lines:
            raise BenchError("%s: no start-up line naming the core:\n%s"
                             % (target.key, target.proc.log_text(20)))
        target.core_line = lines[0].strip()
        if "%s core" % target.backend.split("-")[-1] not in target.core_line:
            raise BenchError("%s: the start-up line names another core: %s"
                             % (target.key, target.core_line))


FASTCGI_PARAMS = """\
        fastcgi_param QUERY_STRING $query_string;
        fastcgi_param REQUEST_METHOD $request_method;
        fastcgi_param CONTENT_TYPE $content_type;
        fastcgi_param CONTENT_LENGTH $content_length;
        fastcgi_param REQUEST_URI $request_uri;
        fastcgi_param DOCUMENT_URI $document_uri;
        fastcgi_param DOCUMENT_ROOT $document_root;
        fastcgi_param SERVER_PROTOCOL $server_protocol;
        fastcgi_param REQUEST_SCHEME $scheme;
        fastcgi_param HTTPS $https if_not_empty;
        fastcgi_param GATEWAY_INTERFACE CGI/1.1;
        fastcgi_param SERVER_SOFTWARE nginx/$nginx_version;
        fastcgi_param REMOTE_ADDR $remote_addr;
        fastcgi_param REMOTE_PORT $remote_port;
        fastcgi_param SERVER_ADDR $server_addr;
        fastcgi_param SERVER_PORT $server_port;
        fastcgi_param SERVER_NAME $server_name;
        fastcgi_param SCRIPT_NAME "";
        fastcgi_param PATH_INFO $uri;
"""


def nginx_config(targets, tmp, pool, workers=1):
    """The nginx config: one server block per target.  One worker is one
    process (no master); more are a master's workers, run as the user
    running the bench (as root, nginx would otherwise switch them to
    nobody, who cannot reach the backends' unix sockets in ``tmp``)."""
    if workers == 1:
        out = ["daemon off;", "master_process off;", "worker_processes 1;"]
    else:
        out = ["daemon off;", "master_process on;", "worker_processes %d;" % workers]
        if os.geteuid() == 0:
            import grp
            import pwd
            out.append("user %s %s;" % (pwd.getpwuid(os.geteuid()).pw_name,
                                        grp.getgrgid(os.getegid()).gr_name))
    out += ["pid %s/nginx.pid;" % tmp, "error_log %s/nginx-error.log warn;" % tmp,
           "worker_rlimit_nofile 8192;",
           "events { worker_connections 4096; }", "http {", "    access_log off;",
           "    keepalive_requests 1000000;"]
    for kind in ("client_body", "fastcgi", "proxy", "scgi", "uwsgi"):
        out.append("    %s_temp_path %s/nginx-%s;" % (kind, tmp, kind))
    for t in targets:
        name = t.key.replace("-", "_")
        out.append("    upstream %s {" % name)
        out.append("        server %s;" % t.address)
        if t.keepalive:
            out.append("        keepalive %d;" % pool)
            out.append("        keepalive_requests 1000000;")
        out.append("    }")
        out.append("    server {")
        out.append("        listen 127.0.0.1:%d;" % t.port)
        out.append("        location / {")
        if t.backend in HTTP_BACKENDS:
            out.append("            proxy_http_version 1.1;")
            out.append('            proxy_set_header Connection "";')
            out.append("            proxy_pass http://%s;" % name)
            out.append("        }")
            out.append("    }")
            continue
        out.append(FASTCGI_PARAMS.rstrip("\n").replace("        ", "            "))
        if t.keepalive:
            out.append("            fastcgi_keep_conn on;")
        out.append("            fastcgi_pass %s;" % name)
        out.append("        }")
        out.append("    }")
    out.append("}")
    return "\n".join(out) + "\n"


def check_response(port, timeout=10.0):
    """GET / through nginx until it answers; the answer must be the app's."""
    import http.client
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200 and body == HELLO:
                return
            last = "%d %r" % (resp.status, body[:80])
        except (OSError, http.client.HTTPException) as exc:
            last = repr(exc)
        finally:
            conn.close()
        time.sleep(0.1)
    raise BenchError("GET / on nginx port %d: want 200 %r, got %s" % (port, HELLO, last))


# ############################################################################
# e2e: wrk  ##################################################################
# ############################################################################

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text):
    match = re.match(r"^([\d.]+)(us|ms|s|m|h)$", text.strip())
    if not match:
        raise ValueError("bad wrk time %r" % text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(text):
    """Requests/sec, latency percentiles (ms), requests, errors from wrk's
    output (with --latency)."""
    result = {"percentiles_ms": {}, "socket_errors": 0, "non_2xx": 0}
    match = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not match:
        raise ValueError("no Requests/sec in wrk's output:\n" + text)
    result["rps"] = float(match.group(1))
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", text, re.M):
        result["percentiles_ms"][pct] = _ms(value)
    if "99" not in result["percentiles_ms"]:
        raise ValueError("no 99% latency in wrk's output:\n" + text)
    result["p99_ms"] = result["percentiles_ms"]["99"]
    match = re.search(r"^\s+(\d+) requests in ([\d.]+\w+)", text, re.M)
    result["requests"] = int(match.group(1)) if match else 0
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      text)
    if match:
        result["socket_errors"] = sum(int(g) for g in match.groups())
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if match:
        result["non_2xx"] = int(match.group(1))
    return result


def wrk_command(args, port, conns, duration):
    return ["wrk", "-t", str(min(args.threads, conns)), "-c", str(conns),
            "-d", "%ds" % duration, "--latency", "--timeout", "10s",
            "http://127.0.0.1:%d/" % port]


def _machine_ticks():
    """(busy, all) ticks of every CPU so far, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait ...
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def run_wrk(args, port, backends, front, conns, duration, netns=None):
    """One wrk run against the web server ``front`` (a Proc) on ``port``
    (from inside network namespace ``netns`` if given): wrk's numbers, the
    CPU the ``backends`` (Procs), ``front`` and wrk used meanwhile, each
    backend's too, and how busy the whole machine was."""
    cmd = in_namespace(netns, wrk_command(args, port, conns, duration))
    before = [b.cpu_times() for b in backends]
    front_cpu = front.cpu_times()
    machine = _machine_ticks()
    # wrk is the only child this process reaps meanwhile.
    client = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=duration + 60)
    wall = time.monotonic() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = after.ru_utime + after.ru_stime - client.ru_utime - client.ru_stime
    machine = [after - before for after, before in zip(_machine_ticks(), machine)]
    each = [[a - b for a, b in zip(backend.cpu_times(), cpu)]
            for backend, cpu in zip(backends, before)]
    front_cpu = [after - before for after, before in zip(front.cpu_times(), front_cpu)]
    text = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise BenchError("wrk failed (exit %d): %s\n%s" % (proc.returncode, " ".join(cmd), text))
    for backend in backends:
        if not backend.alive():
            raise BenchError("%s died during the run:\n%s" % (backend.name, backend.log_text(20)))
    result = parse_wrk(text)
    result["backend_user_s"] = sum(user for user, _ in each)
    result["backend_sys_s"] = sum(system for _, system in each)
    result["backend_cpu_s"] = result["backend_user_s"] + result["backend_sys_s"]
    result["backends_cpu_s"] = [sum(cpu) for cpu in each]
    result["front_cpu_s"] = sum(front_cpu)
    result["wrk_cpu_s"] = client
    # In cores, as the processes' figures: 100 = one core the whole run.
    cores = float(os.cpu_count() or 1)
    result["machine_busy_pct"] = 100.0 * cores * machine[0] / machine[1] if machine[1] else None
    result["wall_s"] = wall
    return result


# ############################################################################
# e2e: the run  ##############################################################
# ############################################################################


def _csv(text, allowed, what):
    items = [x.strip() for x in text.split(",") if x.strip()]
    for item in items:
        if allowed is not None and item not in allowed:
            raise argparse.ArgumentTypeError("%s: %r is not one of %s"
                                             % (what, item, ", ".join(allowed)))
    if not items:
        raise argparse.ArgumentTypeError("%s: empty list" % what)
    return items


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("want a whole number >= 1, not %r" % text)
    return value


def _conns_list(text):
    try:
        values = [int(x) for x in _csv(text, None, "--conns")]
    except ValueError:
        raise argparse.ArgumentTypeError("--conns: want numbers, e.g. 16,64")
    if min(values) < 1:
        raise argparse.ArgumentTypeError("--conns: at least 1")
    return values


def make_targets(args):
    targets = []
    for transport in args.transports:
        for backend in args.backends:
            if backend not in HTTP_BACKENDS and not (args.asgi and backend in KEEPALIVE_BACKENDS
                                                     and args.keepalive):
                targets.append(Target(backend, transport, False))
        if args.keepalive:
            for backend in args.backends:
                if backend in KEEPALIVE_BACKENDS:
                    targets.append(Target(backend, transport, True))
    return targets


def schedule(repeat, targets, transports, conns_list):
    """The runs of every repeat: per (transport, conns) scenario, each
    target of that transport once, in an order rotated by the repeat."""
    scenarios = [(transport, conns) for transport in transports for conns in conns_list]
    plan = []
    for r in range(repeat):
        runs = []
        for transport, conns in scenarios:
            group = [t for t in targets if t.transport == transport]
            shift = r % len(group)
            for t in group[shift:] + group[:shift]:
                runs.append((t, conns))
        plan.append(runs)
    return plan


def _median(values):
    return statistics.median(values) if values else None


def summarize(args, targets, samples):
    """Rows of medians per (target, conns)."""
    rows = []
    for t in targets:
        for conns in args.conns:
            runs = samples.get((t.key, conns), [])
            if not runs:
                continue
            requests = sum(r["requests"] for r in runs)
            rows.append({
                "backend": t.backend, "transport": t.transport, "conns": conns,
                "keepalive": t.keepalive, "key": t.key, "runs": len(runs),
                "rps": _median([r["rps"] for r in runs]),
                "p99_ms": _median([r["p99_ms"] for r in runs]),
                "p50_ms": _median([r["percentiles_ms"].get("50") for r in runs
                                   if "50" in r["percentiles_ms"]]),
                "rps_min": min(r["rps"] for r in runs),
                "rps_max": max(r["rps"] for r in runs),
                "backend_cpu_us_per_req": (sum(r["backend_cpu_s"] for r in runs) * 1e6
                                           / requests if requests else None),
                "backend_sys_share": (sum(r["backend_sys_s"] for r in runs)
                                      / sum(r["backend_cpu_s"] for r in runs)
                                      if sum(r["backend_cpu_s"] for r in runs) else None),
                "nginx_cpu_us_per_req": (sum(r["front_cpu_s"] for r in runs) * 1e6
                                         / requests if requests else None),
                # 100: nginx kept one core busy the whole run.
                "nginx_busy_pct": 100.0 * sum(r["front_cpu_s"] for r in runs)
                                  / sum(r["wall_s"] for r in runs),
                "errors": sum(r["socket_errors"] + r["non_2xx"] for r in runs),
            })
    return rows


def _cell(rows, backend, transport, conns, keepalive=False):
    for row in rows:
        if (row["backend"], row["transport"], row["conns"], row["keepalive"]) == (
                backend, transport, conns, keepalive):
            return row
    return None


def evaluate_targets(args, rows):
    """The PASS/FAIL lines: (title, ratio or None, wanted, status)."""
    if args.asgi:
        return evaluate_asgi_targets(args, rows)
    checks = []

    def check(title, fast, slow, wanted):
        if fast is None or slow is None or not slow:
            checks.append((title, None, wanted, "N/A"))
            return
        ratio = fast / slow
        checks.append((title, ratio, wanted, "PASS" if ratio >= wanted else "FAIL"))

    def rps(backend, transport, conns, keepalive=False):
        row = _cell(rows, backend, transport, conns, keepalive)
        return row["rps"] if row else None

    for transport in args.transports:
        for conns in args.conns:
            check("compiled >= 1.10x uWSGI, %s, %d conns" % (transport, conns),
                  rps("compiled", transport, conns), rps("uwsgi", transport, conns), 1.10)
    for transport in args.transports:
        for conns in args.conns:
            check("pure >= 1.5x flup, %s, %d conns" % (transport, conns),
                  rps("pure", transport, conns), rps("flup", transport, conns), 1.5)
    if args.keepalive:
        for transport in args.transports:
            for conns in args.conns:
                best = [v for v in (rps("uwsgi", tr, conns) for tr in args.transports)
                        if v is not None]
                check("compiled+keepalive >= 1.5x uWSGI's best, %s, %d conns"
                      % (transport, conns), rps("compiled", transport, conns, True),
                      max(best) if best else None, 1.5)
    return checks


def evaluate_asgi_targets(args, rows):
    """--asgi's targets: fastfcgi's asyncio worker (compiled, kept
    connections) >= 1.3x uvicorn's req/s at <= 0.6x its backend CPU per
    request, and ahead of granian on both (issue 16)."""
    checks = []

    def check(title, ratio, wanted):
        if ratio is None:
            checks.append((title, None, wanted, "N/A"))
        else:
            checks.append((title, ratio, wanted, "PASS" if ratio >= wanted else "FAIL"))

    for transport in args.transports:
        for conns in args.conns:
            ours = _cell(rows, "asgi-compiled", transport, conns, True)
            for peer, rps_wanted, cpu_wanted in (("uvicorn", 1.3, 1 / 0.6),
                                                 ("granian", 1.0, 1.0)):
                theirs = _cell(rows, peer, transport, conns, True)
                both = ours is not None and theirs is not None
                check("asgi-compiled req/s vs %s, %s, %d conns" % (peer, transport, conns),
                      ours["rps"] / theirs["rps"] if both else None, rps_wanted)
                check("%s's backend us/req over asgi-compiled's, %s, %d conns"
                      % (peer, transport, conns),
                      theirs["backend_cpu_us_per_req"] / ours["backend_cpu_us_per_req"]
                      if both and ours["backend_cpu_us_per_req"] else None, cpu_wanted)
    return checks


def other_ratios(args, rows):
    """Informative ratios of median req/s (not targets)."""
    out = []

    def rps(backend, transport, conns, keepalive=False):
        row = _cell(rows, backend, transport, conns, keepalive)
        return row["rps"] if row else None

    for transport in args.transports:
        for conns in args.conns:
            for fast, slow, keepalive in (("compiled", "pure", False),
                                          ("pure", "uwsgi", False),
                                          ("compiled", "flup", False),
                                          ("compiled", "compiled", "fast")):
                if keepalive == "fast":
                    a = rps("compiled", transport, conns, True)
                    b = rps("compiled", transport, conns)
                    title = "compiled+keepalive vs compiled, %s, %d conns" % (transport, conns)
                else:
                    a = rps(fast, transport, conns)
                    b = rps(slow, transport, conns)
                    title = "%s vs %s, %s, %d conns" % (fast, slow, transport, conns)
                if a and b:
                    out.append((title, a / b))
    return out


def _progress(args):
    """Where progress goes: stderr with --json (stdout is the JSON), else
    stdout."""
    stream = sys.stderr if args.json else sys.stdout
    return lambda text: (stream.write(text), stream.flush())


def run_guarded(name, args, measure):
    """``measure(tmp)`` in a temp dir (removed after, unless --keep-tmp),
    with TERM and INT raising KeyboardInterrupt so that ``measure``'s own
    ``finally`` stops what it started (INT even where it came in ignored,
    as in a shell's background job).  Returns what ``measure`` returns,
    or the exit code: 2 when it raised BenchError (or RuntimeError, from
    tests/netns.py), 130 when interrupted."""
    old_handlers = dict((sig, signal.signal(sig, _raise_interrupt))
                        for sig in (signal.SIGTERM, signal.SIGINT))
    tmp = None
    try:
        tmp = tempfile.mkdtemp(prefix="fastfcgi-bench-")
        return measure(tmp)
    except (BenchError, RuntimeError) as exc:
        sys.stderr.write("bench.py %s: %s\n" % (name, exc))
        return 2
    except KeyboardInterrupt as exc:
        sys.stderr.write("bench.py %s: interrupted (%s); stopping what it started\n"
                         % (name, exc or "Ctrl-C"))
        return 130
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if tmp is not None:
            if args.keep_tmp:
                sys.stderr.write("kept %s\n" % tmp)
            else:
                shutil.rmtree(tmp, ignore_errors=True)


def run_plan(args, plan, run_one, say):
    """Every run of ``plan`` (see schedule), ``run_one(target, conns)``
    measuring one; returns {(key, conns): [results]}."""
    say("%d repeats x %d runs of %ds: about %.0f s\n" % (
        args.repeat, len(plan[0]), args.duration,
        args.repeat * len(plan[0]) * (args.duration + 0.3)))
    samples = {}
    for r, runs in enumerate(plan):
        for t, conns in runs:
            result = run_one(t, conns)
            samples.setdefault((t.key, conns), []).append(result)
            errors = result["socket_errors"] + result["non_2xx"]
            say("repeat %d/%d  %-26s c=%-3d %9.0f req/s  p99 %7.2f ms%s\n" % (
                r + 1, args.repeat, t.key, conns, result["rps"], result["p99_ms"],
                "  ERRORS %d" % errors if errors else ""))
    return samples


def run_e2e(args):
    """The ``e2e`` mode: wrk -> nginx -> backend; returns the exit code
    (0: no target fails, 1: one fails or a run had errors, 2: could not
    run)."""
    if args.hosts:
        return run_scale_out(args)
    say = _progress(args)
    started_at = time.time()
    load_before = os.getloadavg()
    targets = make_targets(args)

    def measure(tmp):
        nginx = None
        try:
            tools = check_tools(args.backends)
            py = prepare_python(args, say)
            for name, text in (("bench_hello.py", HELLO_APP), ("bench_flup.py", FLUP_RUNNER),
                               ("bench_hello_asgi.py", ASGI_HELLO_APP)):
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(text)
            ports = set()
            for t in targets:
                if t.transport == "tcp":
                    t.address = "127.0.0.1:%d" % _free_port(ports)
                else:
                    t.address = "unix:%s/%s.sock" % (tmp, t.key)
                t.port = _free_port(ports)
                if args.access_log and t.backend != "flup":     # flup has none
                    t.access_log = os.path.join(tmp, t.key + (
                        ".log" if t.backend in HTTP_BACKENDS else "-access.log"))
            say("starting %d backends (%s)\n" % (len(targets), py["python"]))
            for t in targets:
                start_backend(t, py["python"], py["build_dir"], tmp, say)

            conf = os.path.join(tmp, "nginx.conf")
            with open(conf, "w") as f:
                f.write(nginx_config(targets, tmp, args.keepalive_pool, args.nginx_workers))
            nginx = Proc("nginx", [tools["nginx"], "-p", tmp, "-c", conf,
                                   "-e", os.path.join(tmp, "nginx-error.log")],
                         _clean_env(), tmp, os.path.join(tmp, "nginx.log"))
            nginx.start()
            for t in targets:
                _wait_ready(nginx, "127.0.0.1:%d" % t.port)
            say("  %-26s pid %-7d %s\n" % ("nginx", nginx.pid, conf))
            for t in targets:
                check_response(t.port)

            env_info = describe_e2e(args, tools, py, targets)
            say(e2e_header_text(env_info))
            if args.warmup > 0:
                say("warm-up: %ds per target\n" % args.warmup)
                for t in targets:
                    run_wrk(args, t.port, [t.proc], nginx, max(args.conns), args.warmup)
            samples = run_plan(
                args, schedule(args.repeat, targets, args.transports, args.conns),
                lambda t, conns: run_wrk(args, t.port, [t.proc], nginx, conns, args.duration),
                say)
            load_after = os.getloadavg()
            if args.access_log:
                env_info["access_log_lines"] = access_log_lines(targets)
            profiles = {}
            if args.profile:
                profiles = run_profiles(args, targets, nginx, say)
            return py, env_info, samples, profiles, load_after
        finally:
            if nginx is not None:
                nginx.stop(signal.SIGTERM)
            for t in targets:
                if t.proc is not None:
                    # uWSGI takes SIGTERM as "reload"; INT stops it.
                    t.proc.stop(signal.SIGINT if t.backend == "uwsgi" else signal.SIGTERM)

    outcome = run_guarded("e2e", args, measure)
    if isinstance(outcome, int):
        return outcome
    py, env_info, samples, profiles, load_after = outcome
    rows = summarize(args, targets, samples)
    checks = evaluate_targets(args, rows)
    ratios = other_ratios(args, rows)
    notes = e2e_notes(py, rows)
    env_info["load_average"] = {"before": load_before, "after": load_after}
    env_info["elapsed_s"] = time.time() - started_at
    env_info["profiles"] = dict((key, {"file": path, "summary": text})
                                for key, (path, text) in profiles.items())
    if args.json:
        json.dump({"mode": "e2e", "environment": env_info, "results": rows,
                   "samples": dict(("%s c=%d" % key, runs) for key, runs in samples.items()),
                   "targets": [{"title": title, "ratio": ratio, "wanted": wanted,
                                "status": status} for title, ratio, wanted, status in checks],
                   "ratios": dict(ratios), "notes": notes}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(e2e_table_text(env_info, rows, checks, ratios, notes))
        for key, (path, text) in profiles.items():
            sys.stdout.write("\nprofile of %s (py-spy, wall clock, %s):\n%s" % (key, path, text))
    failed = any(status == "FAIL" for _, _, _, status in checks)
    errors = any(row["errors"] for row in rows)
    return 1 if failed or errors else 0


# ############################################################################
# e2e --hosts: scale-out  ####################################################
# ############################################################################
#
# Issue 18's question: how does throughput grow as hosts are added behind a
# balancer?  The cluster is the scale-out tests' (tests/netns.py): a
# balancer namespace and N host namespaces joined by veth pairs.  Each host
# runs fastfcgi --workers 1 on the compiled core (the hello world; the
# ping path for HAProxy's health check).  In the balancer namespace, for
# each balancer and each k in 1..N, one instance in front of the first k
# hosts with the configuration the tests run (netns.nginx_conf,
# netns.haproxy_conf; HAProxy logs failed requests only, as nginx logs
# none), on a port of its own; wrk runs there too.  All instances run at
# once, and a repeat runs each once per --conns in a rotated order, as e2e
# does.  wrk, the balancer and every host share this machine's cores: the
# figures give a shape (where adding a host stops helping, and what is
# busy then), not what N machines would do.

SCALE_BALANCERS = ("nginx", "haproxy")
HOST_OPTIONS = ("--workers", "1", "--ping-path", "/ping")
FRONT_PORTS = {"nginx": 8100, "haproxy": 8200}      # + k, in the balancer namespace
SCALE_CONNS = [16]      # the balancers' upstream keepalive pools hold 16


class Front(object):
    """One thing wrk hits with --hosts: balancer ``kind`` in front of the
    first ``hosts`` hosts."""

    transport = "tcp"       # for schedule(): every front is one group

    def __init__(self, kind, hosts):
        self.kind = kind
        self.hosts = hosts
        self.key = "%s-%d" % (kind, hosts)
        self.port = FRONT_PORTS[kind] + hosts
        self.proc = None


def start_front(front, netns, cluster, tools, tmp):
    """``front``'s balancer in the balancer namespace, with its own files
    in ``tmp``/KEY; waits until it answers GET / with the application's
    body."""
    where = os.path.join(tmp, front.key)
    os.makedirs(where)
    listen = "127.0.0.1:%d" % front.port
    addresses = cluster.addresses[:front.hosts]
    if front.kind == "nginx":
        conf = netns.nginx_conf(where, addresses, listen=listen)
        cmd = [tools["nginx"], "-p", where, "-c", os.path.join(where, "nginx.conf")]
    else:
        conf = netns.haproxy_conf(where, addresses, listen=listen, log_requests=False)
        cmd = [tools["haproxy"], "-db", "-f", os.path.join(where, "haproxy.cfg")]
    with open(cmd[-1], "w") as f:
        f.write(conf)
    front.proc = Proc(front.key, in_namespace(cluster.balancer, cmd), _clean_env(), where,
                      os.path.join(where, "console.log"))
    front.proc.start()
    _wait_ready(front.proc, listen, netns=cluster.balancer)
    netns.in_netns(cluster.balancer, check_response, front.port)


def summarize_fronts(args, fronts, samples):
    """Rows of medians per (front, conns), and each front's req/s against
    the same balancer's with one host."""
    rows = []
    for front in fronts:
        for conns in args.conns:
            runs = samples.get((front.key, conns), [])
            if not runs:
                continue
            requests = sum(r["requests"] for r in runs)
            wall = sum(r["wall_s"] for r in runs)
            per_host = [sum(r["backends_cpu_s"][i] for r in runs) for i in range(front.hosts)]
            rows.append({
                "balancer": front.kind, "hosts": front.hosts, "conns": conns,
                "key": front.key, "runs": len(runs),
                "rps": _median([r["rps"] for r in runs]),
                "rps_min": min(r["rps"] for r in runs),
                "rps_max": max(r["rps"] for r in runs),
                "p99_ms": _median([r["p99_ms"] for r in runs]),
                "p50_ms": _median([r["percentiles_ms"].get("50") for r in runs
                                   if "50" in r["percentiles_ms"]]),
                "hosts_cpu_us_per_req": (sum(r["backend_cpu_s"] for r in runs) * 1e6
                                         / requests if requests else None),
                # 100: the hosts together kept one core busy the whole run.
                "hosts_busy_pct": 100.0 * sum(r["backend_cpu_s"] for r in runs) / wall,
                "host_cpu_share_pct": [100.0 * cpu / sum(per_host) if sum(per_host) else None
                                       for cpu in per_host],
                "balancer_cpu_us_per_req": (sum(r["front_cpu_s"] for r in runs) * 1e6
                                            / requests if requests else None),
                "balancer_busy_pct": 100.0 * sum(r["front_cpu_s"] for r in runs) / wall,
                "wrk_busy_pct": 100.0 * sum(r["wrk_cpu_s"] for r in runs) / wall,
                "machine_busy_pct": _median([r["machine_busy_pct"] for r in runs
                                             if r["machine_busy_pct"] is not None]),
                "errors": sum(r["socket_errors"] + r["non_2xx"] for r in runs),
            })
    for row in rows:
        one = [r for r in rows if (r["balancer"], r["hosts"], r["conns"]) == (
            row["balancer"], 1, row["conns"])]
        row["vs_1_host"] = row["rps"] / one[0]["rps"] if one and one[0]["rps"] else None
    return rows


def scale_out_notes(rows):
    notes = []
    for row in rows:
        low = [i for i, share in enumerate(row["host_cpu_share_pct"])
               if share is not None and share < 50.0 / row["hosts"]]
        if low:
            notes.append("%s c=%d: host%s %s had under half an even share of the hosts' CPU"
                         % (row["key"], row["conns"], "s" if len(low) > 1 else "",
                            ", ".join("h%d" % i for i in low)))
        if row["errors"]:
            notes.append("%s c=%d: %d socket errors or non-2xx responses"
                         % (row["key"], row["conns"], row["errors"]))
    return notes


def describe_scale_out(args, tools, py, hosts, fronts):
    info = describe_common(args, py)
    info.update({
        "settings": {"hosts": args.hosts, "balancers": args.balancers, "repeat": args.repeat,
                     "duration_s": args.duration, "warmup_s": args.warmup,
                     "conns": args.conns, "threads": args.threads},
        "hosts": dict((h.key, {"netns": h.netns, "address": h.address,
                               "command": " ".join(h.proc.cmd),
                               "startup": (h.core_line or "").split(" INFO ", 1)[-1]})
                      for h in hosts),
        "balancers": dict((f.key, {"port": f.port, "command": " ".join(f.proc.cmd)})
                          for f in fronts),
    })
    if "nginx" in args.balancers:
        info["nginx"] = _first_line(_output([tools["nginx"], "-v"]))
    if "haproxy" in args.balancers:
        info["haproxy"] = _first_line(_output([tools["haproxy"], "-v"]))
    return info


def scale_out_header_text(info):
    lines = header_lines(info) + [
        ", ".join(info[name] for name in ("nginx", "haproxy", "wrk") if name in info),
        "wrk:         %s (in the balancer namespace)" % info["wrk_command"]]
    for key, entry in info["hosts"].items():
        lines.append("  %-10s %s" % (key, entry["command"]))
        if entry["startup"]:
            lines.append("  %-10s   -> %s" % ("", entry["startup"]))
    for key, entry in info["balancers"].items():
        lines.append("  %-10s %s" % (key, entry["command"]))
    return "\n".join(lines) + "\n"


def scale_out_table_text(info, rows, notes):
    settings = info["settings"]
    out = ["", "scale-out: wrk -> balancer -> 1..%d hosts (fastfcgi --workers 1, compiled "
           "core), hello world (13 B), medians of %d runs of %ds; %s"
           % (settings["hosts"], settings["repeat"], settings["duration_s"],
              info["machine"].rsplit(", ", 1)[-1] + " shared by all")]
    row = "%-8s %5s %5s %9s %6s %6s %7s %7s %12s %6s %15s %9s %5s %8s %6s"
    out.append(row % ("balancer", "hosts", "conns", "req/s", "vs 1", "spread", "p99 ms",
                      "p50 ms", "hosts us/req", "hosts%", "balancer us/req", "balancer%",
                      "wrk%", "machine%", "errors"))
    fmt = lambda value, spec: spec % value if value is not None else "-"
    for r in sorted(rows, key=lambda r: (r["conns"], SCALE_BALANCERS.index(r["balancer"]),
                                         r["hosts"])):
        out.append(row % (r["balancer"], r["hosts"], r["conns"], "%.0f" % r["rps"],
                          fmt(r["vs_1_host"], "%.2fx"),
                          "%.0f%%" % (100.0 * (r["rps_max"] - r["rps_min"]) / r["rps"]),
                          "%.2f" % r["p99_ms"], fmt(r["p50_ms"], "%.2f"),
                          fmt(r["hosts_cpu_us_per_req"], "%.1f"),
                          "%.0f" % r["hosts_busy_pct"],
                          fmt(r["balancer_cpu_us_per_req"], "%.1f"),
                          "%.0f" % r["balancer_busy_pct"], "%.0f" % r["wrk_busy_pct"],
                          fmt(r["machine_busy_pct"], "%.0f"), r["errors"]))
    out.append("(vs 1: req/s against the same balancer's with one host; spread: (max - min) "
               "/ median of the runs' req/s; us/req: CPU time of all the hosts' processes, "
               "and of the balancer, per request; hosts%, balancer%, wrk%: their CPU time over "
               "the runs' time, 100 = one core; machine%: every CPU's busy time, the kernel's "
               "packet work on the veths and loopback included, "
               + "%d = all %d cores)" % (100 * (os.cpu_count() or 1), os.cpu_count() or 1))
    return "\n".join(out + footer_lines(info, notes)) + "\n"


def run_scale_out(args):
    """``e2e --hosts N``: wrk -> nginx and HAProxy -> 1..N hosts in network
    namespaces; returns the exit code (0, 1: a run had errors, 2: could
    not run, as without root)."""
    netns = _netns()
    missing = netns.netns_skip_reason()
    if missing:
        sys.stderr.write("bench.py e2e --hosts: skipped: %s\n" % missing)
        return 2
    say = _progress(args)
    started_at = time.time()
    load_before = os.getloadavg()
    fronts = [Front(kind, k) for kind in args.balancers for k in range(1, args.hosts + 1)]

    def measure(tmp):
        tools = check_tools((), args.balancers, say)
        py = prepare_python(args, say)
        with open(os.path.join(tmp, "bench_hello.py"), "w") as f:
            f.write(HELLO_APP)
        hosts = []
        with netns.Cluster(tmp, hosts=args.hosts) as cluster:
            try:
                say("cluster: balancer namespace %s, hosts %s\n"
                    % (cluster.balancer, " ".join(cluster.hosts)))
                for i, ns in enumerate(cluster.hosts):
                    hosts.append(Target("compiled", "tcp", True, key="h%d" % i, netns=ns,
                                        options=HOST_OPTIONS))
                    hosts[-1].address = cluster.addresses[i]
                    start_backend(hosts[-1], py["python"], py["build_dir"], tmp, say)
                for front in fronts:
                    start_front(front, netns, cluster, tools, tmp)
                    say("  %-26s pid %-7d 127.0.0.1:%d -> %s\n" % (
                        front.key, front.proc.pid, front.port,
                        " ".join(cluster.addresses[:front.hosts])))
                env_info = describe_scale_out(args, tools, py, hosts, fronts)
                say(scale_out_header_text(env_info))
                procs = [h.proc for h in hosts]
                if args.warmup > 0:
                    say("warm-up: %ds per balancer and hosts\n" % args.warmup)
                    for front in fronts:
                        run_wrk(args, front.port, procs, front.proc, max(args.conns),
                                args.warmup, netns=cluster.balancer)
                samples = run_plan(
                    args, schedule(args.repeat, fronts, ["tcp"], args.conns),
                    lambda front, conns: run_wrk(args, front.port, procs, front.proc, conns,
                                                 args.duration, netns=cluster.balancer),
                    say)
                return env_info, samples, os.getloadavg()
            finally:
                # Gracefully first; leaving the cluster kills what is left.
                for started in fronts + hosts:
                    if started.proc is not None:
                        started.proc.stop(signal.SIGTERM)

    outcome = run_guarded("e2e --hosts", args, measure)
    if isinstance(outcome, int):
        return outcome
    env_info, samples, load_after = outcome
    rows = summarize_fronts(args, fronts, samples)
    notes = scale_out_notes(rows)
    env_info["load_average"] = {"before": load_before, "after": load_after}
    env_info["elapsed_s"] = time.time() - started_at
    if args.json:
        json.dump({"mode": "e2e-hosts", "environment": env_info, "results": rows,
                   "samples": dict(("%s c=%d" % key, runs) for key, runs in samples.items()),
                   "notes": notes}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(scale_out_table_text(env_info, rows, notes))
    return 1 if any(row["errors"] for row in rows) else 0


# ############################################################################
# e2e: profiles  #############################################################
# ############################################################################


def run_profiles(args, targets, nginx, say):
    """--profile: one more wrk run per fastfcgi target (first --conns value)
    with py-spy sampling the backend, idle time included (so waiting shows).
    Returns {key: (raw stacks file, summary text)}."""
    spy = os.path.join(os.path.abspath(args.venv), "bin", "py-spy")
    outdir = os.path.abspath(args.profile)
    if not os.path.isdir(outdir):
        os.makedirs(outdir)
    conns = args.conns[0]
    found = {}
    for t in targets:
        if t.backend not in FASTFCGI_BACKENDS:
            continue
        key = "%s-c%d" % (t.key, conns)
        path = os.path.join(outdir, key + ".txt")
        # Blocking sampling (py-spy pauses the process for each sample):
        # --nonblocking gives torn stacks at these request rates.
        cmd = [spy, "record", "--pid", str(t.proc.pid), "--idle", "--rate", "250",
               "--format", "raw", "--duration", str(args.duration), "--output", path]
        say("profile %s: %s\n" % (key, " ".join(cmd)))
        sampler = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)     # py-spy attaches
            result = run_wrk(args, t.port, [t.proc], nginx, conns, args.duration)
            sampler.wait(args.duration + 30)
        finally:
            if sampler.poll() is None:
                sampler.kill()
                sampler.wait()
        if not os.path.exists(path):
            raise BenchError("py-spy wrote no %s (exit %s)" % (path, sampler.returncode))
        found[key] = (path, "%.0f req/s while sampled\n%s" % (
            result["rps"], summarize_stacks(path)))
    return found


def summarize_stacks(path, top=22):
    """The functions with the largest inclusive share of py-spy's raw
    (collapsed) samples, with their self share."""
    inclusive = {}
    own = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            count = int(count)
            total += count
            names = []
            for frame in stack.split(";"):
                match = re.match(r"^(.*?) \(([^():]*)(?::\d+)?\)$", frame)
                names.append("%s (%s)" % (match.group(1), os.path.basename(match.group(2)))
                             if match else frame)
            for name in set(names):
                inclusive[name] = inclusive.get(name, 0) + count
            own[names[-1]] = own.get(names[-1], 0) + count
    if not total:
        return "  no samples\n"
    out = ["  %-58s %7s %7s" % ("function (%d samples)" % total, "incl", "self")]
    for name, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        out.append("  %-58s %6.1f%% %6.1f%%" % (name[:58], 100.0 * count / total,
                                                 100.0 * own.get(name, 0) / total))
    return "\n".join(out) + "\n"


# -- instructions: callgrind's count of a request ---------------------------------
#
# A worker's CPU per request, counted rather than timed: one Server on a
# unix socket serves N requests (nginx's browser GET from tests/corpus, 16
# at a time, on a new connection each or on 16 kept ones) under valgrind's
# callgrind, then 3N; the difference of the two totals over 2N is what one
# request costs in user space, start-up and all fixed costs cancelled.  The
# same binary, input and hash seed give the same count within about 1%,
# however busy the machine: to compare commits, run it in a worktree of each.
#
# With --asgi the worker is an asyncio one (uvloop) serving an ASGI hello
# world, and uvicorn (uvloop, httptools) serves the same application to
# the same client speaking HTTP/1.1 instead: the two counts are the CPU
# issue 16 compares, without the noise of a shared machine.

INSTR_SERVER = """\
import os, socket, sys
core_name, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with_board = sys.argv[4:] == ["board"]
import fastfcgi_py
core = fastfcgi_py
if core_name == "compiled":
    import fastfcgi as core
    assert core.CORE == "compiled", core.__file__

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, world!"]

listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen(1024)
# With "board", the worker publishes into a scoreboard row as it does
# under the supervisor (--status, --timeout, --workers N).
board = fastfcgi_py.Scoreboard(1).row(0) if with_board else None
server = core.Server(core.WSGIGateway(app), listener, max_requests=n, board=board)
print("ready", flush=True)
server.serve_forever()
"""

INSTR_ASGI_APP = """\
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rpartition(".")[2]
            await send({"type": "lifespan.%s.complete" % kind})
            if kind == "shutdown":
                return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})
"""

INSTR_ASGI_SERVER = INSTR_ASGI_APP + """\
import os, socket, sys
backend, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with_board = sys.argv[4:] == ["board"]
if backend == "uvicorn":
    import uvicorn
    config = uvicorn.Config(app, uds=path, loop="uvloop", http="httptools", lifespan="on",
                            limit_max_requests=n, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    import threading, time
    def ready():
        while not server.started:
            time.sleep(0.01)
        print("ready", flush=True)
    threading.Thread(target=ready, daemon=True).start()
    server.run()
    sys.exit(0)
import fastfcgi as core
import fastfcgi_py
assert core.CORE == "compiled", core.__file__
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen(1024)
board = fastfcgi_py.Scoreboard(1).row(0) if with_board else None
server = core.AsyncServer(core.ASGIGateway(app), listener, core=core, max_requests=n,
                          loop="uvloop", board=board)
print("ready", flush=True)
server.serve_forever()
"""

INSTR_CLIENT = """\
import socket, sys
path, n, keep, stream_path = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "keep", sys.argv[4]
http = stream_path.endswith(".http")      # uvicorn's side: the request in HTTP/1.1
data = open(stream_path, "rb").read()
if keep and not http:
    data = data[:10] + b"\\x01" + data[11:]      # FCGI_KEEP_CONN in BEGIN_REQUEST


def read_response(s):
    buf = b""
    while not (buf.endswith(b"Hello, world!") if http else
               len(buf) >= 16 and buf[-16] == 1 and buf[-15] == 3):   # END_REQUEST
        got = s.recv(65536)
        if not got:
            break
        buf += got

done = 0
socks = []
while done < n:
    batch = min(16, n - done)
    if not keep or not socks:
        socks = [socket.socket(socket.AF_UNIX) for _ in range(16)]
        for s in socks:
            s.connect(path)
    for s in socks[:batch]:
        s.sendall(data)
    for s in socks[:batch]:
        read_response(s)
        if not keep:
            s.close()
    done += batch
"""


def count_instructions(args, python, build_dir, core, mode, n, tmp):
    """callgrind's total for one server run of ``n`` requests."""
    sock = os.path.join(tmp, "instr.sock")
    out = os.path.join(tmp, "callgrind.out")
    for path in (sock, out):
        if os.path.exists(path):
            os.unlink(path)
    server_py = os.path.join(tmp, "instr_server.py")
    client_py = os.path.join(tmp, "instr_client.py")
    with open(server_py, "w") as f:
        f.write(INSTR_ASGI_SERVER if args.asgi else INSTR_SERVER)
    with open(client_py, "w") as f:
        f.write(INSTR_CLIENT)
    env = _clean_env(PYTHONPATH=build_dir, PYTHONHASHSEED="0")
    server = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                               python, server_py, core, str(n), sock]
                              + (["board"] if args.board else []),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        if server.stdout.readline().strip() != b"ready":
            raise BenchError("the %s server did not start under valgrind" % core)
        stream = os.path.join(CORPUS, GET_FILE)
        if args.headers == "host":
            stream = os.path.join(tmp, "request-host-only.bin")
            with open(stream, "wb") as f:
                f.write(_host_only_stream(os.path.join(CORPUS, GET_FILE)))
        if core == "uvicorn":
            fastcgi_stream, stream = stream, os.path.join(tmp, "request.http")
            with open(stream, "wb") as f:
                f.write(_http_request_of(fastcgi_stream, mode == "keep"))
        subprocess.check_call([DEBIAN_PYTHON, client_py, sock, str(n), mode, stream],
                              env=_clean_env())
        server.wait(300)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    with open(out) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise BenchError("no total in %s" % out)


def _params_of(stream_path):
    """The params of the first request in a FastCGI request stream."""
    import fastfcgi_py
    parser = fastfcgi_py.Parser()
    with open(stream_path, "rb") as f:
        parser.feed(f.read())
    params = None
    while params is None:       # the first event: (PARAMS done, id, role, flags, params)
        params = next((item for item in parser.next_event() if isinstance(item, dict)), None)
    return params


def _host_only_stream(stream_path):
    """The FastCGI request nginx sends for the same GET with a Host header
    alone, as wrk's (--headers host): the stream's params without its
    other HTTP_* ones."""
    import fastfcgi_py
    params = [(name, value) for name, value in _params_of(stream_path).items()
              if not name.startswith("HTTP_") or name == "HTTP_HOST"]
    return b"".join([
        fastfcgi_py._record(fastfcgi_py.FCGI_BEGIN_REQUEST, 1, struct.pack("!HB5x", 1, 0)),
        fastfcgi_py._record(fastfcgi_py.FCGI_PARAMS, 1, fastfcgi_py.encode_params(params)),
        fastfcgi_py._record(fastfcgi_py.FCGI_PARAMS, 1, b""),
        fastfcgi_py._record(fastfcgi_py.FCGI_STDIN, 1, b"")])


def _http_request_of(stream_path, keep):
    """The HTTP/1.1 request a FastCGI request stream (nginx's) came from:
    its method, URI and every HTTP_* param as a header, so an HTTP server
    parses what ours decodes."""
    params = _params_of(stream_path)
    lines = ["%s %s HTTP/1.1" % (params["REQUEST_METHOD"], params["REQUEST_URI"])]
    for name, value in params.items():
        if name.startswith("HTTP_") and name != "HTTP_CONNECTION":
            lines.append("%s: %s" % (name[5:].replace("_", "-").title(), value))
    if not keep:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def run_instructions(args):
    say = sys.stderr.write
    try:
        if not shutil.which("valgrind"):
            _apt_install(["valgrind"], say, "valgrind is missing")
        args.profile = None
        if args.asgi:
            # The compiled core's asyncio worker, and uvicorn (installed
            # into the venv as e2e --asgi does).
            args.backends = ["asgi-compiled", "uvicorn"]
            args.cores = ["compiled", "uvicorn"]
        py = prepare_python(args, say)
        tmp = tempfile.mkdtemp(prefix="fastfcgi-instr-")
        rows = []
        try:
            for core in args.cores:
                for mode in args.modes:
                    n = args.requests
                    low = count_instructions(args, py["python"], py["build_dir"], core, mode,
                                             n, tmp)
                    high = count_instructions(args, py["python"], py["build_dir"], core, mode,
                                              3 * n, tmp)
                    rows.append((core, mode, (high - low) / (2.0 * n)))
                    say("%s, %s: %.0f instructions a request\n" % (core, mode, rows[-1][2]))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except BenchError as exc:
        say("bench.py instructions: %s\n" % exc)
        return 2
    print("source:      %s (%s)" % (HERE, _git_revision()))
    print("python:      %s (%s)" % (py["python_version"], py["python"]))
    print("request:     tests/corpus/%s%s, 16 at a time, %s hello world, one worker%s"
          % (GET_FILE, " with a Host header alone" if args.headers == "host" else "",
             "ASGI" if args.asgi else "WSGI",
             ", publishing into a scoreboard row" if args.board else ""))
    if args.asgi:
        print("uvicorn:     %s (uvloop, httptools), the same request in HTTP/1.1"
              % py["uvicorn"])
    print("%-10s %-26s %s" % ("backend" if args.asgi else "core", "connections",
                              "instructions/request"))
    counts = {}
    for core, mode, count in rows:
        counts[core, mode] = count
        print("%-10s %-26s %.0f" % (core, "kept (KEEP_CONN)" if mode == "keep"
                                    else "one per request", count))
    for mode in args.modes:
        if ("compiled", mode) in counts and ("uvicorn", mode) in counts:
            print("compiled / uvicorn, %s: %.2f" % (
                "kept" if mode == "keep" else "one per request",
                counts["compiled", mode] / counts["uvicorn", mode]))
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def access_log_lines(targets):
    """{key: lines in its access log} for --access-log, which must have
    some: a backend that logged nothing was not measured logging."""
    counts = {}
    for t in targets:
        if t.access_log is None:
            continue
        with open(t.access_log, "rb") as f:
            # uvicorn's and granian's output has their start-up lines too.
            counts[t.key] = sum(1 for line in f if b"GET / " in line)
        if not counts[t.key]:
            raise BenchError("%s: --access-log, but no access log line in %s"
                             % (t.key, t.access_log))
    return counts


def e2e_notes(py, rows):
    notes = []
    if not py["compiled_parser"].startswith("fastfcgi."):
        notes.append("the compiled core's %s runs %s and %s: fastfcgi.pyx does not plug its "
                     "Parser and Writer into the servers, so 'compiled' measures the pure "
                     "core's code" % (py["compiled_server"], py["compiled_parser"],
                                      py["compiled_writer"]))
    for row in rows:
        if row["errors"]:
            notes.append("%s c=%d: %d socket errors or non-2xx responses"
                         % (row["key"], row["conns"], row["errors"]))
    return notes


def _first_line(text):
    return (text or "?").strip().splitlines()[0] if text and text.strip() else "?"


def describe_common(args, py):
    """What every e2e run reports about where it ran."""
    return {
        "command": " ".join([os.path.basename(sys.executable), "bench.py"] + sys.argv[1:]),
        "git": _git_revision(),
        "sources_sha256": py["sources_sha256"],
        "machine": "%s, %d CPUs" % (platform.platform(), os.cpu_count() or 0),
        "python": "%s (%s, venv of %s with --system-site-packages)" % (
            py["python_version"], py["python"], DEBIAN_PYTHON),
        "wrk": _first_line(_output(["wrk", "--version"])).split(" Copyright")[0],
        "compiled_server": "%s with %s, %s" % (py["compiled_server"], py["compiled_parser"],
                                               py["compiled_writer"]),
        "wrk_command": " ".join(wrk_command(args, 0, max(args.conns), args.duration)
                                ).replace(":0/", ":PORT/"),
    }


def footer_lines(info, notes):
    out = []
    load = info.get("load_average")
    if load:
        out.append("")
        out.append("load average before %.2f %.2f %.2f, after %.2f %.2f %.2f; %.0f s"
                   % (tuple(load["before"]) + tuple(load["after"]) + (info["elapsed_s"],)))
    return out + ["NOTE: " + note for note in notes]


def header_lines(info):
    return ["command:     %s" % info["command"],
            "source:      git %s, snapshot %s" % (info["git"], info["sources_sha256"]),
            "machine:     %s" % info["machine"],
            "python:      %s" % info["python"],
            "compiled:    %s" % info["compiled_server"]]


def describe_e2e(args, tools, py, targets):
    info = describe_common(args, py)
    info.update({
        "cython": py["cython"],
        "flup": py["flup"],
        "uvicorn": py["uvicorn"], "granian": py["granian"], "uvloop": py["uvloop"],
        "nginx": _first_line(_output([tools["nginx"], "-v"])),
        "settings": {"repeat": args.repeat, "duration_s": args.duration,
                     "access_log": args.access_log,
                     "nginx_workers": args.nginx_workers,
                     "warmup_s": args.warmup, "conns": args.conns, "threads": args.threads,
                     "transports": args.transports, "backends": args.backends,
                     "keepalive": args.keepalive, "keepalive_pool": args.keepalive_pool},
        "backends": {},
    })
    if "uwsgi" in tools:
        info["uwsgi"] = "uWSGI " + _first_line(_output([tools["uwsgi"], "--version"]))
    for t in targets:
        entry = {"pid": t.proc.pid, "command": " ".join(t.proc.cmd),
                 "address": t.address, "nginx_port": t.port}
        if t.core_line:
            entry["startup"] = t.core_line.split(" INFO ", 1)[-1]
        if t.backend == "uwsgi":
            match = re.search(r"^Python version: (\S+)", t.proc.log_text(), re.M)
            entry["python"] = match.group(1) if match else "?"
        info["backends"][t.key] = entry
    return info


def e2e_header_text(info):
    lines = header_lines(info) + [
        "cython %s, flup %s, %s, %s%s" % (info["cython"], info["flup"], info["nginx"],
                                          info["wrk"],
                                          ", " + info["uwsgi"] if "uwsgi" in info else ""),
        "uvicorn %s, granian %s, uvloop %s" % (info["uvicorn"], info["granian"], info["uvloop"]),
        "wrk:         %s" % info["wrk_command"]]
    for key, entry in info["backends"].items():
        extra = entry.get("startup") or (
            "embedded Python %s" % entry["python"] if "python" in entry else "")
        lines.append("  %-26s %s" % (key, entry["command"]))
        if extra:
            lines.append("  %-26s   -> %s" % ("", extra))
    return "\n".join(lines) + "\n"


def e2e_table_text(info, rows, checks, ratios, notes):
    workers = info["settings"]["nginx_workers"]
    out = ["", "end to end: wrk -> nginx (%d worker%s) -> backend (1 worker), hello world "
           "(13 B)%s, medians of %d runs of %ds" % (
               workers, "s" if workers > 1 else "",
               ", access logs on" if info["settings"]["access_log"] else "",
               info["settings"]["repeat"], info["settings"]["duration_s"])]
    row = "%-13s %-9s %5s %-9s %9s %7s %8s %8s %14s %5s %12s %6s %6s"
    out.append(row % ("backend", "transport", "conns", "keepalive", "req/s", "spread",
                      "p99 ms", "p50 ms", "backend us/req", "sys%", "nginx us/req",
                      "nginx%", "errors"))
    for r in sorted(rows, key=lambda r: (r["transport"], r["conns"], r["keepalive"],
                                         E2E_BACKENDS.index(r["backend"]))):
        out.append(row % (r["backend"], r["transport"], r["conns"],
                          "yes" if r["keepalive"] else "no", "%.0f" % r["rps"],
                          "%.0f%%" % (100.0 * (r["rps_max"] - r["rps_min"]) / r["rps"]),
                          "%.2f" % r["p99_ms"],
                          "%.2f" % r["p50_ms"] if r["p50_ms"] is not None else "-",
                          "%.1f" % r["backend_cpu_us_per_req"]
                          if r["backend_cpu_us_per_req"] else "-",
                          "%.0f" % (100 * r["backend_sys_share"])
                          if r["backend_sys_share"] is not None else "-",
                          "%.1f" % r["nginx_cpu_us_per_req"]
                          if r["nginx_cpu_us_per_req"] else "-",
                          "%.0f" % r["nginx_busy_pct"], r["errors"]))
    out.append("(spread: (max - min) / median of the runs' req/s; us/req: CPU time of the "
               "backend's processes, and of nginx, per request; sys%: the backend's share "
               "in the kernel; nginx%: nginx's CPU time over the runs' time, 100 = one core)")
    capped = sorted(set("%s %d conns" % (r["transport"], r["conns"]) for r in rows
                        if not r["keepalive"] and r["nginx_busy_pct"] >= 90 * workers))
    if capped:
        out.append("nginx at >= 90%% of its %s: %s measure%s nginx's limit more than the "
                   "backends' (see --nginx-workers)"
                   % ("core" if workers == 1 else "%d cores" % workers, ", ".join(capped),
                      "s" if len(capped) == 1 else ""))
    if info.get("access_log_lines"):
        out.append("access log lines (warm-up runs included): " + ", ".join(
            "%s %d" % item for item in sorted(info["access_log_lines"].items())))
    out.append("")
    out.append("targets (ratios of median req/s):")
    for title, ratio, wanted, status in checks:
        out.append("  %-4s %-64s %s" % (status, title,
                                        "%.2fx (want >= %.2fx)" % (ratio, wanted)
                                        if ratio is not None else "n/a"))
    if ratios:
        out.append("")
        out.append("other ratios of median req/s:")
        for title, value in ratios:
            out.append("  %-61s %.2fx" % (title, value))
    return "\n".join(out + footer_lines(info, notes)) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description="fastfcgi benchmarks")
    modes = parser.add_subparsers(dest="mode", metavar="MODE")
    modes.required = True      # the keyword needs 3.7
    core = modes.add_parser("core", help="the protocol core alone, vs its peers")
    core.add_argument("--repeat", type=int, default=7, metavar="N",
                      help="samples per contender (default 7)")
    core.add_argument("--min-time", type=float, default=0.2, metavar="SECONDS",
                      help="length of one sample (default 0.2)")
    core.add_argument("--json", action="store_true",
                      help="print the results as JSON (progress goes to stderr)")
    core.set_defaults(func=run_core)
    e2e = modes.add_parser(
        "e2e", help="wrk -> nginx -> backend, vs uWSGI and flup",
        description="End to end on loopback: wrk -> nginx -> a hello-world WSGI app on "
                    "fastfcgi (compiled and pure core), uWSGI's FastCGI mode and flup, "
                    "1 worker each, on Debian's python3 (a venv in --venv).")
    e2e.add_argument("--repeat", type=int, default=5, metavar="N",
                     help="runs per backend and scenario, interleaved (default 5)")
    e2e.add_argument("--duration", type=int, default=5, metavar="SECONDS",
                     help="length of one wrk run, whole seconds (default 5)")
    e2e.add_argument("--warmup", type=int, default=1, metavar="SECONDS",
                     help="one unmeasured wrk run per backend first (default 1; 0: none)")
    e2e.add_argument("--conns", type=_conns_list, default=None, metavar="N,...",
                     help="wrk connections, one scenario each (default 16,64; with --hosts "
                          "16)")
    e2e.add_argument("--threads", type=int, default=2, metavar="N",
                     help="wrk threads (default 2)")
    e2e.add_argument("--nginx-workers", type=_positive, default=1, metavar="N",
                     help="nginx worker processes (default 1; one nginx worker caps the "
                          "TCP runs near one core's worth of nginx, whichever backend)")
    e2e.add_argument("--transports", type=lambda s: _csv(s, TRANSPORTS, "--transports"),
                     default=list(TRANSPORTS), metavar="LIST",
                     help="tcp, unix or both (default tcp,unix)")
    e2e.add_argument("--backends", type=lambda s: _csv(s, E2E_BACKENDS, "--backends"),
                     default=None, metavar="LIST",
                     help="some of %s (default compiled,pure,uwsgi,flup; with --asgi %s)"
                     % (",".join(E2E_BACKENDS), ",".join(ASGI_BACKENDS)))
    e2e.add_argument("--asgi", action="store_true",
                     help="ASGI hello world: fastfcgi --asgi (asgi-compiled, asgi-pure) "
                          "against uvicorn (uvloop, httptools) and granian behind the same "
                          "nginx (proxy_pass, keepalive upstream); default backends "
                          "asgi-compiled,uvicorn,granian")
    e2e.add_argument("--access-log", action="store_true",
                     help="every backend with an access log writes one line per request "
                          "to a file: fastfcgi (--access-log-file), uvicorn and granian "
                          "(their own, as uvicorn does by default), uWSGI (its request "
                          "log); flup has none")
    e2e.add_argument("--no-keepalive", dest="keepalive", action="store_false",
                     help="skip the fastcgi_keep_conn runs of the fastfcgi backends")
    e2e.add_argument("--keepalive-pool", type=int, default=64, metavar="N",
                     help="nginx upstream keepalive connections (default 64)")
    e2e.add_argument("--venv", default=BENCH_VENV, metavar="DIR",
                     help="the venv on %s (made when missing; default %s)"
                          % (DEBIAN_PYTHON, os.path.relpath(BENCH_VENV, HERE)))
    e2e.add_argument("--rebuild", action="store_true",
                     help="rebuild the extension even if the sources did not change")
    e2e.add_argument("--keep-tmp", action="store_true",
                     help="keep the temp dir (configs, backend and nginx logs)")
    e2e.add_argument("--profile", metavar="DIR",
                     help="then sample each fastfcgi backend with py-spy (installed into "
                          "the venv) under one more wrk run; raw stacks go to DIR")
    e2e.add_argument("--json", action="store_true",
                     help="print the results as JSON (progress goes to stderr)")
    e2e.add_argument("--hosts", type=_positive, default=None, metavar="N",
                     help="scale-out instead (root): wrk -> balancer -> 1, 2 ... N hosts in "
                          "network namespaces (tests/netns.py), each fastfcgi --workers 1 on "
                          "the compiled core; --transports, --backends, --asgi, keep-alive "
                          "and --nginx-workers do not apply")
    e2e.add_argument("--balancers", type=lambda s: _csv(s, SCALE_BALANCERS, "--balancers"),
                     default=list(SCALE_BALANCERS), metavar="LIST",
                     help="with --hosts: nginx, haproxy or both (default both)")
    e2e.set_defaults(func=run_e2e)
    instr = modes.add_parser(
        "instructions", help="callgrind's instruction count of a request, one worker",
        description="One worker serving nginx's GET on a unix socket under valgrind's "
                    "callgrind: instructions per request, which do not drift with noise.")
    instr.add_argument("--requests", type=_positive, default=1000, metavar="N",
                       help="the runs serve N and 3N requests (default 1000)")
    instr.add_argument("--cores", type=lambda s: _csv(s, ("compiled", "pure"), "--cores"),
                       default=["compiled"], metavar="LIST",
                       help="compiled, pure or both (default compiled)")
    instr.add_argument("--modes", type=lambda s: _csv(s, ("close", "keep"), "--modes"),
                       default=["close", "keep"], metavar="LIST",
                       help="close (a connection per request), keep, or both (default both)")
    instr.add_argument("--headers", choices=("browser", "host"), default="browser",
                       help="the request's headers: a browser's (the corpus GET, 33 params), "
                            "or Host alone, as wrk's GET comes through nginx (20 params)")
    instr.add_argument("--asgi", action="store_true",
                       help="an asyncio worker (uvloop) serving an ASGI hello world, and "
                            "uvicorn (uvloop, httptools) serving it over HTTP/1.1 to the same "
                            "client: issue 16's CPU comparison, counted")
    instr.add_argument("--board", action="store_true",
                       help="the worker publishes into a scoreboard row, as under the "
                            "supervisor (--status, --timeout, --workers N); with --asgi, "
                            "fastfcgi's worker (uvicorn has none)")
    instr.add_argument("--venv", default=BENCH_VENV, metavar="DIR",
                       help="the venv on %s (as e2e's)" % DEBIAN_PYTHON)
    instr.add_argument("--rebuild", action="store_true",
                       help="rebuild the extension even if the sources did not change")
    instr.set_defaults(func=run_instructions)
    args = parser.parse_args(argv)
    if getattr(args, "repeat", 1) < 1:
        parser.error("--repeat must be at least 1")
    if args.mode == "e2e" and (args.duration <= 0 or args.threads < 1
                               or args.keepalive_pool < 1):
        parser.error("--duration, --threads and --keepalive-pool must be positive")
    if args.mode == "e2e" and args.hosts and (args.asgi or args.profile or args.backends):
        parser.error("--hosts runs the compiled core's WSGI hello world: no --asgi, "
                     "--profile or --backends")
    if args.mode == "e2e" and args.conns is None:
        args.conns = list(SCALE_CONNS if args.hosts else [16, 64])
    if args.mode == "e2e" and args.backends is None:
        args.backends = list(ASGI_BACKENDS if args.asgi else E2E_BACKENDS[:4])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
