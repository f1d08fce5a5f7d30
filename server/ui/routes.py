"""Routes of the web UI: `/ui/` and its three static files, and GET `/` from a browser redirected there.

The files are read once from the installed package and served from memory with an ETag (a revalidation
answers 304), `Cache-Control: no-cache` (an upgraded server is seen at once) and a Content-Security-Policy
that allows only this origin's script and style files: an attacker-controlled string (a run name, a label,
a log line) that slipped into the page as markup could still not run script or load anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONTENT_TYPES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_bundle() -> dict[str, StaticFile]:
    """The bundle's files by name (a fixed list: no path from a request ever reaches the file system)."""
    folder = files("server.ui").joinpath("static")
    bundle: dict[str, StaticFile] = {}
    for name, content_type in CONTENT_TYPES.items():
        body = folder.joinpath(name).read_bytes()
        bundle[name] = StaticFile(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return bundle


def wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


def serve_file(request: web.Request, file: StaticFile) -> web.Response:
    if file.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers={**SECURITY_HEADERS, "ETag": file.etag})
    return web.Response(body=file.body, content_type=file.content_type, charset="utf-8",
                        headers={**SECURITY_HEADERS, "ETag": file.etag})


def install(app: web.Application, root_get: Handler) -> None:
    """GET `/ui` (redirect), `/ui/` and `/ui/<file>`; GET `/` redirects browsers, else `root_get` answers."""
    bundle = load_bundle()

    async def index(request: web.Request) -> web.Response:
        return serve_file(request, bundle["index.html"])

    async def asset(request: web.Request) -> web.Response:
        file = bundle.get(request.match_info["name"])
        if file is None or request.match_info["name"] == "index.html":
            raise web.HTTPNotFound(text="Not found.", headers=SECURITY_HEADERS)
        return serve_file(request, file)

    async def to_ui(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    async def root(request: web.Request) -> web.StreamResponse:
        if wants_html(request):
            raise web.HTTPFound("/ui/")
        return await root_get(request)

    async def no_icon(_request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})

    app.router.add_get("/", root)
    app.router.add_get("/favicon.ico", no_icon)  # browsers ask for it; an error would fill their console
    app.router.add_get("/ui", to_ui)
    app.router.add_get("/ui/", index)
    app.router.add_get("/ui/{name}", asset)
