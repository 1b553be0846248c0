"""Fetching inputs from URLs without becoming a proxy into the network Kiln runs in.

An edit's `input` (and a `web_folder` storage) names a URL that Kiln fetches on the caller's
behalf, which makes every such URL a server-side request the caller controls. So:

- only `http` and `https`;
- the host is resolved here, and refused when any of its addresses is not globally routable
  (loopback, private, link-local including cloud metadata at 169.254.169.254, CGNAT, multicast,
  reserved, unspecified, and IPv4-mapped forms of those), unless the host name or the address
  is on the allow-list `KILN_FETCH_ALLOWLIST` (host names and CIDR ranges);
- the connection goes to the address that was checked (the URL carries the IP, the request the
  real `Host` header and TLS server name), so a second DNS answer cannot swap in another one;
- redirects are followed by hand, at most five, each hop checked the same way;
- the body streams against a byte cap (a larger `Content-Length` is refused at once), and the
  whole fetch has one time limit.

Every refusal is `InputUnreachable` (Claid's 400) with a message that names the URL without its
query string, which may carry credentials.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urljoin, urlsplit

import certifi
import httpx

from services.runtime.errors import ConfigError, InputUnreachable

if TYPE_CHECKING:
    from services.runtime.config import ImagingConfig

MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_MIN_KEPT_CHUNK = 4096
_HOST_NAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class FetchedFile:
    """A fetched input: its bytes, its content type and the name it is known by."""

    data: bytes
    content_type: str
    name: str


@dataclass(frozen=True)
class FetchPolicy:
    """What may be fetched, how much and for how long."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    max_bytes: int = 64 * 1024 * 1024
    timeout_seconds: float = 30.0

    @classmethod
    def from_config(cls, config: ImagingConfig) -> FetchPolicy:
        return cls.parse(
            config.fetch_allowlist,
            max_bytes=config.fetch_max_bytes,
            timeout_seconds=config.fetch_timeout_seconds,
        )

    @classmethod
    def parse(cls, allowlist: str, *, max_bytes: int, timeout_seconds: float) -> FetchPolicy:
        """The policy of a comma-separated allow-list; ConfigError names a bad entry."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in allowlist.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            # A host name is dot-separated labels of letters, digits, '-' and '_'; anything else
            # (a URL, a typo'd range, spaces) is a mistake better caught at start than ignored.
            if not _HOST_NAME.fullmatch(entry.rstrip(".")):
                raise ConfigError(
                    f"KILN_FETCH_ALLOWLIST entry {raw.strip()!r} is neither a host nor a CIDR range"
                )
            hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks), max_bytes, timeout_seconds)

    def allows(self, host: str, address: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.hosts:
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(
            address in network for network in self.networks if network.version == address.version
        )


@functools.cache
def _tls() -> ssl.SSLContext:
    # Built once: loading the CA bundle costs tens of milliseconds, more than a small fetch.
    return ssl.create_default_context(cafile=certifi.where())


def _client(timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(follow_redirects=False, timeout=timeout, verify=_tls())


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def is_public(address: IPAddress) -> bool:
    """Whether `address` is globally routable. IPv6 forms that carry an IPv4 address
    (IPv4-mapped, 6to4, NAT64) are judged by that address: a gateway would deliver them there."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return False
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address.sixtofour is not None:
            address = address.sixtofour
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        elif address.is_reserved or address.is_site_local:
            # `is_global` (as of 3.11) calls IPv4-compatible (::7f00:1), IPv4-translated
            # (::ffff:0:a.b.c.d) and site-local (fec0::/10) addresses global; none is.
            return False
    return bool(address.is_global) and not address.is_multicast and not address.is_reserved


def shown(url: str) -> str:
    """The URL without query string or credentials, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _unreachable(url: str, reason: str, *, output: bool = False) -> InputUnreachable:
    if output:
        return InputUnreachable(
            f"output {shown(url)} could not be written: {reason}", field="output.destination"
        )
    return InputUnreachable(f"input {shown(url)} could not be fetched: {reason}", field="input")


def _transport_reason(exc: httpx.HTTPError) -> str:
    """What went wrong on the wire, in words; httpx's own text may hold the pinned IP URL."""
    if isinstance(exc, httpx.TimeoutException):
        return "the server did not answer in time"
    if isinstance(exc, httpx.ConnectError):
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return "its TLS certificate is not valid for the host"
        return "the connection failed"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server broke off or answered malformed HTTP"
    return f"the transfer failed ({type(exc).__name__})"


async def resolve(
    url: str, policy: FetchPolicy, *, output: bool = False
) -> tuple[str, int, list[IPAddress]]:
    """The host, port and the checked addresses to connect to; InputUnreachable if refused
    (worded for an output destination when `output`)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _unreachable(url, "the URL is malformed", output=output) from None
    if parts.scheme not in ("http", "https"):
        raise _unreachable(url, "only http and https URLs can be fetched", output=output)
    host = parts.hostname
    if not host:
        raise _unreachable(url, "the URL has no host", output=output)
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError):
            raise _unreachable(url, f"the host {host} does not resolve", output=output) from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        if not addresses:
            raise _unreachable(url, f"the host {host} does not resolve", output=output)
    for address in addresses:
        if not is_public(address) and not policy.allows(host, address):
            raise _unreachable(
                url,
                f"{host} resolves to a non-public address ({address}); add it to "
                "KILN_FETCH_ALLOWLIST to allow it",
                output=output,
            )
    return host, port, addresses


def _pinned(url: str, address: IPAddress, port: int) -> str:
    parts = urlsplit(url)
    ip = f"[{address}]" if address.version == 6 else str(address)
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{ip}:{port}{path}{query}"


def _host_header(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


async def _send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    policy: FetchPolicy,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    output: bool = False,
) -> httpx.Response:
    """One request to a checked address of `url`, its response streaming."""
    host, port, addresses = await resolve(url, policy, output=output)
    # Every address was checked, so any may be tried: a host answering on IPv4 only must not
    # fail because its IPv6 address came first. None is looked up again (no DNS rebinding).
    for index, address in enumerate(addresses):
        request = client.build_request(
            method,
            _pinned(url, address, port),
            headers={**(headers or {}), "Host": _host_header(url)},
            content=content,
            extensions={"sni_hostname": host},
        )
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError:
            if index == len(addresses) - 1:
                raise
    raise AssertionError("resolve answers at least one address")


async def fetch_url(url: str, policy: FetchPolicy) -> FetchedFile:
    """GETs `url` under `policy`; InputUnreachable for anything that stops it."""
    try:
        async with asyncio.timeout(policy.timeout_seconds):
            return await _fetch(url, policy)
    except TimeoutError:
        raise _unreachable(url, f"no answer within {policy.timeout_seconds:g} s") from None
    except httpx.HTTPError as exc:
        raise _unreachable(url, _transport_reason(exc)) from None


async def _fetch(url: str, policy: FetchPolicy) -> FetchedFile:
    async with _client(policy.timeout_seconds) as client:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            # Images are compressed already; asking for no transfer coding keeps the byte cap
            # about what crosses the wire (a decoded gzip chunk can be a thousand times larger).
            response = await _send(
                client, "GET", current, policy, headers={"Accept-Encoding": "identity"}
            )
            try:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    current = urljoin(current, location)
                    continue
                if not 200 <= response.status_code < 300:
                    raise _unreachable(url, f"the server answered {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > policy.max_bytes:
                    raise _too_large(url, policy)
                name = unquote(urlsplit(current).path.rsplit("/", 1)[-1])
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                return FetchedFile(await _body(response, url, policy), content_type, name)
            finally:
                await response.aclose()
        raise _unreachable(url, f"more than {MAX_REDIRECTS} redirects")


async def _body(response: httpx.Response, url: str, policy: FetchPolicy) -> bytes:
    """The response's body, at most `policy.max_bytes` of it.

    A photo is megabytes, so this is the fetch's hot loop: the chunks are kept as they come and
    joined once, one copy of the body in all. Re-chunking them with `aiter_bytes(n)` into a
    growing bytearray, then copying that to bytes, doubled the fetch's CPU: 11.6 ms instead of
    5.7 for a 4.4 MB photo from a server in another process over loopback."""
    chunks: list[bytes] = []
    # Tiny chunks are gathered before they are kept: a chunked body of one-byte chunks would
    # otherwise be a list of millions of objects, many times the cap in memory.
    small = bytearray()
    received = 0
    if response.headers.get("content-encoding", "identity").strip().lower() == "identity":
        # The raw chunks are the body as sent (h11 has already undone chunked transfer coding).
        stream = response.aiter_raw()
    else:
        # A server that compresses although asked not to: decoded as before, the cap counting
        # decoded bytes, so a small gzip cannot inflate past it.
        stream = response.aiter_bytes(_CHUNK)
    async for chunk in stream:
        received += len(chunk)
        if received > policy.max_bytes:
            raise _too_large(url, policy)
        if len(chunk) >= _MIN_KEPT_CHUNK:
            if small:
                chunks.append(bytes(small))
                small.clear()
            chunks.append(chunk)
        else:
            small += chunk
            if len(small) >= _MIN_KEPT_CHUNK:
                chunks.append(bytes(small))
                small.clear()
    chunks.append(bytes(small))
    return b"".join(chunks)


def _too_large(url: str, policy: FetchPolicy) -> InputUnreachable:
    return _unreachable(url, f"it is larger than {policy.max_bytes} bytes (KILN_FETCH_MAX_BYTES)")


async def put_url(url: str, data: bytes, content_type: str, policy: FetchPolicy) -> None:
    """PUTs an output to a destination URL (a presigned PUT) under the same address rules."""
    try:
        async with (
            asyncio.timeout(policy.timeout_seconds),
            _client(policy.timeout_seconds) as client,
        ):
            response = await _send(
                client,
                "PUT",
                url,
                policy,
                content=data,
                headers={"Content-Type": content_type},
                output=True,
            )
            await response.aclose()
    except TimeoutError:
        raise _unreachable(
            url, f"no answer within {policy.timeout_seconds:g} s", output=True
        ) from None
    except httpx.HTTPError as exc:
        raise _unreachable(url, _transport_reason(exc), output=True) from None
    if not 200 <= response.status_code < 300:
        raise _unreachable(url, f"the server answered {response.status_code}", output=True)
