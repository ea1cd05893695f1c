"""Joint-term backends, selected by name: one interface (:mod:`.base`), one module each."""

from __future__ import annotations

from ppir_itk.backends.base import FixedSide, JointTerm, JointTermBackend, MovingFields
from ppir_itk.backends.ckks import CKKSBackend, CKKSFixedSide
from ppir_itk.backends.clear import ClearBackend, ClearFixedSide, InsecureBackendWarning
from ppir_itk.errors import InputError
from ppir_itk.protocol.messages import ProtocolError
from ppir_itk.protocol.session import Session

BACKENDS: dict[str, tuple[type[JointTermBackend], type[FixedSide]]] = {
    "clear": (ClearBackend, ClearFixedSide),
    "ckks": (CKKSBackend, CKKSFixedSide),
}


def check_backend_name(name: str) -> str:
    if name.lower() not in BACKENDS:
        raise InputError(
            f"unknown backend '{name}': choose one of {', '.join(sorted(BACKENDS))}"
        )
    return name.lower()


def make_backend(name: str, session: Session,
                 parameters: dict[str, str] | None = None) -> JointTermBackend:
    """The moving-party side of backend ``name``, talking through ``session``."""
    return BACKENDS[check_backend_name(name)][0](session, parameters)


def make_fixed_side(name: str, parameters: dict[str, str]) -> FixedSide:
    """The fixed-party side of backend ``name`` (for a session that asked for it)."""
    if name not in BACKENDS:
        raise ProtocolError(f"backend '{name[:40]}' is unknown")
    return BACKENDS[name][1](parameters)


__all__ = [
    "BACKENDS",
    "CKKSBackend",
    "ClearBackend",
    "FixedSide",
    "InsecureBackendWarning",
    "JointTerm",
    "JointTermBackend",
    "MovingFields",
    "check_backend_name",
    "make_backend",
    "make_fixed_side",
]
