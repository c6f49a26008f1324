"""The server's Ed25519 signing key: made on first start, kept in the data directory with mode 0600."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from cleanroom_client.keyfile import read_private_file, write_private_file

KEY_FILE = "audit_ed25519.pem"


def load_or_create_signing_key(data_dir: Path) -> Ed25519PrivateKey:
    """The server's audit key; refuses a key file others can read."""
    path = data_dir / KEY_FILE
    if path.exists():
        key = load_pem_private_key(read_private_file(path), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 key")
        return key
    key = Ed25519PrivateKey.generate()
    write_private_file(path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return key


def public_pem(key: Ed25519PrivateKey) -> str:
    """The public half, PEM (SubjectPublicKeyInfo)."""
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
