"""TLS contexts for the two sides of the proxy.

Owns: building the ``ssl.SSLContext`` that terminates client TLS and the one used towards
servers, from the ``tls:`` settings.
Must not touch: sockets or the negotiation itself (client.py and server.py do that).
"""

from __future__ import annotations

import ssl

from router.config import TlsSettings


def client_side_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """The context that answers clients' SSLRequest, or None when TLS is disabled."""
    if settings.client_mode == "disable":
        return None
    assert settings.cert_file is not None and settings.key_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    return context


def server_side_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """The context for connections to servers, or None when ``server_mode`` is disable."""
    if settings.server_mode == "disable":
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.server_mode == "verify-full":
        if settings.server_ca_file is not None:
            context.load_verify_locations(str(settings.server_ca_file))
        else:
            context.load_default_certs()
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
