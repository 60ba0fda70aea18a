"""How a service process serves HTTP: its address, TLS, log level, draining, keep-alive and connection cap.

:class:`ServingSettings` is the part of the settings that ``splitinfer.serve`` (uvicorn's configuration and
the services' HTTP protocol) reads; the torch services' :class:`service_core.settings.ServiceSettings` and
the torch-free edge's ``edge_lite.settings.EdgeLiteSettings`` both subclass it, so every process is served
the same way. Nothing here imports torch.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service_core.connections import check_max_connections, default_max_connections, open_files_limit

__all__ = [
    "ENV_PREFIX",
    "ServingSettings",
    "check_ca_bundle",
    "check_cloud_url",
    "dropped_connection_hint",
    "tls_client_context",
]

ENV_PREFIX = "SPLITINFER_"


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    log_level: str = Field("info", description="Python log level.")
    ssl_certfile: Path | None = Field(None, description="Serve HTTPS with this certificate (PEM).")
    ssl_keyfile: Path | None = Field(None, description="The certificate's private key (PEM).")
    drain_s: float = Field(
        1.0, ge=0, description="On SIGTERM: seconds /readyz answers 503 before the server stops accepting."
    )
    keep_alive_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Seconds an idle kept-alive client connection stays open (uvicorn's default), and a new "
        "connection has to send its first request head.",
    )
    allowed_hosts: str = Field(
        "",
        description="Host names (comma-separated) requests may name in their Host header, beside the loopback "
        "ones; others get 421, so that a web page cannot reach a service on this host through a name it "
        "controls (DNS rebinding). Empty: the loopback names when HOST is a loopback address, any otherwise; "
        "'*': any (e.g. behind a reverse proxy that passes its public name on).",
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        validate_default=True,
        description="Client connections served at once; a request beyond them gets 503 + Retry-After, and a "
        "connection beyond an eighth more is closed unanswered (default: 1024, or less to fit the process's "
        "file descriptor limit, ulimit -n; a larger value than fits is refused).",
    )

    @field_validator("max_connections")
    @classmethod
    def _fits_open_files(cls, value: int | None) -> int:
        open_files = open_files_limit()
        if value is None:
            return default_max_connections(open_files)
        check_max_connections(value, open_files)
        return value

    @model_validator(mode="after")
    def _certificates(self) -> ServingSettings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("HTTPS needs both SSL_CERTFILE and SSL_KEYFILE")
        for path in (self.ssl_certfile, self.ssl_keyfile):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {str(path)!r} does not exist")
        if self.ssl_certfile is not None and self.ssl_keyfile is not None:
            _check_certificate(self.ssl_certfile, self.ssl_keyfile)
        return self


def _check_certificate(certfile: Path, keyfile: Path) -> None:
    """Refuse (ValueError) a certificate and key that do not load together, as the server would load them:
    not PEM, a key of another certificate, or an encrypted key (no setting gives its password, and OpenSSL
    would stop the service to ask for it on the terminal)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile, password=lambda: b"")
    except OSError as exc:  # NOTE: ssl.SSLError is one
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ValueError(
            f"cannot load the TLS certificate {str(certfile)!r} with the key {str(keyfile)!r} ({reason}): both "
            "must be PEM, the key unencrypted and the certificate's own"
        ) from exc


def check_cloud_url(url: str) -> str:
    """``url`` when it can be an edge's CLOUD_URL: http or https, a host, no credentials (the cloud takes
    SPLITINFER_TOKEN; a ``user:password@`` would be shown on ``/v1/info``), no query or fragment (the routes are
    appended to it). ``ValueError`` otherwise, which never repeats the URL (it may hold a secret)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # NOTE: ValueError for a port that is no number or out of range
    except ValueError as exc:
        raise ValueError("is not a URL (e.g. http://cloud.example:8001)") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL (e.g. http://cloud.example:8001)")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials (user:password@): set the token in SPLITINFER_TOKEN instead")
    if not parts.hostname or port == 0:
        raise ValueError("names no host (e.g. http://cloud.example:8001)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError("must be a base URL, without a query or fragment (the routes are appended to it)")
    return url


def dropped_connection_hint(url: str) -> str:
    """What a connection to the cloud dropped without a reply most often means when ``url`` (an edge's
    CLOUD_URL) is plain HTTP, to append to the error: a cloud that serves HTTPS reads the request as a broken
    handshake and closes the connection (and its log says so). Empty for an https:// URL."""
    if urlsplit(url).scheme != "http":
        return ""
    return "; if the cloud serves HTTPS, this edge's CLOUD_URL must start with https://"


def tls_client_context(ca_bundle: str | None) -> ssl.SSLContext | None:
    """What an edge verifies an HTTPS cloud with: the certificates of ``ca_bundle`` (PEM), or the system's
    (None). ``OSError`` (``ssl.SSLError`` among them) for a bundle that does not load."""
    return ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None


def check_ca_bundle(ca_bundle: str | None) -> str | None:
    """``ca_bundle`` when it loads as an edge's CA_BUNDLE; ``ValueError`` naming the file otherwise (the edge
    said only "No such file or directory" when its lifespan started)."""
    try:
        tls_client_context(ca_bundle)
    except OSError as exc:  # NOTE: ssl.SSLError is one
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ValueError(f"cannot load the CA bundle {ca_bundle!r} ({reason}): it must be a readable PEM file") from exc
    return ca_bundle
