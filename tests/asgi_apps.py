"""ASGI 3 applications for the asyncio server's tests: ``app`` dispatches
/NAME/... to the coroutine NAME below (the same names as the WSGI apps
where the spec tests share them), and speaks the lifespan protocol."""

import asyncio
import hashlib
import json
import os
import sys
import time

STARTED = {}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    path = scope["path"][len(scope["root_path"]):]
    for prefix in ("/keep", "/stream", "/tls"):
        if path.startswith(prefix + "/"):
            path = path[len(prefix):]
    name = path.split("/")[1] if path.count("/") >= 1 else ""
    target = ROUTES.get(name)
    if target is None:
        await respond(send, b"no such app\n", 404)
        return
    await target(scope, receive, send)


async def lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["greeting"] = "hello from lifespan"
            STARTED["at"] = time.time()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            sys.stderr.write("lifespan shutdown ran\n")
            sys.stderr.flush()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def fail_startup(scope, receive, send):
    """An application whose lifespan startup fails."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "the database is down"})
        return
    await respond(send, b"never\n")


async def no_lifespan(scope, receive, send):
    """An application that does not speak the lifespan protocol (raises)."""
    if scope["type"] != "http":
        raise ValueError("only http here")
    await respond(send, b"served without lifespan")


class ClientDisconnect(Exception):
    """As Starlette's: the body ended with http.disconnect."""


async def read_body(receive):
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def respond(send, body, status=200, ctype=b"text/plain", headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
                + list(headers)})
    await send({"type": "http.response.body", "body": body})


def query(scope):
    return scope["query_string"].decode("latin-1")


async def hello(scope, receive, send):
    await respond(send, b"Hello, world!")


async def upload(scope, receive, send):
    body = await read_body(receive)
    await respond(send, json.dumps({"size": len(body), "sha256": hashlib.sha256(body).hexdigest()})
                  .encode(), ctype=b"application/json")


async def count_body(scope, receive, send):
    """Counts the body without keeping it (the big upload)."""
    size = 0
    digest = hashlib.md5()
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        digest.update(chunk)
        if not message.get("more_body"):
            break
    await respond(send, json.dumps({"size": size, "md5": digest.hexdigest()}).encode())


async def chunks(scope, receive, send):
    count = int(query(scope) or "10")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    for i in range(count):
        await send({"type": "http.response.body", "body": b"%099d\n" % i, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def download(scope, receive, send):
    """?SIZE bytes, streamed in 64 KiB pieces."""
    size = int(query(scope))
    piece = b"x" * 65536
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"),
                            (b"content-length", str(size).encode())]})
    while size > 0:
        chunk = piece[:size]
        size -= len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": size > 0})


async def sleep(scope, receive, send):
    """?MS: sleep, then answer with the query (interleaving tests)."""
    await asyncio.sleep(int(query(scope).split("-")[0]) / 1000)
    await respond(send, query(scope).encode())


async def scope_dump(scope, receive, send):
    def plain(value):
        if isinstance(value, bytes):
            return value.decode("latin-1")
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    shown = {k: plain(v) for k, v in scope.items() if k not in ("extensions", "state")}
    shown["state"] = dict(scope.get("state", {}))
    shown["extensions"] = sorted(scope.get("extensions", {}))
    shown["fastcgi_role"] = scope["extensions"]["fastcgi"]["role"]
    await respond(send, json.dumps(shown).encode(), ctype=b"application/json")


async def wait_disconnect(scope, receive, send):
    """Reads the body, then waits for http.disconnect and logs when it came."""
    await read_body(receive)
    started = time.monotonic()
    message = await receive()
    sys.stderr.write("wait_disconnect: %s after %.3fs\n" % (message["type"],
                                                            time.monotonic() - started))
    sys.stderr.flush()


async def read_later(scope, receive, send):
    """Reads its body only once the file named in the query exists (the
    stdin bound: the worker must not hold what it has not read)."""
    flag = query(scope)
    while not os.path.exists(flag):
        await asyncio.sleep(0.02)
    await count_body(scope, receive, send)


async def read_in_close(scope, receive, send):
    """Answers, then reads: receive gives http.disconnect at once."""
    await respond(send, b"answered")
    message = await receive()
    assert message["type"] == "http.disconnect", message


async def fail_before_head(scope, receive, send):
    raise RuntimeError("boom before the head")


async def fail_after_head(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("boom after the head")


async def no_response(scope, receive, send):
    return


async def sse(scope, receive, send):
    """Server-sent events: the first goes out at once, the last once the
    test creates the file named in the query (so the test knows the first
    came before the application finished)."""
    flag = query(scope)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"),
                            (b"cache-control", b"no-cache")]})
    await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
    deadline = time.monotonic() + 20
    while not os.path.exists(flag) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await send({"type": "http.response.body", "body": b"data: last\n\n"})


async def filter_upper(scope, receive, send):
    """FILTER role: the FCGI_DATA stream, upper-cased (the Request itself)."""
    request = scope["extensions"]["fastcgi"]["request"]
    await read_body(receive)
    data = await request.read_data()
    await respond(send, data.upper())


async def pathsend(scope, receive, send):
    """The file named in the query, by the http.response.pathsend extension."""
    from urllib.parse import unquote
    path = unquote(query(scope))
    assert "http.response.pathsend" in scope["extensions"]
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"),
                            (b"content-length", str(os.path.getsize(path)).encode())]})
    await send({"type": "http.response.pathsend", "path": path})


async def stuck(scope, receive, send):
    """Awaits for ever (--timeout)."""
    await asyncio.sleep(3600)


async def pid(scope, receive, send):
    await respond(send, str(os.getpid()).encode())


async def host(scope, receive, send):
    """As apps.host (without its delays): "? PID", then the body."""
    body = await read_body(receive)
    await respond(send, ("? %d\n" % os.getpid()).encode() + body)


async def block(scope, receive, send):
    """?SECONDS: blocks the whole loop (an application's mistake), so new
    connections wait in the listen queue."""
    time.sleep(float(query(scope)))
    await respond(send, b"blocked")


_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
_BODY = {"type": "http.response.body", "body": b"done"}
MISUSES = {
    "start_twice": [_START, _START],
    "body_first": [_BODY],
    "unknown_type": [_START, {"type": "http.response.bogus"}],
    "bad_status": [{"type": "http.response.start", "status": 99}],
    "bad_header": [{"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1\n2")]}],
    "str_body": [_START, {"type": "http.response.body", "body": "text"}],
    "after_complete": [_START, _BODY, _BODY],
}


async def send_in_tasks(scope, receive, send):
    """Each send() run as a task: asyncio.create_task wants a coroutine
    (Python 3.6 has only ensure_future)."""
    create_task = getattr(asyncio, "create_task", asyncio.ensure_future)
    await create_task(send(_START))
    await create_task(send({"type": "http.response.body", "body": b"from tasks"}))


async def send_marked(scope, receive, send):
    """Whether send is a coroutine function, as each one that asks says:
    inspect, asyncio (before 3.14, where asgiref asks it), and asgiref's
    async_to_sync, which warns when it is not (built, not run: it cannot
    run in the loop's thread)."""
    import inspect
    import warnings
    from asgiref.sync import AsyncToSync
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AsyncToSync(send)
    said = {"inspect": inspect.iscoroutinefunction(send),
            "asyncio": asyncio.iscoroutinefunction(send) if sys.version_info < (3, 14) else None,
            "asgiref": [str(warning.message) for warning in caught]}
    await respond(send, json.dumps(said).encode())


async def task_name(scope, receive, send):
    """The name of the task the request runs in (Python 3.8 named tasks)."""
    task = asyncio.current_task() if hasattr(asyncio, "current_task") else None
    await respond(send, (task.get_name() if hasattr(task, "get_name") else "-").encode())


async def misuse(scope, receive, send):
    """Sends /misuse/NAME's messages: send() itself raises nothing, each
    await raises what the message breaks.  Logs what each await gave,
    then completes the response if it can."""
    name = scope["path"].split("/")[2]
    results = []
    for message in MISUSES[name]:
        pending = send(message)
        try:
            await pending
            results.append("ok")
        except Exception as exc:
            results.append("%s: %s" % (type(exc).__name__, exc))
    sys.stderr.write("misuse %s: %s\n" % (name, json.dumps(results)))
    sys.stderr.flush()
    if results[0] != "ok":
        await send(_START)
    if name != "after_complete":
        await send(_BODY)


ROUTES = {name: globals()[name] for name in [
    "hello", "upload", "count_body", "chunks", "download", "sleep", "wait_disconnect",
    "read_later", "read_in_close", "fail_before_head", "fail_after_head", "no_response",
    "sse", "filter_upper", "pathsend", "stuck", "pid", "host", "block", "misuse",
    "send_in_tasks", "send_marked", "task_name"]}
ROUTES["scope"] = scope_dump


async def raw_echo(request):
    """An async --raw application (the AsyncRequest itself)."""
    body = await request.read_stdin_bytes()
    request.print_stdout("Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    request.print_stdout("%s %s %d\n" % (request.method, request.path, len(body)))
    request.print_stdout(body.upper())
    await request.drain()
    request.finish(0)


async def raw_http(request):
    """async --raw: as_http_request (awaited) and send_http_response."""
    http = await request.as_http_request()
    request.send_http_response(201, [("Content-Type", "text/plain")],
                               "%s %s %s %s %r" % (http.method, http.uri, http.header("X-Thing"),
                                                   http.protocol, http.body))
