"""Mutual TLS: each party's certificate, key and the CA it trusts; a throw-away PKI.

Every connection is TLS with client authentication: the fixed party accepts
only clients whose certificate its CA signed (and whose name is
``moving-party``), the dealer only ``moving-party`` and ``fixed-party``; a
client accepts only a server whose certificate its CA signed for the role it
expects (``fixed-party``, ``dealer``: the name checked is fixed by the service
called, never by the host name dialled). Expired certificates are refused both
ways. gRPC's TLS stack (BoringSSL) negotiates TLS 1.3 between two ppir parties.

``ppir pki init DIR`` (:func:`init_pki`) makes the CA apart, in ``DIR/ca``
(its certificate and the only copy of its key: it stays with whoever issues
certificates), and one bundle per site, ``DIR/fixed-party``,
``DIR/moving-party`` and ``DIR/dealer``: that role's certificate, its key and
the CA's certificate, no other key (``--tls-dir BUNDLE``,
:meth:`TLS.from_bundle`). A certificate names its role only (common name and
DNS name; no ``localhost``, no address), so a certificate of one role can
never pass for another's. :func:`issue_certificate` signs more with the CA
(another name, another validity window).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppir_itk.errors import InputError
from ppir_itk.roles import DEALER, FIXED_PARTY, MOVING_PARTY

ROLES = (FIXED_PARTY, MOVING_PARTY, DEALER)
CA_FOLDER = "ca"  # under a pki root: the CA's certificate and key, apart from every site
CA_PRIVATE_KEY = "ca-private-key.pem"
# A bundle (one site's folder) and the CA folder hold the CA's certificate under this name.
CA_CERTIFICATE = "ca-certificate.pem"
CERTIFICATE, PRIVATE_KEY = "certificate.pem", "private-key.pem"  # a bundle's own pair


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
        tls = cls(
            *(
                _read(path, what)
                for path, what in (
                    (certificate, "certificate"),
                    (key, "private key"),
                    (ca, "CA certificate"),
                )
            )
        )
        try:
            _names(tls.certificate)
        except ValueError:
            raise InputError(
                f"the certificate '{certificate}' is not an X.509 certificate"
            ) from None
        return tls

    @classmethod
    def from_bundle(cls, bundle: str | os.PathLike) -> TLS:
        """One site's bundle (``ppir pki init``'s ``DIR/ROLE``, ``--tls-dir``)."""
        folder = Path(bundle)
        return cls.from_files(folder / CERTIFICATE, folder / PRIVATE_KEY, folder / CA_CERTIFICATE)

    @classmethod
    def for_role(cls, pki: str | os.PathLike, role: str) -> TLS:
        """The bundle ``init_pki`` (or ``issue_certificate``) made for ``role`` under the
        pki root ``pki``: for local runs and tests, which hold every site's bundle."""
        return cls.from_bundle(Path(pki) / role)

    def names(self) -> tuple[str, ...]:
        """The names this party's certificate carries: its common name, then every
        subject alternative name (DNS names, addresses), each once."""
        common, alternative = _names(self.certificate)
        return tuple(dict.fromkeys([*common, *(str(name.value) for name in alternative)]))

    def carries_only(self, role: str) -> bool:
        """Whether the certificate names ``role`` and nothing else (common name and one DNS
        name): what ``init_pki`` issues, the one kind a party may run with."""
        from cryptography import x509

        common, alternative = _names(self.certificate)
        return common == [role] and alternative == [x509.DNSName(role)]

    def validity_problem(self) -> str | None:
        """Why the certificate is not valid now ("expired on ...", "is valid only from
        ..."), or None: peers refuse it, so a party should not start with it."""
        from cryptography import x509

        certificate = x509.load_pem_x509_certificate(self.certificate)
        now = datetime.datetime.now(datetime.UTC)
        if now > certificate.not_valid_after_utc:
            return f"expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        if now < certificate.not_valid_before_utc:
            return f"is valid only from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        return None


def _names(pem: bytes) -> tuple[list[str], list[Any]]:
    """A certificate's common names and its subject alternative names (``GeneralName``)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    certificate = x509.load_pem_x509_certificate(pem)
    common = [
        str(attribute.value)
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return common, []
    return common, list(extension.value)


def _read(path: str | os.PathLike, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise InputError(f"cannot read the {what} '{path}': {error.strerror}") from None
    if b"-----BEGIN" not in data:
        raise InputError(f"the {what} '{path}' is not a PEM file")
    return data


def _private_folder(path: Path) -> Path:
    """``path`` made (if need be) and readable by its owner only, whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def init_pki(
    directory: str | os.PathLike,
    *,
    days: int = 30,
    roles: tuple[str, ...] = ROLES,
    not_before: datetime.datetime | None = None,
    ca_name: str = "ppir throw-away CA",
) -> Path:
    """Make the CA in ``directory/ca`` and one bundle per role, ``directory/ROLE``.

    Keys are EC P-256; each role's certificate is made by :func:`issue_certificate`
    and valid for ``days``. The CA's key is written only to ``directory/ca``
    (so more certificates can be issued there); each bundle holds its role's key
    and no other. The CA folder and each bundle are mode 0700, every key 0600.
    Returns ``directory``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)  # an existing folder keeps its mode
    ca_folder = _private_folder(root / CA_FOLDER)
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
    (ca_folder / CA_CERTIFICATE).write_bytes(
        ca_certificate.public_bytes(serialization.Encoding.PEM)
    )
    _write_key(ca_folder / CA_PRIVATE_KEY, ca_key)
    for role in roles:
        issue_certificate(ca_folder, role, days=days, not_before=start)
    return root


def issue_certificate(
    ca_folder: str | os.PathLike,
    name: str,
    *,
    bundle: str | os.PathLike | None = None,
    days: int = 30,
    not_before: datetime.datetime | None = None,
) -> Path:
    """Sign a certificate for ``name`` with the CA in ``ca_folder`` (``init_pki``'s
    ``DIR/ca``) and write it as a bundle; returns the bundle's folder.

    The bundle (``bundle``, by default ``name`` beside the CA folder, where
    :meth:`TLS.for_role` finds it) holds the certificate, its key and the CA's
    certificate. The certificate names ``name`` only: its common name, which a
    server checks against the clients it serves, and its one DNS name, which a
    client checks against the role it expects. It serves both as a server and
    as a client certificate. A validity window in the past (``not_before``,
    ``days``) makes an expired one.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = Path(ca_folder)
    ca_pem = _read(ca / CA_CERTIFICATE, "CA certificate")
    ca_certificate = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(
        _read(ca / CA_PRIVATE_KEY, "CA private key"), password=None
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
        raise InputError(f"the CA private key '{ca / CA_PRIVATE_KEY}' cannot sign certificates")
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
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder = _private_folder(Path(bundle) if bundle is not None else ca.parent / name)
    (folder / CERTIFICATE).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / PRIVATE_KEY, key)
    (folder / CA_CERTIFICATE).write_bytes(ca_pem)
    return folder


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
