"""Device addresses as devices report them: an IPv4 or IPv6 literal with an optional port."""

from __future__ import annotations

import ipaddress

from station.backend.errors import InvalidInput
from station.config import Settings

DEFAULT_DEVICE_PORT = 80

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _split(text: str) -> tuple[str, str | None]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("unbalanced brackets")
        return host, rest[1:] if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None


def parse_device_address(text: str, settings: Settings) -> tuple[str, int]:
    """Return (host, port) for a device address, or raise InvalidInput saying what is wrong."""
    text = text.strip()
    try:
        host_text, port_text = _split(text)
        address: IPAddress = ipaddress.ip_address(host_text)
        port = DEFAULT_DEVICE_PORT if port_text is None else int(port_text)
        if port_text is not None and not port_text.isdigit():
            raise ValueError("port is not a number")
        if not 0 < port < 65536:
            raise ValueError("port out of range")
    except ValueError:
        raise InvalidInput(
            "ip_address must be an IPv4 or IPv6 address with an optional port, such as "
            "192.168.1.100 or 192.168.1.100:8080",
            ip_address=text,
        ) from None

    if address.is_unspecified or address.is_multicast or str(address) == "255.255.255.255":
        raise InvalidInput(
            "ip_address cannot be a wildcard, multicast or broadcast address", ip_address=text
        )
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not settings.allows(address):
        raise InvalidInput(
            "ip_address is outside the networks this station accepts devices from; "
            "add its network to allowed_networks in the settings if it is right",
            ip_address=text,
            allowed_networks=settings.allowed_networks,
        )
    return str(address), port
