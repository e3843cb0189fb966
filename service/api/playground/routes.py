"""The playground: one static page (HTML, CSS, JavaScript) that calls the public API from the browser.

Plain routes for a fixed set of files, so nothing else under static/ can be reached and no file system path comes
from the URL. The page is off when VAE_PLAYGROUND=false: create_app then leaves these routes out (404)."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parents[2] / "static" / "playground"
# Everything the page loads comes from this service; the browser refuses anything else (and inline scripts).
CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
HEADERS = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}
ASSETS = {"playground.css": "text/css; charset=utf-8", "playground.js": "text/javascript; charset=utf-8"}
# Paths that access control must leave open: the page asks for the API key itself, and holds no model data.
PAGE_PATHS = frozenset({"/", "/playground", *(f"/playground/{name}" for name in ASSETS)})

router = APIRouter(tags=["playground"], include_in_schema=False)


def _file(name: str, media_type: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=HEADERS)


@router.get("/")
@router.get("/playground")
async def page() -> FileResponse:
    """The playground page."""
    return _file("index.html", "text/html; charset=utf-8")


def _asset_route(name: str, media_type: str) -> None:
    async def asset() -> FileResponse:
        return _file(name, media_type)

    router.add_api_route(f"/playground/{name}", asset, methods=["GET"], name=f"playground_{name}")


for _name, _media_type in ASSETS.items():
    _asset_route(_name, _media_type)
