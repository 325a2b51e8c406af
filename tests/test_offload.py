"""--offload-files: a file body the web server sends itself (nginx's
X-Accel-Redirect to an internal location, lighttpd's X-LIGHTTPD-send-file),
for a WSGI wsgi.file_wrapper body and an ASGI pathsend, on both cores.  The
bytes arrive, and the worker never reads the file (its /proc/PID/io read
count, which sendfile(2) counts too, does not grow by the file's size)."""

import os

import pytest

from conftest import core_id_or_skip, need_frontend
from frontends import LIGHTTPD_BIN, Lighttpd, lighttpd_backend
from servers import NGINX_CONF, FastCGIProcess, Nginx, need_nginx

# Every test here puts a web server in front (see conftest.need_frontend).
pytestmark = pytest.mark.frontend

SIZE = 5 << 20

NGINX_OFFLOAD_CONF = NGINX_CONF.split("    server {{")[0] + """    server {{
        listen 127.0.0.1:{port};
        location / {{
            {params}
            fastcgi_pass {backend};
        }}
        location /protected/ {{
            internal;
            alias "@FILES@/";
        }}
    }}
}}
"""


def read_bytes(pid):
    """What the process has read so far (read(2), sendfile(2)...)."""
    with open("/proc/%d/io" % pid) as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


@pytest.fixture(params=["c", "py"])
def files(request, tmp_path):
    core_id_or_skip(request.param)
    shared = tmp_path / "shared files"          # a space: the URI is quoted
    shared.mkdir()
    other = tmp_path / "private"
    other.mkdir()
    content = os.urandom(SIZE)
    for directory in (shared, other):
        (directory / "big file.bin").write_bytes(content)
    os.chmod(str(tmp_path), 0o755)
    return request.param, str(shared), str(other), content


def serve(core_id, kind, header, mapping, path, tmp_path):
    args = ["--offload-files", header, "--offload-map", mapping]
    if kind == "asgi":
        return FastCGIProcess(core_id, "asgi_apps:app", "--asgi", *args,
                              tmpdir=str(tmp_path)).wait_ready()
    return FastCGIProcess(core_id, "dispatch:app", *args, env={"DOWNLOAD_FILE": path},
                          tmpdir=str(tmp_path)).wait_ready()


def url(kind, path):
    from urllib.parse import quote
    return "/pathsend?" + quote(path) if kind == "asgi" else "/file_download"


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
@pytest.mark.parametrize("where", ["mapped", "elsewhere"])
def test_offload_x_accel_redirect_through_nginx(files, tmp_path, kind, where):
    core_id, shared, other, content = files
    need_nginx()
    path = os.path.join(shared if where == "mapped" else other, "big file.bin")
    server = serve(core_id, kind, "X-Accel-Redirect", shared + "=/protected", path, tmp_path)
    nginx = None
    try:
        nginx = Nginx(server.address, NGINX_OFFLOAD_CONF.replace("@FILES@", shared))
        assert nginx.request("GET", "/hello")[0] == 200      # imports done
        before = read_bytes(server.proc.pid)
        status, headers, body = nginx.request("GET", url(kind, path))
        assert (status, len(body), body == content) == (200, SIZE, True)
        assert headers["Content-Type"] == "application/octet-stream"
        assert "X-Accel-Redirect" not in headers
        read = read_bytes(server.proc.pid) - before
        if where == "mapped":
            assert read < SIZE, "the worker read %d bytes" % read     # nginx sent it
        else:
            assert read >= SIZE         # ours, by sendfile
    finally:
        if nginx is not None:
            nginx.stop()
        server.stop()


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_offload_x_lighttpd_send_file_through_lighttpd(files, tmp_path, kind):
    core_id, shared, _, content = files
    need_frontend("lighttpd", None if LIGHTTPD_BIN else "lighttpd is not installed")
    path = os.path.join(shared, "big file.bin")
    server = serve(core_id, kind, "X-LIGHTTPD-send-file", shared, path, tmp_path)
    lighttpd = None
    try:
        lighttpd = Lighttpd({"app": lighttpd_backend(server.address, **{"x-sendfile": True})})
        assert lighttpd.request("GET", "/hello")[0] == 200
        before = read_bytes(server.proc.pid)
        status, headers, body = lighttpd.request("GET", url(kind, path))
        assert (status, len(body), body == content) == (200, SIZE, True)
        assert read_bytes(server.proc.pid) - before < SIZE
    finally:
        if lighttpd is not None:
            lighttpd.stop()
        server.stop()


def test_offload_needs_a_map(core_id, tmp_path):
    server = FastCGIProcess(core_id, "dispatch:app", "--offload-files", "X-Accel-Redirect",
                            "--offload-map", "/srv", tmpdir=str(tmp_path))
    assert server.proc.wait(20) == 2
    assert "X-Accel-Redirect needs DIR=URI-PREFIX" in server.log()
    server.stop()
