"""No HTTP client of ours follows a redirect with credentials (issue 16 #6).

Seen before: a 307 on Locus `/oauth/token` made the daemon post client_id, client_secret,
username and password to the host it named, 8 times in 6 s. Here a hostile server redirects
(307, to a second "thief" server on loopback that records everything it gets) and the clients
must (1) send the thief nothing, (2) fail with an error that names the target. Every client
that opens an HTTP request is also checked in its source: `allow_redirects=False` on each.
"""

from __future__ import annotations

import ast
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway.config.loader import parse_config
from gateway.net.policy import Outcome, classify_response
from gateway.sources.locus.auth import LocusApiError
from gateway.sources.locus.client import LocusClient
from gateway.sources.locus.config import LocusConfig
from tests.fakes.loopback import LoopbackServer
from tests.fixtures.locus import CLIENT_SECRET, PASSWORD, SECRETS, fast_clock, locus_yaml
from tests.paths import REPO


class Thief(LoopbackServer):
    """Records every request it gets (what a redirect would hand over)."""

    def __init__(self) -> None:
        self.host, self.port = "127.0.0.1", 0
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            (request.method, request.path_qs, dict(request.headers), await request.read())
        )
        return web.json_response({"access_token": "stolen", "expires_in": 3600})


class Redirector(LoopbackServer):
    """Answers 307 to the thief for `redirect` paths (all: None); a token otherwise."""

    def __init__(self, target: str, redirect: set[str] | None = None) -> None:
        self.host, self.port = "127.0.0.1", 0
        self.target = target
        self.redirect = redirect

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.redirect is None or request.path in self.redirect:
            raise web.HTTPTemporaryRedirect(self.target + request.path_qs)
        body = {"access_token": "good", "refresh_token": "r", "expires_in": 3600}
        return web.Response(text=json.dumps(body), content_type="application/json")


@pytest.fixture
async def thief() -> AsyncIterator[Thief]:
    async with Thief() as server:
        yield server


def locus_section(url: str) -> LocusConfig:
    text = 'gateway: {id: site, data_dir: "/tmp/mg"}\n' + locus_yaml(
        url, "      pv-roof: {component_id: 54369}\n"
    )
    section = parse_config(text, "site.yaml", SECRETS).sources.locus
    assert isinstance(section, LocusConfig)
    return section


@pytest.mark.parametrize("redirected", ["/oauth/token", "/components/54369/data"])
async def test_locus_never_follows_a_redirect_with_its_credentials(
    thief: Thief, redirected: str
) -> None:
    async with Redirector(thief.url, {redirected}) as hostile:
        client = LocusClient(locus_section(hostile.url), fast_clock())
        async with client:
            with pytest.raises(LocusApiError) as info:
                await client.get("/components/54369/data", {"gran": "latest"})
    assert thief.seen == [], "credentials or a token went to the host a redirect named"
    message = str(info.value)
    assert "307" in message and f"{thief.url}{redirected}" in message
    assert "not followed" in message
    assert CLIENT_SECRET not in message and PASSWORD not in message


def test_a_redirect_verdict_names_its_target_without_query_or_userinfo() -> None:
    verdict = classify_response(
        302, {"Location": "https://u:p@other.example/login?next=x&key=secret"}, b"moved"
    )
    assert verdict.outcome is Outcome.RETRY
    assert "redirect to https://other.example/login not followed" in verdict.detail
    assert "secret" not in verdict.detail and "u:p" not in verdict.detail


def _request_calls(tree: ast.AST) -> list[ast.Call]:
    """`async with <x>.get/post/put/delete/request(...)`: how every client opens a request."""
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncWith):
            for item in node.items:
                call = item.context_expr
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr in {"get", "post", "put", "delete", "patch", "request"}
                ):
                    calls.append(call)
    return calls


def test_every_http_request_in_the_gateway_refuses_redirects() -> None:
    found = []
    for path in sorted((REPO / "gateway").rglob("*.py")):
        for call in _request_calls(ast.parse(path.read_text(), str(path))):
            where = f"{Path(path).relative_to(REPO)}:{call.lineno}"
            found.append(where)
            keywords = {k.arg: k.value for k in call.keywords}
            value = keywords.get("allow_redirects")
            assert isinstance(value, ast.Constant) and value.value is False, (
                f"{where}: an HTTP request without allow_redirects=False"
            )
    # Wattics (2), PTS, MTS, Locus data and token, the delivery core: every client is seen.
    assert len(found) >= 6, found
