"""Mutual TLS: each party's certificate, key and the CA it trusts; a throw-away PKI.

Every connection is TLS with client authentication: the fixed party accepts
only clients whose certificate its CA signed (and whose name is
``moving-party``), the dealer only ``moving-party`` and ``fixed-party``; a
client accepts only a server whose certificate its CA signed for the name it
expects (``fixed-party``, ``dealer``). Expired certificates are refused both
ways. gRPC's TLS stack (BoringSSL) negotiates TLS 1.3 between two ppir parties.

``ppir pki init DIR`` (:func:`init_pki`) makes a CA and one certificate per
role (``fixed-party``, ``moving-party``, ``dealer``) for local runs and tests;
:func:`issue_certificate` signs more with that CA (another name, another
validity window).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppir_itk.errors import InputError

ROLES = ("fixed-party", "moving-party", "dealer")


@dataclass(frozen=True)
class TLS:
    """A party's certificate chain, private key and the CA certificate it trusts (PEM)."""

    certificate: bytes
    key: bytes
    ca: bytes

    @classmethod
    def from_files(
        cls, certificate: str | os.PathLike, key: str | os.PathLike, ca: str | os.PathLike
    ) -> TLS:
        return cls(
            *(
                _read(path, what)
                for path, what in (
                    (certificate, "certificate"),
                    (key, "private key"),
                    (ca, "CA certificate"),
                )
            )
        )

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


def init_pki(
    directory: str | os.PathLike,
    *,
    days: int = 30,
    roles: tuple[str, ...] = ROLES,
    not_before: datetime.datetime | None = None,
    ca_name: str = "ppir throw-away CA",
) -> Path:
    """Make ``ca.pem`` and ``ROLE.pem`` / ``ROLE.key`` for each role in ``directory``.

    Keys are EC P-256; each role's certificate is made by :func:`issue_certificate`
    and valid for ``days``. The CA's key is written too (``ca.key``) so more
    certificates can be issued; keep the directory private (it is made mode 0700).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / "ca.key", ca_key)
    for role in roles:
        issue_certificate(folder, role, days=days, not_before=start)
    return folder


def issue_certificate(
    directory: str | os.PathLike,
    name: str,
    *,
    days: int = 30,
    not_before: datetime.datetime | None = None,
    file_stem: str | None = None,
) -> Path:
    """Sign a certificate for ``name`` with the CA ``init_pki`` left in ``directory``.

    Writes ``FILE_STEM.pem`` / ``FILE_STEM.key`` (``file_stem`` defaults to
    ``name``; :meth:`TLS.for_role` reads them back) and returns the
    certificate's path. The certificate names ``name`` (CN, which a server
    checks against the names it serves, and DNS name, which a client checks
    against the server name it expects) plus ``localhost`` and ``127.0.0.1``.
    It serves both as a server and as a client certificate. A validity
    window in the past (``not_before``, ``days``) makes an expired one.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(directory)
    ca_certificate = x509.load_pem_x509_certificate(_read(folder / "ca.pem", "CA certificate"))
    ca_key = serialization.load_pem_private_key(
        _read(folder / "ca.key", "CA private key"), password=None
    )
    # init_pki writes an EC key; these are the kinds cryptography 42 (our oldest) signs with.
    if not isinstance(
        ca_key,
        (
            ec.EllipticCurvePrivateKey,
            rsa.RSAPrivateKey,
            dsa.DSAPrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
        ),
    ):
        raise InputError(f"the CA private key '{folder / 'ca.key'}' cannot sign certificates")
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(name),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    stem = file_stem or name
    path = folder / f"{stem}.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / f"{stem}.key", key)
    return path


def _write_key(path: Path, key: Any) -> None:
    """Write a private key readable by its owner only (never, even briefly, by others)."""
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
