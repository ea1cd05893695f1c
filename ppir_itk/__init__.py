"""ppir_itk: privacy-preserving image registration, the ITK way.

Two parties each hold one image; they want the transform that aligns the
moving image onto the fixed image without either seeing the other's pixels.
The SSD Gauss-Newton registration runs on the moving party; the one term
that needs both images goes through a joint-term backend.

Main entry points
-----------------
register
    One call: both images on this machine, the fixed party in its own role.
ImageRegistrationMethod, PrivateMeanSquaresImageToImageMetric, GaussNewtonOptimizer
    The ITK-style pieces (metric / optimizer / method).
FixedParty
    The fixed image's owner.
NoSampling, URS, GMS
    Sampling strategies.
"""

from ppir_itk.backends import BACKENDS, InsecureBackendWarning, make_backend
from ppir_itk.errors import InputError
from ppir_itk.events import Event
from ppir_itk.fixed_party import FixedParty
from ppir_itk.image import GridGeometry, ImageGrid
from ppir_itk.metric import PrivateMeanSquaresImageToImageMetric
from ppir_itk.optimizer import GaussNewtonOptimizer, StopCondition
from ppir_itk.registration import (
    ImageRegistrationMethod,
    RegistrationResult,
    register,
    resample,
)
from ppir_itk.sampling import GMS, URS, NoSampling
from ppir_itk.transforms import TRANSFORM_KINDS, LinearTransform, make_transform

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "GMS",
    "TRANSFORM_KINDS",
    "URS",
    "Event",
    "FixedParty",
    "GaussNewtonOptimizer",
    "GridGeometry",
    "ImageGrid",
    "ImageRegistrationMethod",
    "InputError",
    "InsecureBackendWarning",
    "LinearTransform",
    "NoSampling",
    "PrivateMeanSquaresImageToImageMetric",
    "RegistrationResult",
    "StopCondition",
    "make_backend",
    "make_transform",
    "register",
    "resample",
]
