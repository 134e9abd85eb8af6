"""Where outbound requests may go: the one URL and address rule for cameras, webhooks and
the prompt assistant.

    target = parse_url("rtsp://nvr:554/stream1", STREAM_SCHEMES, "stream URL")
    camera_policy(allowed).check(target)        # resolves the host, checks every address

docs/security.md ("Outbound requests: the trust model") says the same in prose. In short:
- never, whatever the settings say: cloud metadata services, unspecified (0.0.0.0, ::),
  multicast and reserved addresses;
- by default refused, opened by a setting's networks: loopback and link-local for cameras;
  for webhooks also private, shared (carrier-grade NAT) and special-purpose ranges;
- the prompt assistant (an endpoint the operator configured) may reach loopback and the
  LAN, never link-local;
- an IPv6 address that embeds an IPv4 one (mapped, compatible, NAT64, 6to4) must pass as
  both, so `::ffff:169.254.169.254` is the metadata service it is;
- host names are checked by every address they resolve to.

Django-free on purpose (the frame sources use it): callers pass the networks a setting
opens. Errors are `AddressError`s whose message names the URL (without its password), the
address and the reason, ready to show to an operator.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import EngineError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
WEBHOOK_SCHEMES = ("http", "https")
ASSISTANT_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322}

CAMERA_SETTING = "DETECTION_CAMERA_ALLOWED_NETWORKS"
WEBHOOK_SETTING = "DETECTION_WEBHOOK_ALLOWED_NETWORKS"


class AddressError(EngineError):
    """A URL or address outbound requests may not use; `code` says which kind of problem."""

    code = "url"


class SchemeError(AddressError):
    code = "scheme"


class RefusedAddress(AddressError):
    """The host is, or resolves to, an address the policy refuses. Retrying will not help."""

    code = "address"


class UnresolvableHost(AddressError):
    """The host name does not resolve (now: a camera may be offline, DNS may come back)."""

    code = "unresolvable"


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


# No camera or webhook receiver lives here, and reaching them is what SSRF is for: the
# metadata services hand out cloud credentials; 0.0.0.0 and :: reach this very machine.
CLOUD_METADATA = _nets(
    "169.254.169.254/32",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle, ...
    "169.254.170.2/32",  # AWS ECS task metadata and credentials
    "169.254.170.23/32",  # AWS EKS Pod Identity
    "fd00:ec2::254/128",  # AWS instance metadata over IPv6
    "fd00:ec2::23/128",  # AWS EKS Pod Identity over IPv6
    "100.100.100.200/32",  # Alibaba Cloud
    "192.0.0.192/32",  # Oracle Cloud (legacy)
    "168.63.129.16/32",  # Azure WireServer
)
NEVER: tuple[tuple[tuple[IPNetwork, ...], str], ...] = (
    (CLOUD_METADATA, "a cloud metadata address"),
    (_nets("0.0.0.0/8", "::/128"), "an unspecified address (it reaches this machine)"),
    (_nets("224.0.0.0/4", "ff00::/8"), "a multicast address"),
    (_nets("240.0.0.0/4"), "a reserved or broadcast address"),
)
LOOPBACK = (_nets("127.0.0.0/8", "::1/128"), "a loopback address")
LINK_LOCAL = (_nets("169.254.0.0/16", "fe80::/10"), "a link-local address")
PRIVATE = (
    _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10"),
    "a private address",
)
SPECIAL = (
    _nets(
        "100.64.0.0/10",  # shared address space (carrier-grade NAT, Tailscale)
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "192.0.2.0/24",  # documentation (TEST-NET-1..3)
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8::/32",
        "100::/64",  # discard-only
        "64:ff9b:1::/48",  # local-use NAT64
    ),
    "a shared or special-purpose address",
)

# IPv6 ranges whose low 32 bits are an IPv4 address the packets end up at.
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, compatible, NAT64, 6to4), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class NetworkPolicy:
    """Which addresses one kind of outbound request may reach.

    `refused` are refused by default; `allowed` (from `setting`) opens parts of them. The
    `NEVER` ranges stay shut whatever `allowed` says.
    """

    subject: str  # who connects, for messages: "cameras", "webhooks"
    setting: str  # the setting that opens refused networks, named in messages
    refused: tuple[tuple[tuple[IPNetwork, ...], str], ...]
    allowed: tuple[IPNetwork, ...] = ()

    def _refused(self, address: IPAddress) -> tuple[str, str] | None:
        """(the address as shown, the reason) when it is refused."""
        inner = embedded_ipv4(address)
        for candidate in (address, inner) if inner is not None else (address,):
            reason = self._reason(candidate)
            if reason is not None:
                shown = f"{address} ({candidate})" if candidate != address else str(address)
                return shown, reason
        return None

    def _reason(self, address: IPAddress) -> str | None:
        for networks, what in NEVER:
            if any(address in network for network in networks):
                return f"{what}, which {self.subject} may never reach"
        if any(address in network for network in self.allowed):
            return None
        for networks, what in self.refused:
            if any(address in network for network in networks):
                if not self.setting:  # no setting opens these for this subject
                    return f"{what}, which {self.subject} may never reach"
                return (
                    f"{what}, which {self.subject} may not reach unless {self.setting} includes it"
                )
        return None

    def check_address(self, address: IPAddress, host: str | None = None) -> None:
        """Raise `RefusedAddress` if `address` (what `host` resolved to) is refused."""
        found = self._refused(address)
        if found is None:
            return
        shown, reason = found
        if host is None:
            raise RefusedAddress(f"{shown} is {reason}.")
        raise RefusedAddress(f"{host!r} resolves to {shown}, {reason}.")

    def check(self, target: Target, *, unresolvable_ok: bool = False) -> tuple[IPAddress, ...]:
        """Resolve `target`'s host and check every address; return them (checked, in order).

        One refused address refuses the host: a client may connect to any of them. With
        `unresolvable_ok`, a name that does not resolve passes, with no addresses.
        """
        try:
            addresses = resolve(target)
        except UnresolvableHost:
            if unresolvable_ok:
                return ()
            raise
        host = None if target.address is not None else target.host
        for address in addresses:
            self.check_address(address, host)
        return addresses

    def check_literal(self, target: Target) -> None:
        """Check a host written as an IP address; names wait for `check` (no DNS here)."""
        if target.address is not None:
            self.check_address(target.address)


def _networks(networks: Iterable[IPNetwork | str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n) if isinstance(n, str) else n for n in networks)


def camera_policy(allowed: Iterable[IPNetwork | str] = ()) -> NetworkPolicy:
    """Cameras: the LAN (private ranges, CGNAT) is the normal case; loopback is not."""
    return NetworkPolicy("cameras", CAMERA_SETTING, (LOOPBACK, LINK_LOCAL), _networks(allowed))


def webhook_policy(allowed: Iterable[IPNetwork | str] = ()) -> NetworkPolicy:
    """Webhooks: public receivers; anything internal only where the setting opens it."""
    return NetworkPolicy(
        "webhooks",
        WEBHOOK_SETTING,
        (LOOPBACK, LINK_LOCAL, PRIVATE, SPECIAL),
        _networks(allowed),
    )


def assistant_policy() -> NetworkPolicy:
    """The prompt assistant: an endpoint the operator set (PROMPT_ASSISTANT_URL).

    Like cameras, the LAN and loopback are normal (Ollama listens on localhost); link-local
    is refused and no setting opens it, nor the `NEVER` ranges.
    """
    return NetworkPolicy("the prompt assistant", "", (LINK_LOCAL,))


# --- URLs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A parsed outbound URL: where to connect, and how to talk to it."""

    url: str  # as given, stripped
    scheme: str  # lower case
    host: str  # lower case, IDNA-encoded, without brackets
    port: int  # explicit, or the scheme's default
    address: IPAddress | None  # the host, when it is written as an IP address
    username: str | None  # percent-decoded
    password: str | None

    @property
    def request_target(self) -> str:
        """Path and query, as an HTTP request line wants them."""
        parts = urlsplit(self.url)
        return urlunsplit(("", "", parts.path or "/", parts.query, ""))


_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# A last label that is a number is an IPv4 address in a form inet_aton() reads ("127.1",
# "2130706433", "0x7f.1"); no top-level domain is numeric.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


def _listing(schemes: Sequence[str]) -> str:
    return ", ".join(schemes[:-1]) + f" or {schemes[-1]}" if len(schemes) > 1 else schemes[0]


def parse_url(url: object, schemes: Sequence[str], what: str) -> Target:
    """Parse `url` as a `what` ("stream URL") with one of `schemes`; raise `AddressError`.

    Strict where URL parsers disagree (FFmpeg, urllib, Django): one "@", no backslashes or
    spaces, host names of letters, digits, "-" and "_" (single-label LAN names included),
    IPv4 addresses only as four decimal numbers.
    """
    text = url.strip() if isinstance(url, str) else ""
    shown = repr(redact(text))

    def invalid(why: str) -> AddressError:
        return AddressError(f"{shown} is not a valid {what}: {why}.")

    if not text:
        raise AddressError(f"Give a {what}.")
    if any(c.isspace() or ord(c) < 32 or c in "\\\x7f" for c in text):
        raise invalid("it contains spaces, control characters or backslashes")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        why = str(exc).rstrip(".") or "it cannot be parsed"
        raise invalid(why[0].lower() + why[1:]) from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise SchemeError(
            f"{what[0].upper()}{what[1:]}s must use {_listing(schemes)}, "
            f"not {scheme or '(none)'!r}."
        )
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if "@" in userinfo:
        raise invalid("write '@' in a user name or password as %40")
    if not parts.hostname:
        raise invalid("it has no host")
    if port == 0:
        raise invalid("port 0 is not a port")
    host, address = _host(parts.hostname, bracketed=hostport.startswith("["), invalid=invalid)
    return Target(
        url=text,
        scheme=scheme,
        host=host,
        port=port or DEFAULT_PORTS[scheme],
        address=address,
        username=unquote(parts.username or "") if userinfo else None,
        password=unquote(parts.password) if userinfo and parts.password is not None else None,
    )


def _host(
    hostname: str, *, bracketed: bool, invalid: Callable[[str], AddressError]
) -> tuple[str, IPAddress | None]:
    if bracketed:
        if "%" in hostname:
            raise invalid("IPv6 zone indexes (%) are not supported")
        try:
            return hostname, ipaddress.IPv6Address(hostname)
        except ValueError:
            raise invalid(f"{hostname!r} is not an IPv6 address") from None
    try:
        return hostname, ipaddress.IPv4Address(hostname)
    except ValueError:
        pass
    try:
        name = hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise invalid(f"{hostname!r} is not a valid host name") from None
    labels = name.removesuffix(".").split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise invalid(f"{hostname!r} is not a valid host name")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise invalid(
            f"{hostname!r} is not a host name; write an IPv4 address as four decimal "
            "numbers, such as 192.168.1.20"
        )
    return name, None


def resolve(target: Target) -> tuple[IPAddress, ...]:
    """Every address `target`'s host stands for, in the resolver's order."""
    if target.address is not None:
        return (target.address,)
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc)
        raise UnresolvableHost(f"{target.host!r} does not resolve ({detail}).") from None
    addresses: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        # Link-local answers come with a zone ("fe80::1%eth0"); the address is what counts.
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnresolvableHost(f"{target.host!r} does not resolve to an IP address.")
    return tuple(addresses)


# --- showing URLs -------------------------------------------------------------------------

# Query parameters whose values are secrets (cameras' ?user=admin&pwd=..., webhooks'
# ?token=...): their values are hidden, the rest of the URL stays readable.
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|sig|cred", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL without its password (or a lone user name) or secret query values.

    For every message and log line an operator may see; the one helper for cameras and
    webhooks.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        # Unparsable: hide whatever sits between "//" and the last "@" of the authority.
        return re.sub(r"//[^/?#]*@", "//***@", url)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
    query = "&".join(
        f"{key}=***" if sep and _SECRET_KEY.search(unquote(key)) else f"{key}{sep}{value}"
        for key, sep, value in (item.partition("=") for item in parts.query.split("&"))
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))
