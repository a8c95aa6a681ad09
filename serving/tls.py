"""DICOM TLS (PS3.15 Annex B, "Basic TLS Secure Transport Connection Profile") for pynetdicom: the
listener's server context and the forwarder's client context, from :class:`serving.config.TlsSettings`.

TLS 1.2 or newer. The listener with ``ca`` requires every caller to present a certificate that chains to
it (mutual TLS, the profile's usual deployment); the forwarder checks the PACS's certificate against
``ca`` (or the system's trust store) including its host name or IP address, and presents ``cert`` when
given.
"""

from __future__ import annotations

import ssl

from serving.config import ConfigError, TlsSettings


def _load(context: ssl.SSLContext, tls: TlsSettings) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if tls.cert is not None and tls.key is not None:
            context.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca is not None:
            context.load_verify_locations(cafile=str(tls.ca))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the TLS certificate, key or CA: {exc}") from exc
    return context


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """For the listener: needs ``cert`` and ``key``; with ``ca``, callers must present a certificate."""
    if tls.cert is None or tls.key is None:
        raise ConfigError("DICOM TLS for the listener needs --tls-cert and --tls-key")
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls)
    if tls.ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """For the forwarder: verifies the PACS (``ca`` or the system's CAs) and its host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca is None:
        context.load_default_certs()
    return _load(context, tls)
