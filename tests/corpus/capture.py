#!/usr/bin/env python3
"""Capture real nginx FastCGI record streams for the parser corpus.

Each ``NNN-name.bin`` in this folder is every byte a real nginx sent on one
FastCGI connection for one or more HTTP requests, cut right after the last
request's empty FCGI_STDIN record.  ``NNN-name.expected.json`` says what a
correct parser must produce from it.  ``tests/test_corpus.py`` feeds the
streams to both cores.

Regenerating the corpus
-----------------------
::

    python3 tests/corpus/capture.py            # capture again with nginx
    python3 tests/corpus/capture.py --verify   # recheck the files, no nginx

Capturing needs ``nginx`` on PATH (or ``--nginx /path/to/nginx``) and
nothing else: the script writes a private config into a temporary prefix
(``daemon off; master_process off;``, error log, pid file and temp paths in
that directory, a free 127.0.0.1 port), listens itself on another free
loopback port as the FastCGI application, sends the HTTP requests with
``http.client``, records what nginx forwards, answers each request with a
minimal response (STDOUT "Status: 200 OK ... ok", empty STDOUT,
END_REQUEST) and stops nginx by its pid.  The requests:

  001-get-browser       GET /path/page?x=1&y=two with a current Firefox's
                        headers (Cookie long enough for 4-byte lengths).
  002-post-form         a ~10 KB application/x-www-form-urlencoded POST.
  003-upload-5mb        a multipart/form-data upload of a 5 MiB file
                        (seeded PRNG content, so the same on every run).
  004-keepalive-two     two GETs over one FastCGI connection (an upstream
                        with ``keepalive 2`` and ``fastcgi_keep_conn on``,
                        so both BEGIN_REQUESTs carry FCGI_KEEP_CONN).

The params are this nginx's ``/etc/nginx/fastcgi_params`` (Debian's:
current upstream's list, HTTP_HOST $host included, plus REMOTE_USER)
written out in ``NGINX_PARAMS`` below so the capture does not depend on the
machine's file; nginx adds one HTTP_* param per request header (except
Host, which the HTTP_HOST param replaces): 33 params for the GET.

A recapture differs from the committed files only where nginx puts
run-specific values: SERVER_PORT and REMOTE_PORT (free ports),
SERVER_SOFTWARE (the nginx version), and the record layout nginx chooses
for the body, which depends on timing (for 002 the script repeats the POST
until nginx splits the body over two records, the more demanding shape).
The committed files were captured with nginx/1.22.1.

The expected files
------------------
A JSON list of what the parser yields when the whole ``.bin`` is fed and
then ``b""`` (EOF), under this convention: **the test calls
``parser.end_request(id)`` as soon as that request's stdin has ended** (the
``(FCGI_STDIN, id, b"")`` event), as a server does once it has answered.

  {"event": "PARAMS", "id": 1, "role": 1, "flags": F, "params": {...}}
        when the request's empty PARAMS record arrives; params are the
        name-value pairs decoded as latin-1 str.
  {"event": "STDIN", "id": 1, "length": N, "sha256": "..."}
        one per request, standing for all its STDIN chunks and the end
        event: N and the SHA-256 of the chunks joined.
  {"code": "NOREQ"}
        the last entry.  Because every request has been ended when the
        stream stops between records, EOF there is a clean close between
        requests: NOREQ.  (Without the end_request calls a one-request
        stream would rightly end in EOF, the peer having closed while a
        request was active, and 004's second BEGIN_REQUEST, which reuses
        id 1 as nginx always does, would be PROTO.)

The expected files are computed by this script's own record walker and
name-value decoder, not by fastfcgi, and cross-checked against flup's
``Record.read`` and ``decode_pair`` when flup is installed (``--verify``
does the same for the files already here).

Standard library only, Python 3.6+.
"""

import argparse
import glob
import hashlib
import http.client
import io
import json
import os
import queue
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))

# FastCGI 1.0 record types and flags this script needs (spec section 8).
BEGIN_REQUEST = 1
END_REQUEST = 3
PARAMS = 4
STDIN = 5
STDOUT = 6
KEEP_CONN = 1

HEADER = struct.Struct("!BBHHBx")  # version, type, id, content len, padding

RESPONSE_BODY = b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nok"

# /etc/nginx/fastcgi_params of Debian's nginx 1.22, in its order.
NGINX_PARAMS = [
    ("QUERY_STRING", "$query_string"),
    ("REQUEST_METHOD", "$request_method"),
    ("CONTENT_TYPE", "$content_type"),
    ("CONTENT_LENGTH", "$content_length"),
    ("SCRIPT_NAME", "$fastcgi_script_name"),
    ("REQUEST_URI", "$request_uri"),
    ("DOCUMENT_URI", "$document_uri"),
    ("DOCUMENT_ROOT", "$document_root"),
    ("SERVER_PROTOCOL", "$server_protocol"),
    ("REQUEST_SCHEME", "$scheme"),
    ("HTTPS", "$https if_not_empty"),
    ("GATEWAY_INTERFACE", "CGI/1.1"),
    ("SERVER_SOFTWARE", "nginx/$nginx_version"),
    ("REMOTE_ADDR", "$remote_addr"),
    ("REMOTE_PORT", "$remote_port"),
    ("REMOTE_USER", "$remote_user"),
    ("SERVER_ADDR", "$server_addr"),
    ("SERVER_PORT", "$server_port"),
    ("SERVER_NAME", "$server_name"),
    ("REDIRECT_STATUS", "200"),
    ("HTTP_HOST", "$host"),
]

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
error_log {tmp}/error.log info;
pid {tmp}/nginx.pid;

events {{
    worker_connections 64;
}}

http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 10m;

    upstream app_keepalive {{
        server 127.0.0.1:{fcgi_port};
        keepalive 2;
    }}

    server {{
        listen 127.0.0.1:{http_port};
        server_name www.example.org;
        root /srv/www/example;

{params}

        location / {{
            fastcgi_pass 127.0.0.1:{fcgi_port};
        }}

        location /keepalive/ {{
            fastcgi_pass app_keepalive;
            fastcgi_keep_conn on;
        }}
    }}
}}
"""

FIREFOX_UA = ("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) "
              "Gecko/20100101 Firefox/133.0")
COOKIE = ("sessionid=k3v9q2x8m1n7b4c6z0l5j8h2g4f6d1s3; "
          "csrftoken=Qm7Yc2Vt9Lp4Xr1Nw8Bd6Hs3Kf0Gj5Za; "
          "_ga=GA1.1.1843029175.1731000000; "
          "_ga_ABCDEF1234=GS1.1.1731000000.3.1.1731003600.0.0.0; "
          "theme=dark; lang=en-US")


def browser_headers(referer, fetch_site="same-origin", user=True):
    """Header lines (name, value) in the order Firefox 133 sends them for a
    navigation."""
    headers = [
        ("Host", "www.example.org"),
        ("User-Agent", FIREFOX_UA),
        ("Accept", "text/html,application/xhtml+xml,application/xml;"
                   "q=0.9,*/*;q=0.8"),
        ("Accept-Language", "en-US,en;q=0.5"),
        ("Accept-Encoding", "gzip, deflate, br, zstd"),
        ("Referer", referer),
        ("Connection", "keep-alive"),
        ("Cookie", COOKIE),
        ("Upgrade-Insecure-Requests", "1"),
        ("Sec-Fetch-Dest", "document"),
        ("Sec-Fetch-Mode", "navigate"),
        ("Sec-Fetch-Site", fetch_site),
    ]
    if user:
        headers.append(("Sec-Fetch-User", "?1"))
    headers.append(("Priority", "u=0, i"))
    return headers


# ############################################################################
# Independent decoding  ######################################################
# ############################################################################
#
# Written from the spec (sections 3.3, 3.4), sharing no code with fastfcgi.


def iter_records(stream):
    """Yield (type, request_id, content) for each record of ``stream``;
    return the number of bytes left over after the last whole record."""
    pos = 0
    while len(stream) - pos >= 8:
        version, rtype, rid, clen, plen = HEADER.unpack_from(stream, pos)
        if version != 1:
            raise ValueError("record at %d: version %d" % (pos, version))
        end = pos + 8 + clen
        if end + plen > len(stream):
            break
        yield rtype, rid, bytes(stream[pos + 8:end])
        pos = end + plen
    return len(stream) - pos


def decode_pairs(data):
    """Name-value pairs (spec 3.4) as a list of (name, value) bytes."""
    pairs = []
    i = 0
    while i < len(data):
        lengths = []
        for _ in range(2):
            if data[i] >> 7:
                lengths.append(struct.unpack_from("!L", data, i)[0] & 0x7FFFFFFF)
                i += 4
            else:
                lengths.append(data[i])
                i += 1
        name = data[i:i + lengths[0]]
        value = data[i + lengths[0]:i + lengths[0] + lengths[1]]
        if len(name) + len(value) != lengths[0] + lengths[1]:
            raise ValueError("name-value pair runs past the end")
        i += lengths[0] + lengths[1]
        pairs.append((name, value))
    return pairs


def pairs_to_params(pairs):
    """The params dict a parser hands out: latin-1 str, last one wins."""
    return dict((n.decode("latin-1"), v.decode("latin-1")) for n, v in pairs)


def expected_events(stream):
    """The expected-file list for ``stream`` (see the module docstring).

    Raises ValueError for anything the corpus should not contain.
    """
    events = []
    active = {}   # request id -> {"role", "flags", "params", "stdin"}
    records = iter_records(stream)
    while True:
        try:
            rtype, rid, content = next(records)
        except StopIteration as stop:
            leftover = stop.value
            break
        if rtype == BEGIN_REQUEST:
            if rid in active or len(content) != 8:
                raise ValueError("bad BEGIN_REQUEST for id %d" % rid)
            role, flags = struct.unpack("!HB5x", content)
            active[rid] = {"role": role, "flags": flags,
                           "params": bytearray(), "stdin": []}
        elif rtype == PARAMS:
            req = active[rid]
            if content:
                req["params"] += content
            else:
                pairs = decode_pairs(bytes(req["params"]))
                names = [n for n, _ in pairs]
                if len(set(names)) != len(names):
                    print("warning: repeated param names in request %d" % rid)
                events.append({"event": "PARAMS", "id": rid,
                               "role": req["role"], "flags": req["flags"],
                               "params": pairs_to_params(pairs)})
        elif rtype == STDIN:
            req = active[rid]
            if content:
                req["stdin"].append(content)
            else:
                body = b"".join(req["stdin"])
                events.append({"event": "STDIN", "id": rid,
                               "length": len(body),
                               "sha256": hashlib.sha256(body).hexdigest()})
                del active[rid]   # the test's end_request(id)
        else:
            raise ValueError("unexpected record type %d" % rtype)
    events.append({"code": "EOF" if leftover or active else "NOREQ"})
    return events


def flup_cross_check(stream, events):
    """Compare with flup's record reader and pair decoder.

    Returns a list of problems (empty when flup agrees), or None when flup
    is not installed.
    """
    try:
        from flup.server import fcgi_base
    except ImportError:
        return None

    class MemorySocket(object):
        def __init__(self, data):
            self.data = data
            self.pos = 0

        def recv(self, n):
            chunk = self.data[self.pos:self.pos + n]
            self.pos += len(chunk)
            return chunk

        def fileno(self):   # flup formats it into a debug message
            return -1

    sock = MemorySocket(bytes(stream))
    mine = list(iter_records(stream))
    theirs = []
    while sock.pos < len(sock.data):
        rec = fcgi_base.Record()
        rec.read(sock)
        theirs.append((rec.type, rec.requestId, rec.contentData))
    problems = []
    if mine != theirs:
        problems.append("records differ from flup's Record.read")
    params_blocks = {}
    flup_params = []
    for rtype, rid, content in theirs:
        if rtype != PARAMS:
            continue
        if content:
            params_blocks[rid] = params_blocks.get(rid, b"") + content
            continue
        block = params_blocks.pop(rid, b"")
        pairs = []
        pos = 0
        while pos < len(block):
            pos, pair = fcgi_base.decode_pair(block, pos)
            pairs.append(pair)
        flup_params.append(pairs_to_params(pairs))
    expected = [e["params"] for e in events if e.get("event") == "PARAMS"]
    if flup_params != expected:
        problems.append("params differ from flup's decode_pair")
    return problems


# ############################################################################
# The FastCGI side  ##########################################################
# ############################################################################


def recv_exact(sock, n):
    """n bytes from sock; None on EOF before the first byte."""
    chunks = []
    left = n
    while left:
        data = sock.recv(min(left, 1 << 20))
        if not data:
            if left == n:
                return None
            raise EOFError("connection closed mid-record")
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def record(rtype, rid, content):
    pad = -len(content) & 7
    return HEADER.pack(1, rtype, rid, len(content), pad) + content + b"\0" * pad


def response(rid):
    return (record(STDOUT, rid, RESPONSE_BODY) + record(STDOUT, rid, b"")
            + record(END_REQUEST, rid, struct.pack("!LB3x", 0, 0)))


class FastCGICapture(object):
    """Listens on a free loopback port; each connection is served in a
    thread that records what arrives and answers each request.

    ``results`` gets (connection number, requests so far on it, the bytes
    received so far) each time a request's stdin has ended, and
    (connection number, 0, exception) if serving failed.
    """

    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(0.1)   # so the accept loop sees closing
        self.closing = threading.Event()
        self.results = queue.Queue()
        self.extra = []        # (connection number, bytes after the last request)
        self.threads = []
        self.accepter = threading.Thread(target=self._accept)
        self.accepter.daemon = True
        self.accepter.start()

    def _accept(self):
        number = 0
        while not self.closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            conn.settimeout(60)
            number += 1
            thread = threading.Thread(target=self._serve, args=(conn, number))
            thread.daemon = True
            thread.start()
            self.threads.append(thread)

    def _serve(self, conn, number):
        raw = bytearray()
        flags = {}
        requests = 0
        mark = 0     # end of the last request's empty STDIN record
        try:
            while True:
                head = recv_exact(conn, 8)
                if head is None:
                    break
                version, rtype, rid, clen, plen = HEADER.unpack(head)
                body = recv_exact(conn, clen + plen) if clen + plen else b""
                if body is None:
                    raise EOFError("connection closed after a record header")
                raw += head
                raw += body
                if rtype == BEGIN_REQUEST:
                    flags[rid] = body[2]
                elif rtype == STDIN and clen == 0:
                    conn.sendall(response(rid))
                    requests += 1
                    mark = len(raw)
                    self.results.put((number, requests, bytes(raw)))
                    if not flags.get(rid, 0) & KEEP_CONN:
                        break
        except Exception as exc:   # report to the main thread, whatever it is
            self.results.put((number, 0, exc))
        finally:
            if len(raw) > mark:
                self.extra.append((number, bytes(raw[mark:])))
            conn.close()

    def take(self, timeout=60):
        number, requests, data = self.results.get(timeout=timeout)
        if isinstance(data, Exception):
            raise RuntimeError("FastCGI connection %d: %r" % (number, data))
        return number, requests, data

    def close(self):
        self.closing.set()
        self.accepter.join(10)
        self.listener.close()
        for thread in self.threads:
            thread.join(10)


# ############################################################################
# nginx and the HTTP side  ###################################################
# ############################################################################


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx(object):
    """A private nginx in its own temporary prefix."""

    def __init__(self, binary, fcgi_port):
        self.tmp = tempfile.mkdtemp(prefix="fastfcgi-capture-")
        self.port = free_port()
        params = "\n".join("        fastcgi_param %s %s;" % (name, value)
                           for name, value in NGINX_PARAMS)
        conf = os.path.join(self.tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(tmp=self.tmp, fcgi_port=fcgi_port,
                                      http_port=self.port, params=params))
        self.version = subprocess.check_output(
            [binary, "-v"], stderr=subprocess.STDOUT).decode().strip()
        self.proc = subprocess.Popen(
            [binary, "-p", self.tmp, "-e", os.path.join(self.tmp, "error.log"),
             "-c", conf],
            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited with %s:\n%s"
                                   % (self.proc.returncode, self.error_log()))
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start:\n" + self.error_log())
                time.sleep(0.05)

    def error_log(self):
        try:
            with open(os.path.join(self.tmp, "error.log")) as f:
                return f.read()
        except OSError:
            return "(no error log)"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()   # SIGTERM to this pid: fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.tmp, ignore_errors=True)


def http_request(conn, method, target, headers, body=None):
    """Send one request with exactly these header lines; check the answer."""
    conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders(message_body=body)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200 or data != b"ok":
        raise RuntimeError("%s %s: %d %r" % (method, target, resp.status, data[:200]))


def form_body():
    """About 10 KB of urlencoded form, the same on every run."""
    rng = random.Random(2)
    words = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do "
             "eiusmod tempor incididunt ut labore et dolore magna aliqua "
             "café naïve über & = + % / ? # 100% 'quoted' \"double\"").split()
    fields = [
        ("csrfmiddlewaretoken", "%064x" % rng.getrandbits(256)),
        ("title", "A form POST captured from nginx"),
        ("name", "Zoë Example"),
        ("email", "zoe@example.org"),
        ("message", ""),
        ("tags", "fastcgi,nginx,python"),
        ("subscribe", "on"),
    ]
    # Grow the message word by word until the body reaches 10 KiB; the
    # encoded length is tracked per word (a space encodes as one "+").
    size = len(urllib.parse.urlencode(fields))
    message = []

    def add(word):
        message.append(word)
        return len(urllib.parse.quote_plus(word)) + (len(message) > 1)

    while size < 10240:
        size += add(rng.choice(words))
        if rng.random() < 0.08:
            size += add("\r\n")
    fields[4] = ("message", " ".join(message))
    body = urllib.parse.urlencode(fields).encode("ascii")
    if len(body) != size:
        raise RuntimeError("form body: counted %d bytes, built %d" % (size, len(body)))
    return body


def multipart_body():
    """A multipart/form-data upload of a 5 MiB file (seeded PRNG bytes)."""
    rng = random.Random(3)
    boundary = "----geckoformboundary%032x" % rng.getrandbits(128)
    size = 5 * 1024 * 1024
    payload = rng.getrandbits(8 * size).to_bytes(size, "little")
    crlf = b"\r\n"
    b = boundary.encode("ascii")
    parts = [
        b"--" + b, crlf,
        b'Content-Disposition: form-data; name="title"', crlf, crlf,
        b"Quarterly data", crlf,
        b"--" + b, crlf,
        b'Content-Disposition: form-data; name="description"', crlf, crlf,
        "Données brutes, 5 MiB".encode("utf-8"), crlf,
        b"--" + b, crlf,
        b'Content-Disposition: form-data; name="file"; filename="sample-5MiB.bin"',
        crlf,
        b"Content-Type: application/octet-stream", crlf, crlf,
        payload, crlf,
        b"--" + b + b"--", crlf,
    ]
    return boundary, b"".join(parts)


def post_headers(content_type, length, referer):
    headers = browser_headers(referer)
    # Firefox puts the entity headers and Origin after Accept-Encoding.
    at = [name for name, _ in headers].index("Accept-Encoding") + 1
    headers[at:at] = [("Content-Type", content_type),
                      ("Content-Length", str(length)),
                      ("Origin", "http://www.example.org")]
    return headers


POST_TRIES = 50


def stdin_records(stream):
    """How many non-empty STDIN records ``stream`` has."""
    return sum(1 for rtype, _, content in iter_records(stream)
               if rtype == STDIN and content)


def capture_all(binary):
    """Run nginx and the requests; return [(file stem, bytes)], the nginx
    version and the FastCGI connections' stray bytes."""
    app = FastCGICapture()
    nginx = None
    try:
        nginx = Nginx(binary, app.port)
        out = []
        conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=60)

        http_request(conn, "GET", "/path/page?x=1&y=two",
                     browser_headers("http://www.example.org/path/"))
        number, _, data = app.take()
        out.append(("001-get-browser", data))

        # How nginx cuts a small body into STDIN records depends on timing:
        # one 10240-byte record, or the part read with the headers and then
        # the rest.  Keep the second shape, which has more to get wrong.
        body = form_body()
        for _ in range(POST_TRIES):
            http_request(conn, "POST", "/form/submit",
                         post_headers("application/x-www-form-urlencoded",
                                      len(body), "http://www.example.org/form/"),
                         body)
            number, _, data = app.take()
            if stdin_records(data) > 1:
                break
        else:
            print("warning: 002 has its body in one STDIN record")
        out.append(("002-post-form", data))

        boundary, body = multipart_body()
        http_request(conn, "POST", "/upload",
                     post_headers("multipart/form-data; boundary=" + boundary,
                                  len(body), "http://www.example.org/upload"),
                     body)
        number, _, data = app.take()
        out.append(("003-upload-5mb", data))

        http_request(conn, "GET", "/keepalive/first?n=1",
                     browser_headers("http://www.example.org/keepalive/"))
        first, count, _ = app.take()
        http_request(conn, "GET", "/keepalive/second?n=2",
                     browser_headers("http://www.example.org/keepalive/first?n=1"))
        second, count, data = app.take()
        if (first, count) != (second, 2):
            raise RuntimeError("nginx did not reuse the FastCGI connection "
                               "(connections %d and %d)" % (first, second))
        out.append(("004-keepalive-two", data))
        conn.close()
        return out, nginx.version, app.extra
    except Exception:
        if nginx is not None:
            sys.stderr.write("nginx error log:\n" + nginx.error_log())
        raise
    finally:
        if nginx is not None:
            nginx.stop()
        app.close()


# ############################################################################
# Main  ######################################################################
# ############################################################################


def describe(stem, stream, events):
    """One line per file; also runs the flup cross-check.  Returns True
    when flup agrees (or is not installed)."""
    counts = ", ".join(str(len(e["params"])) for e in events
                       if e.get("event") == "PARAMS")
    bodies = ", ".join(str(e["length"]) for e in events
                       if e.get("event") == "STDIN")
    problems = flup_cross_check(stream, events)
    if problems is None:
        flup = "flup not installed, not cross-checked"
    elif problems:
        flup = "FLUP DISAGREES: " + "; ".join(problems)
    else:
        flup = "flup agrees"
    print("%-20s %8d bytes, %4d records, params %s, stdin %s, %s; %s"
          % (stem, len(stream), len(list(iter_records(stream))), counts,
             bodies, events[-1]["code"], flup))
    return not problems


def dump_expected(events):
    return json.dumps(events, indent=1) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Capture nginx FastCGI streams into the test corpus.")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx",
                        help="the nginx binary (default: from PATH)")
    parser.add_argument("--out", default=HERE, help="corpus folder (default: here)")
    parser.add_argument("--verify", action="store_true",
                        help="recompute the expected files of the .bin files "
                             "in --out and compare; do not run nginx")
    args = parser.parse_args(argv)

    ok = True
    if args.verify:
        for path in sorted(glob.glob(os.path.join(args.out, "[0-9][0-9][0-9]-*.bin"))):
            stem = os.path.basename(path)[:-4]
            with open(path, "rb") as f:
                stream = f.read()
            events = expected_events(stream)
            with open(os.path.join(args.out, stem + ".expected.json")) as f:
                if json.load(f) != events:
                    print("%s: expected file is STALE" % stem)
                    ok = False
            ok = describe(stem, stream, events) and ok
        return 0 if ok else 1

    captures, version, extra = capture_all(args.nginx)
    print("captured with %s" % version)
    for number, data in extra:
        print("warning: connection %d sent %d bytes after its last request"
              % (number, len(data)))
    for stem, stream in captures:
        events = expected_events(stream)
        with open(os.path.join(args.out, stem + ".bin"), "wb") as f:
            f.write(stream)
        with io.open(os.path.join(args.out, stem + ".expected.json"), "w",
                     newline="\n") as f:
            f.write(dump_expected(events))
        ok = describe(stem, stream, events) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
