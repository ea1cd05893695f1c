"""Shared fixtures: phantom pairs with known transforms, real images from nibabel."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import ppir_itk
from ppir_itk.backends import InsecureBackendWarning
from ppir_itk.image import ImageGrid
from ppir_itk.phantoms import head_phantom, moved_copy
from ppir_itk.protocol.tls import CA_CERTIFICATE, CA_FOLDER, CERTIFICATE, PRIVATE_KEY
from ppir_itk.transforms import LinearTransform, make_transform

# Options of one level of 4 iterations: 5 evaluations (one opens the level), 40 measurements
# in 2-D (the ledger's tests, the servers' session lines).
FIVE_EVALUATIONS = dict(
    backend="he",
    transform="affine",
    shrink_factors=[1],
    smoothing_sigmas=[0.0],
    iterations=4,
    relative_value_tolerance=0.0,
    minimum_step_length=0.0,
)


@pytest.fixture(autouse=True)
def _quiet_clear_backend():
    """The clear backend warns on every run; the tests know it is not private."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureBackendWarning)
        yield


def known_pair(
    fixed: ImageGrid, kind: str, parameters: list[float]
) -> tuple[ImageGrid, LinearTransform]:
    """A moving image and the transform ``truth`` registration must find (centred on fixed)."""
    truth = make_transform(kind, fixed.dimension)
    if truth.has_center:
        truth.center = fixed.geometry.center()
    truth.parameters = parameters
    return moved_copy(fixed, truth), truth


def register_in_process(fixed, moving, **options):
    """``ppir_itk.register`` with the fixed party in this process (same protocol, no socket).

    The clear backend unless a test asks for another: these tests are about the
    registration, and the private backends have their own.
    """
    options.setdefault("backend", "clear")
    return ppir_itk.register(fixed, moving, transport="in-process", **options)


def speaks_to_unauthenticated(address: str, pki, client_pki=None) -> bool:
    """Whether the TLS server at ``address`` answers a client with no certificate (or with
    ``client_pki``'s moving-party certificate, from another CA)."""
    host, port = address.rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki / CA_FOLDER / CA_CERTIFICATE)
    context.check_hostname = False
    if client_pki is not None:
        bundle = client_pki / "moving-party"
        context.load_cert_chain(bundle / CERTIFICATE, bundle / PRIVATE_KEY)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as tls_socket:
                tls_socket.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                return tls_socket.recv(1) != b""  # TLS 1.3 reports a refused certificate here
        except (ssl.SSLError, ConnectionError):
            return False


def dicom_series(folder: Path, uid: str, shape: tuple[int, int, int], description: str) -> None:
    """One DICOM file per slice, written by SimpleITK with this series UID."""
    folder.mkdir(exist_ok=True)
    volume = np.random.default_rng(len(description)).integers(0, 1000, shape, np.int16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(shape[0]):
        image = sitk.GetImageFromArray(volume[z])
        image.SetSpacing((0.5, 0.5))
        tags = {
            "0008|0060": "CT",
            "0008|0018": f"{uid}.{z + 1}",  # SOP Instance UID
            "0008|103e": description,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.7",  # Study Instance UID
            "0020|000e": uid,  # Series Instance UID
            "0020|0013": str(z + 1),  # Instance Number
            "0020|0032": f"0\\0\\{2.0 * z}",  # Image Position (Patient)
            "0020|0037": "1\\0\\0\\0\\1\\0",  # Image Orientation (Patient)
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid}-{z}.dcm"))
        writer.Execute(image)


@pytest.fixture(scope="session")
def phantom_2d() -> ImageGrid:
    return head_phantom((96, 88), spacing=(1.1, 0.9))


@pytest.fixture(scope="session")
def phantom_3d() -> ImageGrid:
    return head_phantom((40, 44, 40), spacing=(1.0, 1.2, 1.1))


@pytest.fixture(scope="session")
def nibabel_data() -> str:
    import nibabel

    return os.path.join(os.path.dirname(nibabel.__file__), "tests", "data")


@contextmanager
def ppir_serve(pki: Path, image: Path, log: Path, *options: str) -> Iterator[str]:
    """``ppir serve`` as its own process (its log in ``log``, the fixed party's bundle of
    the pki root ``pki``), until the block ends."""
    before = len(log.read_text()) if log.exists() else 0  # a restart appends to the log
    with log.open("a") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ppir_itk.cli",
                "serve",
                "--fixed",
                str(image),
                "--listen",
                "127.0.0.1:0",
                "--tls-dir",
                str(pki / "fixed-party"),
                "--deadline",
                "20",
                *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=log.parent,  # not the source tree: an installed ppir_itk has the compiled kernels
        )
    try:
        end = time.monotonic() + 60
        while "listening on" not in log.read_text()[before:] and time.monotonic() < end:
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        address = log.read_text()[before:].split("listening on ", 1)[1].split()[0]
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)
