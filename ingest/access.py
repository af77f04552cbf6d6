"""Who may call what: bearer tokens, each with its roles.

A client sends `Authorization: Bearer <token>`; the route it calls needs one
role (routes.ROLE_OF), and the token must carry it. The server keeps no
token, only its SHA-256 ([[access.tokens]] in the config): a copied config
file opens nothing. `ingest token` makes a token and the config lines for it
(docs/operations.md, "Access control").

Roles, by who holds them:

- `scan`: the sampling endpoints (bindings, seal, void, boxes, hand-over);
  a token may be limited to some sites (`sites`), checked against each
  event's `site_id` (app.App._off_site);
- `lab`: the labs (receipt of boxes, results); a token may be limited to
  some labs (`labs`), checked against each event's `lab_id`;
- `read`: the follow-up teams and dashboards (tubes, persons, boxes, the
  positives feed, statistics): every route that shows person data;
- `admin`: the operators (promotion).

With no token configured every route is open, which `ingest serve` allows
only on a loopback address unless the config says an authenticating proxy
stands in front (access.open_on_network).
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
from typing import Literal, get_args

Role = Literal["scan", "lab", "read", "admin"]
ROLES: tuple[str, ...] = get_args(Role)

# Verified Authorization values kept (value -> roles), so that a connection
# sending the same token on every request is hashed once. Only tokens that
# verified are kept, so a client guessing tokens cannot grow it; it is
# emptied when full.
SEEN_MAX = 4096
# ... and only values of a sensible length ("Bearer " and 43 characters is
# 50): padded with blanks, one valid token could fill the cache with 4096
# values of up to a header's size each.
SEEN_VALUE_BYTES_MAX = 256


def new_token() -> str:
    """32 random bytes, URL-safe base64 without padding (43 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def token_sha256(token: str) -> str:
    """What the config holds of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    """Whether a listen address only takes connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class Access:
    def __init__(self, tokens: dict[str, frozenset[str]], labs: dict[str, frozenset[str]] | None = None,
                 sites: dict[str, frozenset[str]] | None = None):
        """`tokens`: SHA-256 (hex) of each token -> its roles; `labs`: of
        the tokens that act for some labs only, SHA-256 -> those lab ids;
        `sites`: of the tokens that scan for some sites only, -> site ids."""
        self._roles_of = {bytes.fromhex(digest): roles for digest, roles in tokens.items()}
        self._labs_of = {bytes.fromhex(digest): ids for digest, ids in (labs or {}).items()}
        self._sites_of = {bytes.fromhex(digest): ids for digest, ids in (sites or {}).items()}
        # Whether any token is limited to sites: the binding routes ask on
        # every request then, so a token's sites are kept like its roles.
        self.site_scoped = bool(self._sites_of)
        self._seen: dict[bytes, frozenset[str]] = {}
        self._seen_sites: dict[bytes, frozenset[str] | None] = {}

    def roles(self, authorization: bytes | None) -> frozenset[str] | None:
        """The roles of the token in an Authorization value; None when there
        is no bearer token or the server does not know it."""
        if authorization is None:
            return None
        roles = self._seen.get(authorization)
        if roles is not None:
            return roles
        digest = _digest(authorization)
        if digest is None:
            return None
        roles = self._roles_of.get(digest)
        if roles is not None and len(authorization) <= SEEN_VALUE_BYTES_MAX:
            if len(self._seen) >= SEEN_MAX:
                self._seen.clear()
            self._seen[authorization] = roles
        return roles

    def labs(self, authorization: bytes | None) -> frozenset[str] | None:
        """The lab ids a known token may act for; None: every lab (or no
        known token, which roles() has refused already). Only the lab
        routes ask: one hash per request there."""
        if not self._labs_of or authorization is None:
            return None
        digest = _digest(authorization)
        return None if digest is None else self._labs_of.get(digest)

    def sites(self, authorization: bytes | None) -> frozenset[str] | None:
        """The site ids a known token may scan for; None: every site (or no
        known token, which roles() has refused already)."""
        if not self._sites_of or authorization is None:
            return None
        try:
            return self._seen_sites[authorization]
        except KeyError:
            pass
        digest = _digest(authorization)
        sites = None if digest is None else self._sites_of.get(digest)
        # Kept on the same terms as roles(): only verified tokens, of a sensible length.
        if digest in self._roles_of and len(authorization) <= SEEN_VALUE_BYTES_MAX:
            if len(self._seen_sites) >= SEEN_MAX:
                self._seen_sites.clear()
            self._seen_sites[authorization] = sites
        return sites


def _digest(authorization: bytes) -> bytes | None:
    """The SHA-256 of the bearer token in an Authorization value; None when
    it holds none (RFC 9110 11.1: the scheme is case-insensitive)."""
    scheme, _, token = authorization.strip().partition(b" ")
    token = token.strip(b" \t")
    if scheme.lower() != b"bearer" or not token:
        return None
    return hashlib.sha256(token).digest()

