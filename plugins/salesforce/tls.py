"""HTTPS for the Salesforce emulator: a throwaway CA and a certificate for 127.0.0.1/localhost,
made with ``trustme`` when the server starts, and TLS around each accepted connection.

``trustme`` is imported here only, and only when TLS is asked for, so the emulator itself needs
nothing beyond the standard library. Clients verify against ``TlsFiles.ca_path``.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path
from socketserver import BaseServer
from typing import Any


class TlsFiles:
    """A fresh CA and server certificate; the CA's PEM file lives until ``close()``."""

    def __init__(self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")):
        try:
            import trustme
        except ImportError:  # pragma: no cover - depends on the environment
            raise RuntimeError("serving HTTPS needs the 'trustme' package "
                               "(pip install trustme, or install the project's test extra)"
                               ) from None
        authority = trustme.CA()
        self._dir = tempfile.TemporaryDirectory(prefix="salesforce-emulator-tls-")
        self.ca_path = str(Path(self._dir.name) / "ca.pem")
        authority.cert_pem.write_to_path(self.ca_path)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert(*hosts).configure_cert(self.context)

    def close(self) -> None:
        self._dir.cleanup()


def serve_tls(server: BaseServer, context: ssl.SSLContext) -> None:
    """Make ``server`` speak TLS. The handshake runs in the per-connection thread (not in the
    accept loop), so one client that never finishes it cannot hold up the others."""
    plain = server.finish_request

    def finish_request(request: Any, client_address: Any) -> None:
        try:
            wrapped = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that distrusts the certificate, or speaks plain HTTP
        try:
            plain(wrapped, client_address)
        except (ssl.SSLError, ConnectionError):
            pass  # the client went away mid-request
        finally:
            wrapped.close()

    server.finish_request = finish_request  # type: ignore[method-assign]
