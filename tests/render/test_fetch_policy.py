"""Input fetching against a real loopback HTTP server: the address rules, redirects, caps."""

from __future__ import annotations

import http.server
import ipaddress
import threading
import time
from collections.abc import Iterator

import pytest

from services.render.imaging.fetch import FetchPolicy, fetch_url, is_public, put_url
from services.runtime.errors import ConfigError, InputUnreachable

BODY = b"\x89PNG" + b"x" * 5000


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        del format, args

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/redirect/"):
            hops = int(path.rsplit("/", 1)[-1])
            self.send_response(302)
            target = f"/redirect/{hops - 1}" if hops > 1 else "/image.png"
            self.send_header("Location", target)
            self.end_headers()
        elif path == "/to-private":
            self.send_response(302)
            self.send_header("Location", "http://10.1.2.3/secret")
            self.end_headers()
        elif path == "/image.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif path == "/chunked":
            # No Content-Length: the cap must hold while streaming.
            self.send_response(200)
            self.end_headers()
            for _ in range(10):
                self.wfile.write(BODY)
            self.close_connection = True
        elif path == "/slow":
            time.sleep(2)
            self.send_response(200)
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.server.received = self.rfile.read(length)  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()


@pytest.fixture(scope="module")
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def url(server: http.server.ThreadingHTTPServer, path: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.server_address[1]}{path}"


def policy(allow: str = "127.0.0.1", max_bytes: int = 1 << 20, timeout: float = 5) -> FetchPolicy:
    return FetchPolicy.parse(allow, max_bytes=max_bytes, timeout_seconds=timeout)


@pytest.mark.parametrize("allow", ["127.0.0.1", "127.0.0.0/8", "localhost"])
async def test_an_allow_listed_loopback_server_is_fetched(
    server: http.server.ThreadingHTTPServer, allow: str
) -> None:
    host = "localhost" if allow == "localhost" else "127.0.0.1"
    fetched = await fetch_url(url(server, "/image.png?sig=secret", host), policy(allow))
    assert fetched.data == BODY
    assert fetched.content_type == "image/png" and fetched.name == "image.png"


async def test_loopback_is_refused_without_the_allow_list(
    server: http.server.ThreadingHTTPServer,
) -> None:
    with pytest.raises(InputUnreachable) as refused:
        await fetch_url(url(server, "/image.png?token=hunter2"), policy(""))
    assert "KILN_FETCH_ALLOWLIST" in refused.value.message
    assert "hunter2" not in refused.value.message  # query strings may hold secrets


@pytest.mark.parametrize(
    "target",
    [
        "http://10.0.0.7/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/a.jpg",
        "http://[::ffff:127.0.0.1]/a.jpg",
        "http://100.64.0.1/a.jpg",
        "http://0.0.0.0/a.jpg",
        "http://224.0.0.1/a.jpg",
    ],
)
async def test_non_public_addresses_are_refused_before_connecting(target: str) -> None:
    with pytest.raises(InputUnreachable, match="KILN_FETCH_ALLOWLIST"):
        await fetch_url(target, policy("192.0.2.0/24"))


@pytest.mark.parametrize("target", ["ftp://example.com/a.jpg", "file:///etc/passwd", "gopher://x/"])
async def test_only_http_and_https(target: str) -> None:
    with pytest.raises(InputUnreachable, match="only http and https"):
        await fetch_url(target, policy())


async def test_redirects_are_followed_and_checked(server: http.server.ThreadingHTTPServer) -> None:
    assert (await fetch_url(url(server, "/redirect/3"), policy())).data == BODY
    with pytest.raises(InputUnreachable, match="more than 5 redirects"):
        await fetch_url(url(server, "/redirect/7"), policy())
    with pytest.raises(InputUnreachable, match=r"10\.1\.2\.3"):
        await fetch_url(url(server, "/to-private"), policy())


async def test_size_cap_with_and_without_content_length(
    server: http.server.ThreadingHTTPServer,
) -> None:
    with pytest.raises(InputUnreachable, match="larger than 1000 bytes"):
        await fetch_url(url(server, "/image.png"), policy(max_bytes=1000))
    with pytest.raises(InputUnreachable, match="larger than 20000 bytes"):
        await fetch_url(url(server, "/chunked"), policy(max_bytes=20_000))


async def test_status_and_timeout(server: http.server.ThreadingHTTPServer) -> None:
    with pytest.raises(InputUnreachable, match="answered 404"):
        await fetch_url(url(server, "/missing.jpg"), policy())
    with pytest.raises(InputUnreachable, match=r"no answer within 0\.5 s"):
        await fetch_url(url(server, "/slow"), policy(timeout=0.5))
    with pytest.raises(InputUnreachable, match="does not resolve"):
        await fetch_url("http://no-such-host.invalid/a.jpg", policy())


async def test_put_follows_the_same_rules(server: http.server.ThreadingHTTPServer) -> None:
    await put_url(url(server, "/out.png"), b"payload", "image/png", policy())
    assert server.received == b"payload"  # type: ignore[attr-defined]
    with pytest.raises(InputUnreachable, match="KILN_FETCH_ALLOWLIST"):
        await put_url(url(server, "/out.png"), b"payload", "image/png", policy(""))


def test_the_allow_list_is_parsed_strictly() -> None:
    parsed = policy("images.internal, 10.0.0.0/8 ,::1")
    assert parsed.allows("images.internal", ipaddress.ip_address("192.168.1.1"))
    assert parsed.allows("x", ipaddress.ip_address("10.9.9.9"))
    assert parsed.allows("x", ipaddress.ip_address("::1"))
    assert not parsed.allows("x", ipaddress.ip_address("192.168.1.1"))
    with pytest.raises(ConfigError, match="bad/entry"):
        policy("bad/entry")
    assert is_public(ipaddress.ip_address("93.184.216.34"))
    assert not is_public(ipaddress.ip_address("::ffff:10.0.0.1"))
