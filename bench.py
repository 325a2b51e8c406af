#!/usr/bin/env python3
"""Benchmarks for fastfcgi, each against its peers in the same run.

Usage::

    python bench.py core [--repeat N] [--min-time SECONDS] [--json]
    python bench.py e2e                                  (not written yet)

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

Standard library only (plus what it measures), Python 3.6+.
"""

import argparse
import functools
import json
import os
import platform
import statistics
import struct
import sys
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


def run_e2e(args):
    """The ``e2e`` mode: through real nginx.  Not written yet."""
    sys.stderr.write("bench.py e2e: not implemented yet\n")
    return 2


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
    e2e = modes.add_parser("e2e", help="end to end through nginx (not written yet)")
    e2e.set_defaults(func=run_e2e)
    args = parser.parse_args(argv)
    if getattr(args, "repeat", 1) < 1:
        parser.error("--repeat must be at least 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
