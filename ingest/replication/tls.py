"""Mutual TLS on the replication port (docs/replication.md, "TLS").

Without it, whoever reaches the port can follow the primary (and read every
record), acknowledge as a standby (releasing sync-mode answers that no real
standby has) or say hello at a higher epoch and fence the primary. With it,
both ends present a certificate signed by the pair's own CA, and the stream
is encrypted. The sans-IO protocol does not change: the asyncio layer hands
these contexts to create_server and open_connection.
"""
from __future__ import annotations

import ssl
from typing import NamedTuple

from ingest.config import ConfigError, ReplicationSettings

# A peer has this long to finish the handshake (the primary's hello timeout
# starts after it).
HANDSHAKE_TIMEOUT_S = 5.0


class Contexts(NamedTuple):
    server: ssl.SSLContext  # the primary's listener: a standby must present a certificate of the CA
    client: ssl.SSLContext  # a standby, and a promoted node telling its former primary


def _context(purpose: ssl.Purpose, settings: ReplicationSettings) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(purpose, cafile=settings.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"config: replication.tls_ca_file {settings.tls_ca_file}: {exc}") from None
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"config: replication.tls_cert_file {settings.tls_cert_file} with tls_key_file "
                          f"{settings.tls_key_file}: {exc}") from None
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def contexts(settings: ReplicationSettings) -> Contexts | None:
    """The pair's TLS contexts, or None when the config sets no TLS; a file
    that cannot be read or does not hold what it should is a ConfigError."""
    if not settings.tls_cert_file:
        return None
    server = _context(ssl.Purpose.CLIENT_AUTH, settings)
    client = _context(ssl.Purpose.SERVER_AUTH, settings)
    # Peers are addressed by IP (--follow HOST:PORT) and certificates often
    # name none: what proves the peer is the chain to the pair's own CA,
    # which must sign nothing but the pair's certificates.
    client.check_hostname = False
    return Contexts(server, client)
