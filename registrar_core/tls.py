"""The TLS server context of tls: and wss: listeners (RFC 3261 §26, RFC 7118 over TLS)."""

from __future__ import annotations

import ssl


def server_context(cert: str, key: str, ca: str = "") -> ssl.SSLContext:
    """TLS 1.2 at least (1.0 and 1.1 are deprecated, RFC 8996); client certificates are
    required and verified only when a CA bundle is given (few phones carry one).
    A file that does not load is a ValueError naming it in one line."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ValueError(f"tls-cert/tls-key: {exc.filename or cert} does not exist") from None
    except (ssl.SSLError, OSError):
        raise ValueError(f"tls-cert/tls-key: cannot load {cert} with key {key}: "
                         "both must be PEM, the key matching the certificate") from None
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError):
            raise ValueError(f"tls-ca: cannot load {ca}: it must be a PEM file of CA certificates") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
