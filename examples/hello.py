"""The smallest WSGI application: ``fastfcgi --fcgi 127.0.0.1:9000 examples.hello:app``."""


def app(environ, start_response):
    body = b"Hello, world!"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
