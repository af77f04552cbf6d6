"""TLS contexts from the configuration: HTTPS on the API port, and mutual
TLS on the replication port (docs/operations.md, docs/replication.md "TLS").

HTTPS keeps the clients' bearer tokens and the person data they send off
the wire in the clear. On the replication port, without TLS, whoever
reaches it can follow the primary (and read every record), acknowledge as
a standby (releasing sync-mode answers that no real standby has) or say
hello at a higher epoch and fence the primary; with it, both ends present a
certificate signed by the pair's own CA, and the stream is encrypted.
Neither protocol changes: the asyncio layer hands these contexts to
create_server and open_connection.

A file that cannot be read, or does not hold what it should, is a
ConfigError: the server stops before anything opens (exit 2).
"""
from __future__ import annotations

import ssl
from typing import NamedTuple

from ingest.config import ConfigError, HttpSettings, ReplicationSettings

# A replication peer has this long to finish the handshake (the primary's
# hello timeout starts after it).
HANDSHAKE_TIMEOUT_S = 5.0


class Contexts(NamedTuple):
    server: ssl.SSLContext  # the primary's listener: a standby must present a certificate of the CA
    client: ssl.SSLContext  # a standby, and a promoted node telling its former primary


def _load_chain(context: ssl.SSLContext, section: str, cert_file: str, key_file: str) -> None:
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"config: {section}.tls_cert_file {cert_file} with tls_key_file {key_file}: "
                          f"{exc}") from None


def _peer_context(purpose: ssl.Purpose, settings: ReplicationSettings) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(purpose, cafile=settings.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"config: replication.tls_ca_file {settings.tls_ca_file}: {exc}") from None
    _load_chain(context, "replication", settings.tls_cert_file, settings.tls_key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def replication_contexts(settings: ReplicationSettings) -> Contexts | None:
    """The pair's mutual TLS contexts, or None when the config sets none."""
    if not settings.tls_cert_file:
        return None
    server = _peer_context(ssl.Purpose.CLIENT_AUTH, settings)
    client = _peer_context(ssl.Purpose.SERVER_AUTH, settings)
    # Peers are addressed by IP (--follow HOST:PORT) and certificates often
    # name none: what proves the peer is the chain to the pair's own CA,
    # which must sign nothing but the pair's certificates.
    client.check_hostname = False
    return Contexts(server, client)


def http_context(settings: HttpSettings) -> ssl.SSLContext | None:
    """The API port's server context (clients present no certificate: they
    hold bearer tokens), or None when the config sets no certificate."""
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_chain(context, "http", settings.tls_cert_file, settings.tls_key_file)
    return context
