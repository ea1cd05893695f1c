"""Conversions between :mod:`ppir_itk.transforms` and ITK / SimpleITK, and transform files.

``itk`` and ``SimpleITK`` are imported inside the functions, because importing
``itk`` is slow.

Examples
--------
>>> from ppir_itk.transforms import Euler2DTransform
>>> from ppir_itk.wrapping.transforms import read_transform, to_sitk, write_transform
>>> t = Euler2DTransform(2, [0.1, 1.0, 2.0], center=[5.0, 5.0])
>>> to_sitk(t).GetName()
'Euler2DTransform'
>>> write_transform(t, "rigid.tfm")  # doctest: +SKIP
>>> read_transform("rigid.tfm")  # doctest: +SKIP
Euler2DTransform(dimension=2, parameters=[0.1, 1.0, 2.0], center=[5.0, 5.0])
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ppir_itk.bspline import BSplineTransform
from ppir_itk.errors import InputError
from ppir_itk.transforms import (
    AffineTransform,
    CenteredRigid2DTransform,
    Euler2DTransform,
    Euler3DTransform,
    LinearTransform,
    ScaleSkewVersor3DTransform,
    Similarity2DTransform,
    Similarity3DTransform,
    TranslationTransform,
    VersorRigid3DTransform,
)
from ppir_itk.wrapping.images import itk_reason, write_atomically

__all__ = [
    "COMPOSITE_FILE_SUFFIXES",
    "TRANSFORM_FILE_SUFFIXES",
    "check_transform_path",
    "from_itk",
    "from_sitk",
    "read_transform",
    "to_itk",
    "to_sitk",
    "write_transform",
]

#: File suffixes accepted by :func:`write_transform` (ITK picks the writer by suffix,
#: case-sensitively): text (``.tfm``, ``.txt``), HDF5 (``.h5``, ``.hdf5``), Matlab (``.mat``).
TRANSFORM_FILE_SUFFIXES: tuple[str, ...] = (".tfm", ".txt", ".h5", ".hdf5", ".mat")
#: The suffixes whose formats hold a composite (a linear transform, then a B-spline): ITK's
#: Matlab format holds one transform, and neither SimpleITK nor ITK reads a composite back.
COMPOSITE_FILE_SUFFIXES: tuple[str, ...] = (".tfm", ".txt", ".h5", ".hdf5")

# Transforms with the same parameters here and in ITK; the class name is the key. Any
# other type is refused: optimised as another type, its parameters would mean other things.
_CLASSES_BY_NAME: dict[str, type[LinearTransform]] = {
    cls.__name__: cls
    for cls in (
        TranslationTransform,
        Euler2DTransform,
        CenteredRigid2DTransform,
        Euler3DTransform,
        VersorRigid3DTransform,
        Similarity2DTransform,
        Similarity3DTransform,
        ScaleSkewVersor3DTransform,
        AffineTransform,
    )
}
# The ITK classes above SimpleITK has no class for.
_NOT_IN_SITK = (CenteredRigid2DTransform.__name__,)

# ITK templates taking (pixel type, dimension); the others take the pixel type only.
_DIMENSION_TEMPLATED = ("TranslationTransform", "AffineTransform")


def _check_linear(transform: object) -> LinearTransform:
    if not isinstance(transform, LinearTransform):
        raise TypeError(
            f"expected a ppir_itk.transforms.LinearTransform, not {type(transform).__name__}"
        )
    return transform


def _refusal(toolkit: str, name: str) -> InputError:
    """The sentence for a transform type that cannot be registered in its own parameters."""
    names = [n for n in _CLASSES_BY_NAME if toolkit == "ITK" or n not in _NOT_IN_SITK]
    return InputError(
        f"{'an' if toolkit == 'ITK' else 'a'} {toolkit} {name} cannot be registered: "
        "ppir_itk optimises only "
        f"{', '.join(names)} and BSplineTransform in their own parameters (or a "
        "CompositeTransform of one of them, or of a linear one then a B-spline)"
    )


def _composite_parts(parts: list[Any], convert: Any, bspline_name: str) -> Any:
    """A composite's parts in order of addition: one linear transform, a B-spline, or a
    linear ``bulk`` then a B-spline (applied first: ``W = bulk(x + D(x))``)."""
    names = [
        part.GetNameOfClass() if hasattr(part, "GetNameOfClass") else part.GetName()
        for part in parts
    ]
    if "CompositeTransform" in names:
        # Also how SimpleITK holds a type it has no class for (read from a file): unnamed.
        raise InputError(
            "a CompositeTransform inside a CompositeTransform cannot be converted (SimpleITK "
            "also holds so, unnamed, a transform it has no class for, e.g. a "
            "CenteredRigid2DTransform read from a file: "
            "ppir_itk.wrapping.transforms.read_transform or itk.transformread reads that)"
        )
    if len(parts) == 1:
        return convert(parts[0])
    if len(parts) == 2 and bspline_name in names[1]:
        bspline = convert(parts[1])
        bspline.bulk = convert(parts[0])
        return bspline
    raise InputError(
        f"only a CompositeTransform of one transform, or of a linear transform then a "
        f"B-spline, can be converted; this one holds {', '.join(names)}"
    )


def _build(
    name: str,
    dimension: int,
    parameters: np.ndarray,
    fixed: np.ndarray,
    matrix: np.ndarray | None,
) -> LinearTransform:
    """Build a LinearTransform from an ITK class name and its (fixed) parameters.

    ``matrix`` is only used for an Euler3DTransform with ITK's ``ComputeZYX`` on,
    whose angles are converted to this package's (ITK's default) ZXY order.
    """
    cls = _CLASSES_BY_NAME[name]
    if cls is TranslationTransform:
        return TranslationTransform(dimension, parameters)
    center = fixed[:dimension]
    if cls is Euler3DTransform and fixed.size > 3 and fixed[3] != 0:
        assert matrix is not None, "an Euler3DTransform is a matrix-offset transform"
        angles = Euler3DTransform.angles_from_matrix(matrix)
        return Euler3DTransform(3, np.concatenate([angles, parameters[3:6]]), center)
    return cls(dimension, parameters, center)


# ------------------------------------------------------------------------------ ITK


def to_itk(transform: LinearTransform | BSplineTransform) -> Any:
    """Return the matching ``itk.<Name>Transform[itk.D, ...]`` with the same parameters.

    Parameters
    ----------
    transform : LinearTransform or BSplineTransform

    Returns
    -------
    itk transform
        e.g. ``itk.VersorRigid3DTransform[itk.D]`` or ``itk.AffineTransform[itk.D, 2]``,
        the class of ``transform.itk_name`` with the same parameters and fixed
        parameters (centre; for Euler3D the ``ComputeZYX`` flag is off); a B-spline
        with a bulk transform as a ``CompositeTransform``.
    """
    import itk

    if isinstance(transform, BSplineTransform):
        return _bspline_to_itk(transform)
    transform = _check_linear(transform)
    name = transform.itk_name
    template = getattr(itk, name)
    if name in _DIMENSION_TEMPLATED:
        obj = template[itk.D, transform.dimension].New()
    else:
        obj = template[itk.D].New()
    fixed = transform.fixed_parameters
    if fixed.size:
        obj.SetFixedParameters(itk.OptimizerParameters[itk.D]([float(v) for v in fixed]))
    obj.SetParameters(itk.OptimizerParameters[itk.D]([float(v) for v in transform.parameters]))
    return obj


def from_itk(obj: Any) -> LinearTransform | BSplineTransform:
    """Convert an ITK transform to a :class:`~ppir_itk.transforms.LinearTransform`.

    Parameters
    ----------
    obj : itk transform
        A ``TranslationTransform``, ``Euler2DTransform``, ``CenteredRigid2DTransform``,
        ``Euler3DTransform``, ``VersorRigid3DTransform``, ``Similarity2DTransform``,
        ``Similarity3DTransform``, ``ScaleSkewVersor3DTransform``, ``AffineTransform``
        or ``BSplineTransform`` (converted to the same class with the same parameters),
        or a ``CompositeTransform`` of one of these, or of a linear one then a B-spline.

    Raises
    ------
    InputError
        For any other type (e.g. ``ScaleTransform``, ``Rigid3DTransform``: never
        turned into an affine), another composite, or a dimension other than 2 or 3.

    Notes
    -----
    An ``Euler3DTransform`` with ``ComputeZYX`` on becomes an
    ``Euler3DTransform`` with the same matrix, centre and translation, its
    angles converted to ITK's default order (``Rz @ Rx @ Ry``).
    """
    import itk

    if not hasattr(obj, "GetNameOfClass") or not hasattr(obj, "GetParameters"):
        raise InputError(
            f"a {type(obj).__name__} is not an ITK transform; it cannot be "
            "converted to a linear transform"
        )
    name = obj.GetNameOfClass()
    if name == "CompositeTransform":
        parts = [itk.down_cast(obj.GetNthTransform(i)) for i in range(obj.GetNumberOfTransforms())]
        return _composite_parts(parts, from_itk, "BSpline")
    obj = itk.down_cast(obj)
    if name == "BSplineTransform":
        return BSplineTransform.from_fixed_parameters(
            list(obj.GetFixedParameters()), list(obj.GetParameters())
        )
    dimension = int(obj.GetInputSpaceDimension())
    if int(obj.GetOutputSpaceDimension()) != dimension or dimension not in (2, 3):
        raise InputError(
            f"the {name} maps {dimension}-D to {obj.GetOutputSpaceDimension()}-D points; only "
            "2-D and 3-D transforms are supported"
        )
    if name not in _CLASSES_BY_NAME:
        raise _refusal("ITK", name)
    is_matrix_offset = isinstance(obj, tuple(itk.MatrixOffsetTransformBase.values()))
    matrix = (
        np.array(itk.array_from_matrix(obj.GetMatrix()), dtype=np.float64)
        if is_matrix_offset
        else None
    )
    parameters = np.array(list(obj.GetParameters()), dtype=np.float64)
    fixed = np.array(list(obj.GetFixedParameters()), dtype=np.float64)
    return _build(name, dimension, parameters, fixed, matrix)


# ------------------------------------------------------------------------ SimpleITK


def to_sitk(transform: LinearTransform | BSplineTransform) -> Any:
    """Return the matching SimpleITK transform with the same parameters.

    Parameters
    ----------
    transform : LinearTransform or BSplineTransform

    Returns
    -------
    SimpleITK transform
        The class of ``transform.itk_name``, with the same parameters and fixed
        parameters, except a ``CenteredRigid2DTransform``, for which SimpleITK has no
        class: its ``Euler2DTransform`` of the same map (angle, translation, and the
        centre as fixed parameters). A B-spline with a bulk transform as a
        ``CompositeTransform``.
    """
    import SimpleITK as sitk

    if isinstance(transform, BSplineTransform):
        return _bspline_to_sitk(transform)
    transform = _check_linear(transform)
    if isinstance(transform, CenteredRigid2DTransform):  # SimpleITK has no such class
        angle = transform.parameters[0]
        transform = Euler2DTransform(2, [angle, *transform.translation], transform.center)
    name = transform.itk_name
    if name in _DIMENSION_TEMPLATED:
        obj = getattr(sitk, name)(transform.dimension)
    else:
        obj = getattr(sitk, name)()
    fixed = transform.fixed_parameters
    if fixed.size:
        obj.SetFixedParameters(tuple(float(v) for v in fixed))
    obj.SetParameters(tuple(float(v) for v in transform.parameters))
    return obj


def from_sitk(obj: Any) -> LinearTransform | BSplineTransform:
    """Convert a SimpleITK transform to a :class:`~ppir_itk.transforms.LinearTransform`.

    Parameters
    ----------
    obj : SimpleITK.Transform
        A ``TranslationTransform``, ``Euler2DTransform``, ``Euler3DTransform``,
        ``VersorRigid3DTransform``, ``Similarity2DTransform``, ``Similarity3DTransform``,
        ``ScaleSkewVersor3DTransform``, ``AffineTransform`` or ``BSplineTransform``
        (possibly as a plain ``sitk.Transform``, which is downcast), converted to the
        same class with the same parameters; or a ``CompositeTransform`` of one of
        these, or of a linear one then a B-spline.

    Raises
    ------
    InputError
        For any other type (e.g. ``ScaleTransform``, ``ScaleVersor3DTransform``: never
        turned into an affine), another composite, or a dimension other than 2 or 3.
    """
    import SimpleITK as sitk

    if not isinstance(obj, sitk.Transform):
        raise InputError(
            f"a {type(obj).__name__} cannot be converted to a linear transform; "
            "expected a SimpleITK.Transform"
        )
    obj = obj.Downcast()
    name = obj.GetName()
    if name == "CompositeTransform":
        parts = [obj.GetNthTransform(i).Downcast() for i in range(obj.GetNumberOfTransforms())]
        return _composite_parts(parts, from_sitk, "BSpline")
    if name == "BSplineTransform":
        return BSplineTransform.from_fixed_parameters(obj.GetFixedParameters(), obj.GetParameters())
    dimension = int(obj.GetDimension())
    if dimension not in (2, 3):
        raise InputError(f"the {name} is {dimension}-D; only 2-D and 3-D transforms are supported")
    if name not in _CLASSES_BY_NAME or name in _NOT_IN_SITK:
        raise _refusal("SimpleITK", name)
    has_matrix = hasattr(obj, "GetMatrix") and hasattr(obj, "GetCenter")
    matrix = (
        np.array(obj.GetMatrix(), dtype=np.float64).reshape(dimension, dimension)
        if has_matrix
        else None
    )
    parameters = np.array(obj.GetParameters(), dtype=np.float64)
    fixed = np.array(obj.GetFixedParameters(), dtype=np.float64)
    return _build(name, dimension, parameters, fixed, matrix)


def _bspline_to_sitk(transform: BSplineTransform) -> Any:
    import SimpleITK as sitk

    bspline = sitk.BSplineTransform(transform.dimension, 3)
    bspline.SetFixedParameters(tuple(float(v) for v in transform.fixed_parameters))
    bspline.SetParameters(tuple(float(v) for v in transform.parameters))
    if transform.bulk is None:
        return bspline
    composite = sitk.CompositeTransform(to_sitk(transform.bulk))
    composite.AddTransform(bspline)  # the last added is applied first
    return composite


def _bspline_to_itk(transform: BSplineTransform) -> Any:
    import itk

    d = transform.dimension
    bspline = itk.BSplineTransform[itk.D, d, 3].New()
    bspline.SetFixedParameters(
        itk.OptimizerParameters[itk.D]([float(v) for v in transform.fixed_parameters])
    )
    bspline.SetParameters(itk.OptimizerParameters[itk.D]([float(v) for v in transform.parameters]))
    if transform.bulk is None:
        return bspline
    composite = itk.CompositeTransform[itk.D, d].New()
    composite.AddTransform(to_itk(transform.bulk))
    composite.AddTransform(bspline)  # the last added is applied first
    return composite


# ----------------------------------------------------------------------------- files


def check_transform_path(path: str | os.PathLike[str], *, composite: bool, name: str) -> None:
    """Refuse a transform file whose format ITK cannot write, or, for a ``composite`` (a
    B-spline with a bulk transform), cannot hold it; ``name`` names the file in the sentence.

    Raises
    ------
    InputError
        If the suffix is not one of :data:`TRANSFORM_FILE_SUFFIXES` (lower case), or a
        composite's is not one of :data:`COMPOSITE_FILE_SUFFIXES`.
    """
    suffix = os.path.splitext(os.fspath(path))[1]
    if suffix not in TRANSFORM_FILE_SUFFIXES:
        raise InputError(f"{name} must end in one of {', '.join(TRANSFORM_FILE_SUFFIXES)}")
    if composite and suffix not in COMPOSITE_FILE_SUFFIXES:
        raise InputError(
            f"{name} cannot hold a linear transform then a B-spline ({suffix} holds one "
            f"transform): give one of {', '.join(COMPOSITE_FILE_SUFFIXES)}"
        )


def write_transform(
    transform: LinearTransform | BSplineTransform, path: str | os.PathLike[str]
) -> None:
    """Write a transform with ``SimpleITK.WriteTransform`` (a ``CenteredRigid2DTransform``
    with ITK's ``transformwrite``, as ITK's own ``CenteredRigid2DTransform_double_2_2``),
    atomically.

    Through :func:`ppir_itk.wrapping.images.write_atomically`: on failure nothing
    is left behind and an existing ``path`` is untouched.

    Parameters
    ----------
    transform : LinearTransform or BSplineTransform
    path : str or os.PathLike
        Must end with one of :data:`TRANSFORM_FILE_SUFFIXES` (lower case); a B-spline with
        a bulk transform (written as a composite) with one of
        :data:`COMPOSITE_FILE_SUFFIXES`.

    Raises
    ------
    InputError
        If the suffix is not supported, or its format cannot hold the transform.
    OSError
        If the file cannot be written.
    """
    import SimpleITK as sitk

    if not isinstance(transform, BSplineTransform):
        _check_linear(transform)
    target = os.fspath(path)
    composite = isinstance(transform, BSplineTransform) and transform.bulk is not None
    check_transform_path(target, composite=composite, name=f"transform file '{target}'")
    # SimpleITK has no CenteredRigid2DTransform (it would write the Euler2D of the same
    # map): ITK writes its own, which ITK and SimpleITK both read back.
    by_itk = isinstance(transform, CenteredRigid2DTransform)
    obj = to_itk(transform) if by_itk else to_sitk(transform)

    def write(temporary: str) -> None:
        try:
            if by_itk:
                import itk

                itk.transformwrite([obj], temporary)
            else:
                sitk.WriteTransform(obj, temporary)
        except RuntimeError as exc:
            toolkit = "ITK" if by_itk else "SimpleITK"
            raise OSError(f"{toolkit} could not write the transform to {target!r}: {exc}") from exc

    write_atomically(write, target)


def read_transform(path: str | os.PathLike[str]) -> LinearTransform | BSplineTransform:
    """Read a transform file with ``SimpleITK.ReadTransform`` (with ITK's
    ``transformread`` for a type SimpleITK has no class for: ``CenteredRigid2DTransform``).

    Parameters
    ----------
    path : str or os.PathLike
        Any transform file SimpleITK reads, holding one linear transform (see
        :func:`from_sitk`), or a B-spline with its bulk transform.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    InputError
        If SimpleITK cannot read it or it does not hold a single linear transform.
    """
    import SimpleITK as sitk

    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no transform file at {source!r}")
    try:
        obj = sitk.ReadTransform(source)
    except RuntimeError as exc:
        raise InputError(
            f"SimpleITK could not read a transform from {source!r}: {itk_reason(str(exc))}"
        ) from exc
    if _holds_an_unnamed_transform(obj):
        # A type SimpleITK has no class for (a CenteredRigid2DTransform): ITK reads it by name.
        import itk

        transforms = itk.transformread(source)
        if len(transforms) == 1:
            return from_itk(transforms[0])
    return from_sitk(obj)


def _holds_an_unnamed_transform(obj: Any) -> bool:
    """Whether SimpleITK read a type it has no class for: a composite holding a composite."""
    import SimpleITK as sitk

    if obj.GetName() != "CompositeTransform":
        return False
    composite = sitk.CompositeTransform(obj)
    return any(
        composite.GetNthTransform(index).GetName() == "CompositeTransform"
        for index in range(composite.GetNumberOfTransforms())
    )
