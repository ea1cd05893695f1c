"""ppir_itk: privacy-preserving image registration, the ITK way.

Two parties each hold one image; they want the transform that aligns the
moving image onto the fixed image without either seeing the other's pixels.
The SSD Gauss-Newton registration runs on the moving party; the one term
that needs both images goes through a joint-term backend.

Main entry points
-----------------
register
    One call: both images on this machine, the fixed party in its own process.
serve, connect, register_with
    The fixed party's server, the moving party's session (gRPC with mutual
    TLS) and its registration against it.
ImageRegistrationMethod, PrivateMeanSquaresImageToImageMetric, GaussNewtonOptimizer
    The ITK-style pieces (metric / optimizer / method);
    PrivateCorrelationImageToImageMetric (ITK's normalised cross correlation) and
    PrivateMattesMutualInformationImageToImageMetric (ITK's Mattes mutual information);
    RegularStepGradientDescentOptimizer, for the metrics that are not least squares.
FixedPartySession, MovingPartySession, in_process_session
    Each party's side of a session; a session with the fixed party in this process.
NoSampling, URS, Regular, GMS
    Sampling strategies.
BSplineTransform
    ITK's cubic B-spline transform, for non-linear registration.
Importing the package is cheap: each name loads its module (and that module's
heavy dependencies: ITK, gRPC, TenSEAL, CrypTen) the first time it is used.

Logs go to loggers under ``ppir_itk`` (:mod:`ppir_itk.log`); the package adds no handler
but a ``NullHandler``, so a caller's own logging configuration decides where they go.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ppir_itk._version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> the module that defines it
_EXPORTS = {
    "BACKENDS": "ppir_itk.backends",
    "InsecureBackendWarning": "ppir_itk.backends",
    "BSplineTransform": "ppir_itk.bspline",
    "connect": "ppir_itk.compose",
    "in_process_session": "ppir_itk.compose",
    "serve": "ppir_itk.compose",
    "PrivateCorrelationImageToImageMetric": "ppir_itk.correlation",
    "InputError": "ppir_itk.errors",
    "Event": "ppir_itk.events",
    "FixedPartyServer": "ppir_itk.fixed_party",
    "FixedPartySession": "ppir_itk.fixed_party",
    "GridGeometry": "ppir_itk.image",
    "ImageGrid": "ppir_itk.image",
    "PrivateMattesMutualInformationImageToImageMetric": "ppir_itk.mattes",
    "PrivateMeanSquaresImageToImageMetric": "ppir_itk.metric",
    "MovingPartySession": "ppir_itk.moving_party",
    "GaussNewtonOptimizer": "ppir_itk.optimizer",
    "RegularStepGradientDescentOptimizer": "ppir_itk.optimizer",
    "StopCondition": "ppir_itk.optimizer",
    "FixedPolicy": "ppir_itk.policy",
    "PeerError": "ppir_itk.protocol.channel",
    "TLS": "ppir_itk.protocol.tls",
    "init_pki": "ppir_itk.protocol.tls",
    "ImageRegistrationMethod": "ppir_itk.registration",
    "RegistrationResult": "ppir_itk.registration",
    "register": "ppir_itk.registration",
    "register_with": "ppir_itk.registration",
    "resample": "ppir_itk.registration",
    "GMS": "ppir_itk.sampling",
    "NoSampling": "ppir_itk.sampling",
    "Regular": "ppir_itk.sampling",
    "URS": "ppir_itk.sampling",
    "LinearTransform": "ppir_itk.transforms",
    "TRANSFORM_KINDS": "ppir_itk.transforms",
    "make_transform": "ppir_itk.transforms",
}

__all__ = [
    "BACKENDS",
    "BSplineTransform",
    "Event",
    "FixedPartyServer",
    "FixedPartySession",
    "FixedPolicy",
    "GMS",
    "GaussNewtonOptimizer",
    "GridGeometry",
    "ImageGrid",
    "ImageRegistrationMethod",
    "InputError",
    "InsecureBackendWarning",
    "LinearTransform",
    "MovingPartySession",
    "NoSampling",
    "PeerError",
    "PrivateCorrelationImageToImageMetric",
    "PrivateMattesMutualInformationImageToImageMetric",
    "PrivateMeanSquaresImageToImageMetric",
    "RegistrationResult",
    "RegularStepGradientDescentOptimizer",
    "StopCondition",
    "TLS",
    "TRANSFORM_KINDS",
    "Regular",
    "URS",
    "__version__",
    "connect",
    "in_process_session",
    "init_pki",
    "make_transform",
    "register",
    "register_with",
    "resample",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ppir_itk' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # what type checkers and editors see
    from ppir_itk.backends import BACKENDS, InsecureBackendWarning
    from ppir_itk.bspline import BSplineTransform
    from ppir_itk.compose import connect, in_process_session, serve
    from ppir_itk.correlation import PrivateCorrelationImageToImageMetric
    from ppir_itk.errors import InputError
    from ppir_itk.events import Event
    from ppir_itk.fixed_party import FixedPartyServer, FixedPartySession
    from ppir_itk.image import GridGeometry, ImageGrid
    from ppir_itk.mattes import PrivateMattesMutualInformationImageToImageMetric
    from ppir_itk.metric import PrivateMeanSquaresImageToImageMetric
    from ppir_itk.moving_party import MovingPartySession
    from ppir_itk.optimizer import (
        GaussNewtonOptimizer,
        RegularStepGradientDescentOptimizer,
        StopCondition,
    )
    from ppir_itk.policy import FixedPolicy
    from ppir_itk.protocol.channel import PeerError
    from ppir_itk.protocol.tls import TLS, init_pki
    from ppir_itk.registration import (
        ImageRegistrationMethod,
        RegistrationResult,
        register,
        register_with,
        resample,
    )
    from ppir_itk.sampling import GMS, URS, NoSampling, Regular
    from ppir_itk.transforms import TRANSFORM_KINDS, LinearTransform, make_transform
