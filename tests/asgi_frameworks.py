"""Starlette and FastAPI applications for the tests that serve them through
nginx and compare each response with the framework's own TestClient; the
raw ASGI test applications are mounted at /raw."""

from typing import Optional

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (FileResponse, JSONResponse, PlainTextResponse,
                                 RedirectResponse, StreamingResponse)
from starlette.routing import Mount, Route

import asgi_apps


async def hello(request):
    return PlainTextResponse("Hello from Starlette")


async def echo(request: Request):
    body = await request.body()
    return JSONResponse({
        "method": request.method, "path": request.url.path,
        "root_path": request.scope.get("root_path"),
        "query": dict(request.query_params), "size": len(body),
        "content_type": request.headers.get("content-type"),
        "x_custom": request.headers.get("x-custom"), "cookies": request.cookies,
    })


async def form(request: Request):
    data = await request.form()
    return JSONResponse({key: str(value) for key, value in data.items()})


async def stream(request):
    async def numbers():
        for i in range(100):
            yield ("%d\n" % i).encode()
    return StreamingResponse(numbers(), media_type="text/plain")


async def cookie(request):
    response = PlainTextResponse("cookie set")
    response.set_cookie("session", "abc", httponly=True, path="/")
    return response


async def redirect(request):
    return RedirectResponse("/starlette/hello", status_code=302)


async def file(request):
    """FileResponse: by http.response.pathsend where the server offers it."""
    return FileResponse(__file__, media_type="text/x-python")


async def teapot(request):
    return PlainTextResponse("short and stout", status_code=418, headers={"X-Teapot": "yes"})


starlette_app = Starlette(routes=[
    Route("/hello", hello), Route("/echo", echo, methods=["GET", "POST", "PUT"]),
    Route("/form", form, methods=["POST"]), Route("/stream", stream),
    Route("/cookie", cookie), Route("/redirect", redirect), Route("/teapot", teapot), Route("/file", file),
])

fastapi_app = FastAPI(openapi_url=None)


class Item(BaseModel):
    name: str
    price: float
    tags: list = []


@fastapi_app.get("/items/{item_id}")
async def read_item(item_id: int, q: Optional[str] = None):
    if item_id == 404:
        raise HTTPException(status_code=404, detail="no such item")
    return {"item_id": item_id, "q": q}


@fastapi_app.post("/items")
async def create_item(item: Item):
    return {"created": item.name, "price_with_tax": round(item.price * 1.2, 2),
            "tags": item.tags}


@fastapi_app.get("/sync")
def sync_view():
    return {"ran": "in a thread"}


app = Starlette(routes=[Mount("/starlette", starlette_app), Mount("/fastapi", fastapi_app),
                        Mount("/raw", asgi_apps.app)])
