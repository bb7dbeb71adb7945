"""The API's pages for people: Swagger UI at /docs and ReDoc at /redoc.

FastAPI's own pages load their scripts, styles and favicon from CDNs, which leaves them blank
on a machine without internet access. These pages load them from the API itself, out of the
files the fastapi-offline package ships, so nothing is fetched from anywhere else.
"""

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

SWAGGER_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
# The package's folder of Swagger UI's and ReDoc's builds and FastAPI's favicon.
ASSETS_PACKAGE = ("fastapi_offline", "static")
# The browser refuses anything from another origin. ReDoc's sidebar always asks a CDN for
# Redocly's logo (and hides it when that fails); Swagger UI's start-up script is inline, and
# both style their elements inline.
ONLY_THIS_ORIGIN = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "worker-src 'self' blob:",
    ]
)


def install_docs(app: FastAPI) -> None:
    """Serves /docs, /redoc and their assets; none of them appears in the OpenAPI schema."""
    openapi_url = app.openapi_url
    if openapi_url is None:
        return
    # An entered API key is kept in the browser's storage, so a reload does not forget it.
    swagger_parameters = {**(app.swagger_ui_parameters or {}), "persistAuthorization": True}

    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")

    @app.get(SWAGGER_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        """Swagger UI: every operation, and a form to call it."""
        root = _root_path(request)
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            # Every scheme is a bearer token: no OAuth2 flow ever returns to a redirect page.
            oauth2_redirect_url=None,
            swagger_ui_parameters=swagger_parameters,
        )
        page.headers["Content-Security-Policy"] = ONLY_THIS_ORIGIN
        return page

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        """ReDoc: the API's reference, to read."""
        root = _root_path(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = ONLY_THIS_ORIGIN
        return page


def _root_path(request: Request) -> str:
    # Behind a proxy that serves the API under a prefix, the page's links need that prefix.
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")
