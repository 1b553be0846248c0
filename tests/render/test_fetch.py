"""The fetch guard against real servers: a loopback HTTP server in a thread and the session's
S3 server (for a presigned PUT). Nothing is mocked: addresses are resolved, connections made."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from minio import Minio

from deploy.local.seaweed import SeaweedS3
from services.render.imaging.fetch import FetchPolicy, fetch_url, put_url
from services.runtime.config import ImagingConfig
from services.runtime.errors import ConfigError, InputUnreachable

BODY = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        del format, args  # keep the test output quiet

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/hops/"):
            # /hops/N redirects N times before landing on the image.
            left = int(path.rsplit("/", 1)[-1])
            self._redirect(f"/hops/{left - 1}" if left > 1 else "/files/cat%20photo.png")
        elif path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif path == "/to-ip":
            port = cast(http.server.HTTPServer, self.server).server_port
            self._redirect(f"http://127.0.0.1:{port}/files/cat.png")
        elif path.startswith("/files/"):
            self.send_response(200)
            self.send_header("Content-Type", "image/png; charset=binary")
            self.send_header("Content-Length", str(len(BODY)))
            self.send_header("X-Seen-Host", self.headers.get("Host", ""))
            self.end_headers()
            self.wfile.write(BODY)
        elif path == "/host":
            seen = self.headers.get("Host", "").encode()
            if self.headers.get("Accept-Encoding") != "identity":
                seen = b"asked for a transfer coding"
            self.send_response(200)
            self.send_header("Content-Length", str(len(seen)))
            self.end_headers()
            self.wfile.write(seen)
        elif path == "/big-declared":
            # Declares more than the cap and sends nothing: refused from the header alone.
            self.send_response(200)
            self.send_header("Content-Length", str(10 * 1024 * 1024))
            self.end_headers()
            self.close_connection = True
        elif path == "/big-streamed":
            # No Content-Length: the cap must hold while the body streams.
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for _ in range(64):
                    self.wfile.write(b"x" * 16384)
            except OSError:
                pass  # the client hung up at its cap, as it should
        elif path in ("/gzipped", "/gzip-bomb"):
            # Compressed although the client asked for identity: still decoded, and the cap
            # counts what it decodes to (2 MiB of zeros are 2 KiB of gzip).
            raw = BODY if path == "/gzipped" else bytes(2 * 1024 * 1024)
            packed = gzip.compress(raw)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(packed)))
            self.end_headers()
            self.wfile.write(packed)
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            # Chunks of one byte to several kilobytes, so small ones are gathered and large
            # ones kept as they come.
            start, sizes = 0, [1, 700, 5000, 3, 3000]
            while start < len(BODY):
                part = BODY[start : start + sizes[start % len(sizes)]]
                start += len(part)
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/slow":
            time.sleep(1.5)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture(scope="module")
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def _url(server: http.server.ThreadingHTTPServer, path: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.server_address[1]}{path}"


def _policy(allow: str = "", *, max_bytes: int = 1 << 20, timeout: float = 5.0) -> FetchPolicy:
    return FetchPolicy.parse(allow, max_bytes=max_bytes, timeout_seconds=timeout)


# --- the allow-list ----------------------------------------------------------------------------


def test_policy_from_config_and_bad_entries() -> None:
    policy = FetchPolicy.from_config(
        ImagingConfig(
            fetch_allowlist=" localhost , 10.0.0.0/8,::1 ",
            fetch_max_bytes=123,
            fetch_timeout_seconds=4.5,
        )
    )
    assert policy.hosts == frozenset({"localhost"})
    assert [str(n) for n in policy.networks] == ["10.0.0.0/8", "::1/128"]
    assert (policy.max_bytes, policy.timeout_seconds) == (123, 4.5)
    for bad in ("10.0.0.0/99", "exa mple.com", "a..b", "http://x/"):
        with pytest.raises(ConfigError, match="KILN_FETCH_ALLOWLIST") as raised:
            FetchPolicy.parse(f"localhost,{bad}", max_bytes=1, timeout_seconds=1)
        assert bad in str(raised.value)


# --- addresses ---------------------------------------------------------------------------------


async def test_loopback_is_refused_without_the_allow_list(
    server: http.server.ThreadingHTTPServer,
) -> None:
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(InputUnreachable) as raised:
            await fetch_url(_url(server, "/files/cat.png?token=s3cr3t", host), _policy())
        message = str(raised.value)
        assert "KILN_FETCH_ALLOWLIST" in message and "127.0.0.1" in message
        assert "s3cr3t" not in message and "token" not in message
        assert raised.value.field == "input"


@pytest.mark.parametrize("allow", ["127.0.0.1", "127.0.0.0/8", "localhost", "LOCALHOST."])
async def test_an_allow_listed_loopback_server_is_fetched(
    server: http.server.ThreadingHTTPServer, allow: str
) -> None:
    host = "localhost" if allow.lower().startswith("localhost") else "127.0.0.1"
    fetched = await fetch_url(_url(server, "/files/cat%20photo.png?x=1", host), _policy(allow))
    assert fetched.data == BODY
    assert fetched.content_type == "image/png"
    assert fetched.name == "cat photo.png"


async def test_the_real_host_header_is_sent(server: http.server.ThreadingHTTPServer) -> None:
    # The connection goes to the checked IP; the server still sees the name it was asked by.
    fetched = await fetch_url(_url(server, "/host", "localhost"), _policy("localhost"))
    assert fetched.data.decode() == f"localhost:{server.server_address[1]}"


@pytest.mark.parametrize(
    "target",
    [
        "http://10.1.2.3/a.png",
        "http://192.168.0.10/a.png",
        "http://172.16.5.4/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/a.png",
        "http://0.0.0.0/a.png",
        "http://224.0.0.1/a.png",
        "http://240.0.0.1/a.png",
        "http://[::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://[::ffff:169.254.169.254]/a.png",
        "http://[fe80::1]/a.png",
        "http://[2002:7f00:1::]/a.png",  # 6to4 of 127.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/a.png",  # NAT64 of 169.254.169.254
        "http://[64:ff9b:1::1]/a.png",  # NAT64 for local use
        "http://[fd00::1]/a.png",
        "http://[::]/a.png",
        "http://[::7f00:1]/a.png",  # IPv4-compatible 127.0.0.1, which is_global calls global
        "http://[::ffff:0:7f00:1]/a.png",  # IPv4-translated
        "http://[fec0::1]/a.png",  # site-local
        "http://2130706433/a.png",
        "http://127.1/a.png",
    ],
)
async def test_non_public_addresses_are_refused(target: str) -> None:
    # Refused before any connection: nothing listens on most of these anyway.
    with pytest.raises(InputUnreachable, match="KILN_FETCH_ALLOWLIST"):
        await fetch_url(target, _policy(timeout=2))


async def test_an_allow_listed_network_does_not_open_the_rest() -> None:
    with pytest.raises(InputUnreachable, match="KILN_FETCH_ALLOWLIST"):
        await fetch_url("http://10.1.2.3/a.png", _policy("127.0.0.0/8,localhost"))


@pytest.mark.parametrize(
    "target", ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://x/", "example.com/a"]
)
async def test_only_http_and_https(target: str) -> None:
    with pytest.raises(InputUnreachable, match="only http and https"):
        await fetch_url(target, _policy())


async def test_unresolvable_host_is_unreachable() -> None:
    with pytest.raises(InputUnreachable, match="does not resolve"):
        await fetch_url("http://no-such-host.invalid/a.png", _policy())


# --- redirects ---------------------------------------------------------------------------------


async def test_redirects_are_followed_up_to_five(server: http.server.ThreadingHTTPServer) -> None:
    fetched = await fetch_url(_url(server, "/hops/5"), _policy("127.0.0.1"))
    assert fetched.data == BODY and fetched.name == "cat photo.png"
    with pytest.raises(InputUnreachable, match="more than 5 redirects"):
        await fetch_url(_url(server, "/hops/6"), _policy("127.0.0.1"))


async def test_each_hop_is_checked(server: http.server.ThreadingHTTPServer) -> None:
    with pytest.raises(InputUnreachable, match=r"169\.254\.169\.254.*KILN_FETCH_ALLOWLIST"):
        await fetch_url(_url(server, "/to-metadata"), _policy("127.0.0.1"))
    # "localhost" is allowed by name; a hop to the bare IP is not.
    with pytest.raises(InputUnreachable, match="KILN_FETCH_ALLOWLIST"):
        await fetch_url(_url(server, "/to-ip", "localhost"), _policy("localhost"))


# --- size, time, status ------------------------------------------------------------------------


async def test_size_cap_with_and_without_content_length(
    server: http.server.ThreadingHTTPServer,
) -> None:
    policy = _policy("127.0.0.1", max_bytes=64 * 1024, timeout=5)
    started = time.perf_counter()
    with pytest.raises(InputUnreachable, match="KILN_FETCH_MAX_BYTES"):
        await fetch_url(_url(server, "/big-declared"), policy)
    # Refused from the header: the 10 MiB never come, so waiting for them would time out.
    assert time.perf_counter() - started < 2
    with pytest.raises(InputUnreachable, match="KILN_FETCH_MAX_BYTES"):
        await fetch_url(_url(server, "/big-streamed"), policy)
    exact = _policy("127.0.0.1", max_bytes=len(BODY))
    assert (await fetch_url(_url(server, "/files/a.png"), exact)).data == BODY


async def test_the_body_arrives_whole_however_it_is_framed(
    server: http.server.ThreadingHTTPServer,
) -> None:
    policy = _policy("127.0.0.1", max_bytes=len(BODY))
    assert (await fetch_url(_url(server, "/chunked"), policy)).data == BODY
    assert (await fetch_url(_url(server, "/gzipped"), policy)).data == BODY
    with pytest.raises(InputUnreachable, match="KILN_FETCH_MAX_BYTES"):
        await fetch_url(_url(server, "/gzip-bomb"), _policy("127.0.0.1", max_bytes=1 << 20))


async def test_one_overall_timeout(server: http.server.ThreadingHTTPServer) -> None:
    started = time.perf_counter()
    with pytest.raises(InputUnreachable, match="no answer within"):
        await fetch_url(_url(server, "/slow"), _policy("127.0.0.1", timeout=0.3))
    assert time.perf_counter() - started < 1.2


async def test_an_error_status_is_unreachable(server: http.server.ThreadingHTTPServer) -> None:
    with pytest.raises(InputUnreachable, match="404") as raised:
        await fetch_url(_url(server, "/missing.png?sig=abc"), _policy("127.0.0.1"))
    assert "sig=abc" not in str(raised.value)


async def test_a_closed_port_is_unreachable() -> None:
    with pytest.raises(InputUnreachable, match="the connection failed"):
        await fetch_url("http://127.0.0.1:1/a.png", _policy("127.0.0.1"))


# --- TLS ---------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_tls_names_the_real_host_and_checks_its_certificate(tmp_path: Path) -> None:
    # The connection goes to the pinned IP, yet the server must be asked for "localhost" (SNI),
    # and a certificate no trusted CA signed must still be refused.
    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    asked: list[str | None] = []
    context.sni_callback = lambda _sock, server_name, _ctx: asked.append(server_name)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(InputUnreachable, match="TLS certificate is not valid") as raised:
            await fetch_url(f"https://localhost:{port}/a.png", _policy("localhost"))
        assert raised.value.field == "input"
    finally:
        server.close()
    assert asked == ["localhost"]


# --- PUT ---------------------------------------------------------------------------------------


async def test_put_to_a_presigned_url(s3: SeaweedS3) -> None:
    client = Minio(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, secure=False)
    bucket = f"fetch-{uuid.uuid4().hex[:12]}"
    client.make_bucket(bucket)
    url = client.presigned_put_object(bucket, "out/edited.png", expires=timedelta(minutes=5))

    # S3 on loopback is refused like any other private address...
    with pytest.raises(InputUnreachable, match="KILN_FETCH_ALLOWLIST") as raised:
        await put_url(url, BODY, "image/png", _policy())
    assert "X-Amz-Signature" not in str(raised.value)
    assert str(raised.value).startswith("output ")
    assert raised.value.field == "output.destination"

    # ...and written once allow-listed, through the signed Host header.
    await put_url(url, BODY, "image/png", _policy(s3.endpoint.rsplit(":", 1)[0]))
    response = client.get_object(bucket, "out/edited.png")
    try:
        assert response.read() == BODY
        assert response.headers["Content-Type"] == "image/png"
    finally:
        response.close()
        response.release_conn()

    # A refused write (a bad signature) names the status, not the signature.
    with pytest.raises(InputUnreachable, match="403") as raised:
        await put_url(
            url.replace("X-Amz-Signature=", "X-Amz-Signature=0"),
            b"x",
            "image/png",
            _policy("127.0.0.1"),
        )
    assert "X-Amz-Signature" not in str(raised.value)
