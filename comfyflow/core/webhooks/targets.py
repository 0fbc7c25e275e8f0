"""Which webhook targets may be called: public addresses only, unless a setting allows a private network.

A URL is checked at submit (so a bad one is a 422 at once) and again at every delivery, by the resolver the
delivery client connects through, so a name that later resolves to a private address (DNS rebinding) is
refused too. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from comfyflow.errors import ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TargetRefused(ValidationError):
    """Raised when a webhook URL is not http(s) or points at a private, loopback or link-local address."""


def networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
        or ip.is_unspecified or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
    )  # fmt: skip


def check_address(ip: IPAddress, allowed: list[Network], url: str) -> None:
    """Raises TargetRefused unless ``ip`` is public or inside an allowed network."""
    if is_public(ip) or any(ip in net for net in allowed if net.version == ip.version):
        return
    raise TargetRefused(
        f"webhook {_safe(url)} resolves to {ip}, a private, loopback or link-local address; use a public URL, or "
        "allow the network with COMFYFLOW_WEBHOOKS__ALLOW_NETWORKS.",
        details=[{"field": "webhook", "address": str(ip)}],
    )


def _safe(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}"


def split(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL. Raises TargetRefused for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise TargetRefused(f"webhook {url[:100]!r} is not a valid URL.", details=[{"field": "webhook"}]) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused(
            f"webhook {url[:100]!r} must be an http or https URL with a host.", details=[{"field": "webhook"}]
        )
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_target(url: str, allow: Iterable[str]) -> None:
    """Resolve the URL's host and check every address it has. Raises TargetRefused."""
    host, port = split(url)
    allowed = networks(allow)
    try:
        check_address(ipaddress.ip_address(host), allowed, url)
        return
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetRefused(
            f"webhook host {host!r} does not resolve ({exc}); check the URL.", details=[{"field": "webhook"}]
        ) from None
    for info in infos:
        check_address(ipaddress.ip_address(str(info[4][0]).split("%")[0]), allowed, url)


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses (with TargetRefused) names resolving to a disallowed address."""

    def __init__(self, allow: Iterable[str]) -> None:
        self.allowed = networks(allow)
        self.inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        for r in results:
            check_address(ipaddress.ip_address(r["host"].split("%")[0]), self.allowed, f"http://{host}:{port}")
        return results

    async def close(self) -> None:
        await self.inner.close()
