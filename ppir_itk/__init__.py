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
    The ITK-style pieces (metric / optimizer / method).
FixedPartySession, in_process_session
    The fixed party's side of a session; a session with it in this process.
NoSampling, URS, GMS
    Sampling strategies.
BSplineTransform
    ITK's cubic B-spline transform, for non-linear registration.
"""

from ppir_itk._version import __version__ as __version__  # re-exported
from ppir_itk.backends import BACKENDS, InsecureBackendWarning, make_backend
from ppir_itk.bspline import BSplineTransform
from ppir_itk.errors import InputError
from ppir_itk.events import Event
from ppir_itk.fixed_party import FixedPartySession, FixedPolicy
from ppir_itk.image import GridGeometry, ImageGrid
from ppir_itk.metric import PrivateMeanSquaresImageToImageMetric
from ppir_itk.optimizer import GaussNewtonOptimizer, StopCondition
from ppir_itk.protocol.channel import PeerError
from ppir_itk.protocol.session import connect, in_process_session
from ppir_itk.protocol.tls import TLS, init_pki
from ppir_itk.protocol.transport import FixedPartyServer, serve
from ppir_itk.registration import (
    ImageRegistrationMethod,
    RegistrationResult,
    register,
    register_with,
    resample,
)
from ppir_itk.sampling import GMS, URS, NoSampling
from ppir_itk.transforms import TRANSFORM_KINDS, LinearTransform, make_transform

__all__ = [
    "BACKENDS",
    "BSplineTransform",
    "GMS",
    "TRANSFORM_KINDS",
    "URS",
    "Event",
    "FixedPartyServer",
    "FixedPartySession",
    "FixedPolicy",
    "GaussNewtonOptimizer",
    "GridGeometry",
    "ImageGrid",
    "ImageRegistrationMethod",
    "InputError",
    "InsecureBackendWarning",
    "LinearTransform",
    "NoSampling",
    "PeerError",
    "PrivateMeanSquaresImageToImageMetric",
    "RegistrationResult",
    "StopCondition",
    "TLS",
    "connect",
    "in_process_session",
    "init_pki",
    "make_backend",
    "make_transform",
    "register",
    "register_with",
    "resample",
    "serve",
]
