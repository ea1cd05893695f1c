"""Joint-term backends, selected by name: one interface (:mod:`.base`), one module each."""

from __future__ import annotations

from ppir_itk.backends.base import (
    FixedSide,
    HistogramBackend,
    JointTerm,
    JointTermBackend,
    MovingChannel,
    MovingFields,
    MovingHalf,
    ParzenFields,
)
from ppir_itk.backends.clear import (
    ClearBackend,
    ClearFixedSide,
    ClearHistogramBackend,
    ClearHistogramFixedSide,
    InsecureBackendWarning,
)
from ppir_itk.backends.he import HEPackedBackend, HEPackedFixedSide
from ppir_itk.backends.he_paper import (
    PaperV1Backend,
    PaperV1FixedSide,
    PaperV2Backend,
    PaperV2FixedSide,
)
from ppir_itk.backends.spdz import SPDZBackend, SPDZFixedSide
from ppir_itk.backends.spdz_mattes import SPDZMattesBackend, SPDZMattesFixedSide
from ppir_itk.dealer_client import DEALER_TABLE
from ppir_itk.disclosure import SESSION, ProtocolTable
from ppir_itk.errors import InputError
from ppir_itk.metric_kinds import MATTES, MEAN_SQUARES_SETTINGS, MetricSettings
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol.messages import ProtocolError

# backend name -> protocol name -> (moving-party side, fixed-party side); first is the default.
BACKENDS: dict[str, dict[str, tuple[type[JointTermBackend], type[FixedSide]]]] = {
    "he": {
        "packed": (HEPackedBackend, HEPackedFixedSide),
        "paper-v1": (PaperV1Backend, PaperV1FixedSide),
        "paper-v2": (PaperV2Backend, PaperV2FixedSide),
    },
    "clear": {"clear": (ClearBackend, ClearFixedSide)},
    "spdz": {"spdz": (SPDZBackend, SPDZFixedSide)},
}
# Mattes mutual information: backend name -> its halves (the backend's default protocol's
# name); a backend not named here does not compute it.
HISTOGRAM_BACKENDS: dict[str, tuple[type[HistogramBackend], type[FixedSide]]] = {
    "clear": (ClearHistogramBackend, ClearHistogramFixedSide),
    "spdz": (SPDZMattesBackend, SPDZMattesFixedSide),
}


def protocol_tables() -> list[ProtocolTable]:
    """Every protocol's table (:mod:`ppir_itk.disclosure`), the session's first."""
    tables = [SESSION, DEALER_TABLE]
    halves = [pair for protocols in BACKENDS.values() for pair in protocols.values()]
    for moving_half, _ in [*halves, *HISTOGRAM_BACKENDS.values()]:
        if moving_half.table not in tables:
            tables.append(moving_half.table)
    return tables


def check_backend_name(name: str) -> str:
    if name.lower() == "ckks":  # the homomorphic backend's name before it said what it is
        raise InputError(
            "backend 'ckks' is now named 'he' (homomorphic encryption: its "
            "default protocol packed runs BFV, paper-v1 and paper-v2 run CKKS)"
        )
    if name.lower() not in BACKENDS:
        raise InputError(f"unknown backend '{name}': choose one of {', '.join(sorted(BACKENDS))}")
    return name.lower()


def check_protocol(name: str, protocol: str | None) -> str:
    """``protocol`` of backend ``name`` (a checked name), or its default for None."""
    protocols = BACKENDS[name]
    if protocol is None:
        return next(iter(protocols))
    if protocol not in protocols:
        raise InputError(
            f"backend '{name}' has no protocol '{protocol}': choose one of {', '.join(protocols)}"
        )
    return protocol


def _halves(
    name: str, protocol: str, metric: str
) -> tuple[type[MovingHalf], type[FixedSide]] | None:
    """The two halves of a backend's protocol for ``metric``; None if it does not compute it
    (Mattes runs on a backend's default protocol only)."""
    if metric == MATTES:
        default = protocol == next(iter(BACKENDS[name]))
        return HISTOGRAM_BACKENDS.get(name) if default else None
    sides = BACKENDS[name][protocol]
    return sides if metric in sides[0].metrics else None


def _sides(
    name: str, parameters: dict[str, str], metric: str
) -> tuple[type[MovingHalf], type[FixedSide]]:
    protocol = check_protocol(name, parameters.get("protocol"))
    sides = _halves(name, protocol, metric)
    if sides is None:
        asked = parameters.get("protocol")
        named = f"'{name}'" if asked is None else f"'{name}' (protocol {asked})"
        serving = [
            (other, halves[0].private)
            for other in BACKENDS
            if (halves := _halves(other, check_protocol(other, None), metric)) is not None
        ]
        private = [other for other, private in serving if private]
        clear = [f"{other}, which is NOT private" for other, private in serving if not private]
        raise InputError(
            f"backend {named} does not compute metric '{metric}': register it with backend "
            + " or ".join(private + clear)
        )
    return sides


def fixed_mask_refusal(name: str, protocol: str | None, metric: str) -> str:
    """Why backend ``name``'s ``protocol`` (None or the default: the backend's name alone)
    cannot serve a fixed party with a mask for ``metric``, naming the backends that can."""
    default = next(iter(BACKENDS[name]))
    named = f"'{name}'" if protocol in (None, default) else f"'{name}' (protocol {protocol})"
    serving = []
    for other, protocols in BACKENDS.items():
        other_default = next(iter(protocols))
        for other_protocol in protocols:
            halves = _halves(other, other_protocol, metric)
            if halves is None or metric not in halves[0].fixed_mask_metrics:
                continue
            label = other
            if other_protocol != other_default:
                label += f" (protocol {other_protocol})"
            serving.append(label if halves[0].private else f"{label}, which is NOT private")
    serving.sort(key=lambda label: label.endswith("NOT private"))
    listed = (
        ", ".join(serving[:-1]) + (" or " if len(serving) > 1 else "") + serving[-1]
        if serving
        else ""
    )
    advice = f": register with backend {listed}" if serving else ""
    return f"backend {named} does not compute metric '{metric}' within a fixed mask{advice}"


def check_backend_metric(name: str, parameters: dict[str, str], metric: str) -> None:
    """Refuse, with one sentence naming the backends that do, a backend (a checked name)
    that does not compute ``metric``."""
    _sides(name, parameters, metric)


def check_backend_fixed_mask(name: str, parameters: dict[str, str], metric: str) -> None:
    """Refuse (:func:`fixed_mask_refusal`'s sentence) a backend (a checked name, computing
    ``metric``) that cannot restrict ``metric`` to the fixed party's mask."""
    if not all(metric in half.fixed_mask_metrics for half in _sides(name, parameters, metric)):
        raise InputError(fixed_mask_refusal(name, parameters.get("protocol"), metric))


def make_backend(
    name: str,
    channel: MovingChannel,
    parameters: dict[str, str] | None = None,
    metric: MetricSettings = MEAN_SQUARES_SETTINGS,
) -> MovingHalf:
    """The moving-party half of backend ``name`` for ``metric``, talking through ``channel``."""
    parameters = dict(parameters or {})
    return _sides(check_backend_name(name), parameters, metric.name)[0](channel, parameters, metric)


def make_fixed_side(
    name: str,
    parameters: dict[str, str],
    policy: FixedPolicy,
    metric: MetricSettings = MEAN_SQUARES_SETTINGS,
) -> FixedSide:
    """The fixed-party side of backend ``name`` for ``metric`` (a session that asked for it)."""
    if name not in BACKENDS:
        raise ProtocolError(f"backend '{name[:40]}' is unknown")
    try:
        return _sides(name, parameters, metric.name)[1](parameters, policy, metric)
    except InputError as error:
        raise ProtocolError(str(error)) from None


__all__ = [
    "BACKENDS",
    "HEPackedBackend",
    "ClearBackend",
    "FixedSide",
    "HistogramBackend",
    "InsecureBackendWarning",
    "JointTerm",
    "JointTermBackend",
    "MovingChannel",
    "PaperV1Backend",
    "MovingFields",
    "MovingHalf",
    "ParzenFields",
    "SPDZBackend",
    "check_backend_fixed_mask",
    "check_backend_metric",
    "check_backend_name",
    "check_protocol",
    "fixed_mask_refusal",
    "make_backend",
    "make_fixed_side",
    "protocol_tables",
]
