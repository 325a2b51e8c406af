"""One application for the integration stack: /NAME/... runs apps.NAME
(with PATH_INFO shifted to SCRIPT_NAME for /flask)."""

import apps


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    for prefix in ("/keep", "/stream", "/tls"):
        if path.startswith(prefix + "/"):
            path = path[len(prefix):]
    name = path.split("/")[1] if path.count("/") >= 1 else ""
    if name == "flask":
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + path[:6]
        environ["PATH_INFO"] = path[6:]
        return apps.flask(environ, start_response)
    if name == "environ":
        name = "environ_dump"
    target = getattr(apps, name, None) if name and not name.startswith("_") else None
    if target is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such app\n"]
    return target(environ, start_response)
