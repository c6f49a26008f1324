"""A throwaway certificate authority for development, tests and the demo: never for production.

Makes a CA, a server certificate valid for localhost, 127.0.0.1 and ::1, and client certificates whose common
name is a principal's name (for mutual TLS). Keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class DevPki:
    """Paths of the files `make_dev_pki` wrote."""

    directory: Path

    @property
    def ca(self) -> Path:
        """The CA certificate: clients trust it, and a server with mutual TLS checks client certificates by it."""
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        """The server's certificate."""
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        """The server's key."""
        return self.directory / "server.key"

    def client_cert(self, name: str) -> Path:
        """A client certificate with common name `name`."""
        return self.directory / f"{name}.pem"

    def client_key(self, name: str) -> Path:
        """Its key."""
        return self.directory / f"{name}.key"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
    hosts: tuple[str, ...] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    *(x509.DNSName(h) for h in hosts),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_dev_pki(directory: Path, clients: tuple[str, ...] = (), hosts: tuple[str, ...] = ()) -> DevPki:
    """Write a CA, a server certificate (localhost and `hosts`) and one client certificate per name."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki = DevPki(directory)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("cleanroom dev CA", ca_key, None, ca_key, ca=True)
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    issued: list[tuple[str, bool, Path, Path]] = [("localhost", True, pki.server_cert, pki.server_key)]
    issued += [(n, False, pki.client_cert(n), pki.client_key(n)) for n in clients]
    for subject, server, cert_path, key_path in issued:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(subject, key, ca.subject, ca_key, server=server, hosts=hosts)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
    return pki
