"""Joint-term backends, selected by name: one interface (:mod:`.base`), one module each."""

from __future__ import annotations

from ppir_itk.backends.base import JointTerm, JointTermBackend, MovingFields, PartyStats
from ppir_itk.backends.clear import ClearBackend, InsecureBackendWarning
from ppir_itk.errors import InputError
from ppir_itk.fixed_party import FixedParty

BACKENDS: dict[str, type[JointTermBackend]] = {"clear": ClearBackend}


def make_backend(name: str, fixed_party: FixedParty) -> JointTermBackend:
    """The backend called ``name``, connected to ``fixed_party``."""
    try:
        cls = BACKENDS[name.lower()]
    except KeyError:
        raise InputError(
            f"unknown backend '{name}': choose one of {', '.join(sorted(BACKENDS))}"
        ) from None
    return cls(fixed_party)


__all__ = [
    "BACKENDS",
    "ClearBackend",
    "InsecureBackendWarning",
    "JointTerm",
    "JointTermBackend",
    "MovingFields",
    "PartyStats",
    "make_backend",
]
