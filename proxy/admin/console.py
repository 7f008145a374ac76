"""The operator console: one self-contained page served at ``/console`` on the admin port.

The page is a shell without data. It asks the operator for the admin token and sends it as a
Bearer header on every ``/v1`` call it makes, so serving the page needs no credential and shows
nothing. Agent-supplied strings reach it only through those calls, so the page is served under a
Content-Security-Policy that allows nothing but this origin and its own inline script and style
(by a fresh nonce per response): even a rendering bug could not load or run anything else.
"""

from __future__ import annotations

import secrets
from importlib import resources

from aiohttp import web

__all__ = ["CONSOLE_PATH", "ConsolePage", "console_routes"]

CONSOLE_PATH = "/console"
NONCE_MARK = "__CSP_NONCE__"
_TEMPLATE = "static/console.html"


def content_security_policy(nonce: str) -> str:
    """Only this origin for fetches; only the page's own nonce-marked script and style run."""
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'nonce-{nonce}'",
            f"style-src 'nonce-{nonce}'",
            "connect-src 'self'",
            "img-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


class ConsolePage:
    """The console HTML, read once from the package, with a new CSP nonce for every response."""

    def __init__(self, template: str | None = None) -> None:
        if template is None:
            template = resources.files("proxy.admin").joinpath(_TEMPLATE).read_text(encoding="utf-8")
        if template.count(NONCE_MARK) != 2:  # exactly the one <style> and the one <script>
            raise RuntimeError(f"console template must mark its style and script with {NONCE_MARK}")
        self._template = template

    def render(self, nonce: str) -> str:
        return self._template.replace(NONCE_MARK, nonce)

    async def handle(self, request: web.Request) -> web.Response:
        nonce = secrets.token_urlsafe(18)
        return web.Response(
            text=self.render(nonce),
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": content_security_policy(nonce),
                "X-Frame-Options": "DENY",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
                "Cross-Origin-Opener-Policy": "same-origin",
                "Cross-Origin-Resource-Policy": "same-origin",
            },
        )


def console_routes() -> list[web.RouteDef]:
    """The route the admin app registers: GET (and HEAD) ``/console``."""
    return [web.get(CONSOLE_PATH, ConsolePage().handle)]
