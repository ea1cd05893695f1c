"""Every transform kind a registration takes by name, B-splines included.

The one registry behind the command line's ``--transform`` choices, the
options' check and :class:`~ppir_itk.registration.ImageRegistrationMethod`. A
kind is linear (built from the images' dimension by
:func:`ppir_itk.transforms.make_transform`) or a B-spline, whose control grid
covers the fixed image and so is built once the fixed party has published
its grid.

Examples
--------
>>> [kind.name for kind in TRANSFORMS.values() if not kind.linear]
['bspline']
>>> transform_kind("rigid").build(2).itk_name
'Euler2DTransform'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ppir_itk.bspline import BSplineTransform
from ppir_itk.errors import InputError
from ppir_itk.image import GridGeometry
from ppir_itk.transforms import TRANSFORM_KINDS, LinearTransform, make_transform

__all__ = ["TRANSFORMS", "TransformKind", "transform_kind"]


@dataclass(frozen=True)
class TransformKind:
    """A transform kind: its name, whether it is linear, and how it is built."""

    name: str
    linear: bool

    def build(
        self,
        dimension: int,
        *,
        fixed_geometry: GridGeometry | None = None,
        grid_spacing: float | Sequence[float] | np.ndarray | None = None,
        bulk: LinearTransform | None = None,
    ) -> LinearTransform | BSplineTransform:
        """The identity of this kind; a B-spline's over ``fixed_geometry``, control points
        ``grid_spacing`` apart (physical units), composed with ``bulk``."""
        if self.linear:
            return make_transform(self.name, dimension)
        if fixed_geometry is None or grid_spacing is None:
            raise TypeError(
                "a B-spline is built over the fixed grid: give fixed_geometry and grid_spacing"
            )
        return BSplineTransform.over(fixed_geometry, grid_spacing, bulk=bulk)


#: Every kind by name: the linear ones from the most to the least constrained, then B-splines.
TRANSFORMS: dict[str, TransformKind] = {
    **{name: TransformKind(name, linear=True) for name in TRANSFORM_KINDS},
    BSplineTransform.kind: TransformKind(BSplineTransform.kind, linear=False),
}


def transform_kind(name: str) -> TransformKind:
    """The kind called ``name``, or the sentence that lists them all."""
    if name not in TRANSFORMS:
        raise InputError(f"unknown transform '{name}': choose one of {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name]
