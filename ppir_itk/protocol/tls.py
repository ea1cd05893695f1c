"""Mutual TLS: each party's certificate, key and the CA it trusts; a throw-away PKI.

Every connection is TLS with client authentication: the fixed party accepts
only clients whose certificate its CA signed (and whose name is
``moving-party``), the moving party accepts only a server whose certificate
its CA signed for the name it expects (``fixed-party``). gRPC's TLS stack
(BoringSSL) negotiates TLS 1.3 between two ppir parties.

``ppir pki init DIR`` (:func:`init_pki`) makes a CA and one certificate per
role (``fixed-party``, ``moving-party``, ``dealer``) for local runs and tests.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from ppir_itk.errors import InputError

ROLES = ("fixed-party", "moving-party", "dealer")


@dataclass(frozen=True)
class TLS:
    """A party's certificate chain, private key and the CA certificate it trusts (PEM)."""

    certificate: bytes
    key: bytes
    ca: bytes

    @classmethod
    def from_files(cls, certificate: str | os.PathLike, key: str | os.PathLike,
                   ca: str | os.PathLike) -> TLS:
        return cls(*(_read(path, what) for path, what in
                     ((certificate, "certificate"), (key, "private key"), (ca, "CA certificate"))))

    @classmethod
    def for_role(cls, directory: str | os.PathLike, role: str) -> TLS:
        """The files ``init_pki`` made for ``role`` in ``directory``."""
        folder = Path(directory)
        return cls.from_files(folder / f"{role}.pem", folder / f"{role}.key", folder / "ca.pem")


def _read(path: str | os.PathLike, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise InputError(f"cannot read the {what} '{path}': {error.strerror}") from None
    if b"-----BEGIN" not in data:
        raise InputError(f"the {what} '{path}' is not a PEM file")
    return data


def init_pki(directory: str | os.PathLike, *, days: int = 30,
             roles: tuple[str, ...] = ROLES, not_before: datetime.datetime | None = None,
             ca_name: str = "ppir throw-away CA") -> Path:
    """Make ``ca.pem`` and ``ROLE.pem`` / ``ROLE.key`` for each role in ``directory``.

    Keys are EC P-256; each role's certificate names the role (CN and DNS
    name) plus ``localhost`` and ``127.0.0.1``, and is valid for ``days``.
    The CA's key is written too (``ca.key``) so more roles can be added; keep
    the directory private (it is made mode 0700).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=days)

    def write_key(name: str, key) -> None:
        path = folder / name
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_certificate = (
        x509.CertificateBuilder().subject_name(ca_subject).issuer_name(ca_subject)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    write_key("ca.key", ca_key)
    for role in roles:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, role)]))
            .issuer_name(ca_subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(role), x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (folder / f"{role}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        write_key(f"{role}.key", key)
    return folder
