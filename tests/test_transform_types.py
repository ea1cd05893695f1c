"""Every transform type a script hands in is optimised in its own parameters and comes back
as the same type; other types are refused; the initial transform is the start.

The new types (CenteredRigid2D, VersorRigid3D, ScaleSkewVersor3D) against ITK and
SimpleITK: conversions both ways, points, Jacobians (ITK's and finite differences of
``transform_points``), ITK's own parameter update; phantom registrations of the two rigid
ones; the initializer rule of ``register``.
"""

from __future__ import annotations

import dataclasses

import itk  # slow the first time: imported once for the module
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import register_in_process

from ppir_itk.errors import InputError
from ppir_itk.evaluation import displacement_rmse
from ppir_itk.events import Event
from ppir_itk.options import RegistrationOptions
from ppir_itk.phantoms import moved_copy
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
from ppir_itk.wrapping.transforms import (
    from_itk,
    from_sitk,
    read_transform,
    to_itk,
    to_sitk,
    write_transform,
)

_RNG = np.random.default_rng(17)
_VERSOR = np.array([0.12, -0.2, 0.27])
# One non-trivial transform of every linear type, as a script would hand it in.
TRANSFORMS: list[LinearTransform] = [
    TranslationTransform(2, [1.5, -2.0]),
    TranslationTransform(3, [1.5, -2.0, 0.7]),
    Euler2DTransform(2, [0.3, 1.0, -2.0], [4.0, -3.0]),
    CenteredRigid2DTransform(2, [0.4, 5.0, -6.0, 1.5, 2.5]),
    Euler3DTransform(3, [0.1, -0.2, 0.3, 1.0, 2.0, -3.0], [1.0, 2.0, 3.0]),
    VersorRigid3DTransform(3, [*_VERSOR, 4.0, 5.0, -6.0], [1.0, -2.0, 3.0]),
    Similarity2DTransform(2, [1.2, 0.3, 1.0, -1.0], [2.0, 3.0]),
    Similarity3DTransform(3, [*_VERSOR, 1.0, 2.0, 3.0, 0.9], [-1.0, 0.5, 2.0]),
    ScaleSkewVersor3DTransform(
        3,
        [*_VERSOR, 1.0, -2.0, 3.0, 1.1, 0.9, 1.2, 0.05, -0.03, 0.02, 0.04, -0.01, 0.06],
        [-4.0, 2.0, 7.0],
    ),
    AffineTransform(2, [1.1, 0.2, -0.1, 0.9, 3.0, -1.0], [1.0, 1.0]),
    AffineTransform(3, [1.1, 0.1, 0.0, -0.1, 0.9, 0.2, 0.05, 0.0, 1.2, 1.0, 2.0, 3.0], [0, 1, 2]),
]
IDS = [f"{t.itk_name}-{t.dimension}d" for t in TRANSFORMS]


def _points(d: int) -> np.ndarray:
    return _RNG.uniform(-30.0, 30.0, size=(12, d))


def _mapped_by(obj, points: np.ndarray) -> np.ndarray:
    return np.array([obj.TransformPoint([float(v) for v in p]) for p in points])


def _assert_same(a: LinearTransform, b: LinearTransform) -> None:
    assert type(a) is type(b)
    np.testing.assert_allclose(a.parameters, b.parameters, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.fixed_parameters, b.fixed_parameters, rtol=0, atol=1e-12)


def _itk_object(name: str, d: int):
    template = getattr(itk, name)
    if name in ("TranslationTransform", "AffineTransform"):
        return template[itk.D, d].New()
    return template[itk.D].New()


# ------------------------------------------------------------ every type in and out


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
def test_every_type_goes_to_itk_and_back_as_itself(transform):
    obj = to_itk(transform)
    assert obj.GetNameOfClass() == transform.itk_name
    np.testing.assert_allclose(list(obj.GetParameters()), transform.parameters, atol=1e-12)
    np.testing.assert_allclose(
        list(obj.GetFixedParameters()), transform.fixed_parameters, atol=1e-12
    )
    points = _points(transform.dimension)
    np.testing.assert_allclose(
        _mapped_by(obj, points), transform.transform_points(points), rtol=0, atol=1e-9
    )
    _assert_same(from_itk(obj), transform)
    # A script's own object (not made by to_itk), and inside a composite of one.
    own = _itk_object(transform.itk_name, transform.dimension)
    own.SetFixedParameters(obj.GetFixedParameters())
    own.SetParameters(obj.GetParameters())
    composite = itk.CompositeTransform[itk.D, transform.dimension].New()
    composite.AddTransform(own)
    _assert_same(from_itk(own), transform)
    _assert_same(from_itk(composite), transform)


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
def test_every_type_goes_to_simpleitk_and_back_as_itself(transform):
    obj = to_sitk(transform)
    points = _points(transform.dimension)
    np.testing.assert_allclose(
        _mapped_by(obj, points), transform.transform_points(points), rtol=0, atol=1e-9
    )
    if isinstance(transform, CenteredRigid2DTransform):
        # SimpleITK has no CenteredRigid2DTransform: its Euler2D of the same map.
        assert obj.GetName() == "Euler2DTransform"
        assert obj.GetFixedParameters() == tuple(transform.center)
        return
    assert obj.GetName() == transform.itk_name
    np.testing.assert_allclose(obj.GetParameters(), transform.parameters, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        obj.GetFixedParameters(), transform.fixed_parameters, rtol=0, atol=1e-12
    )
    _assert_same(from_sitk(obj), transform)
    _assert_same(from_sitk(sitk.Transform(obj)), transform)  # a plain sitk.Transform
    composite = sitk.CompositeTransform(transform.dimension)
    composite.AddTransform(obj)
    _assert_same(from_sitk(composite), transform)


def test_a_linear_then_bspline_composite_keeps_the_linear_type():
    similarity = TRANSFORMS[IDS.index("Similarity2DTransform-2d")]
    bspline = sitk.BSplineTransform(2, 3)
    bspline.SetTransformDomainMeshSize((2, 2))
    composite = sitk.CompositeTransform(to_sitk(similarity))
    composite.AddTransform(bspline)
    converted = from_sitk(composite)
    _assert_same(converted.bulk, similarity)
    assert to_sitk(converted).GetNthTransform(0).GetName() == "Similarity2DTransform"


# --------------------------------------------------------------------- refusals

_SUPPORTED_BY_ITK = (
    "ppir_itk optimises only TranslationTransform, Euler2DTransform, CenteredRigid2DTransform, "
    "Euler3DTransform, VersorRigid3DTransform, Similarity2DTransform, Similarity3DTransform, "
    "ScaleSkewVersor3DTransform, AffineTransform and BSplineTransform in their own parameters "
    "(or a CompositeTransform of one of them, or of a linear one then a B-spline)"
)


@pytest.mark.parametrize(
    "make, toolkit",
    [
        (lambda: itk.ScaleTransform[itk.D, 3].New(), "ITK"),
        (lambda: itk.Rigid3DTransform[itk.D].New(), "ITK"),
        (lambda: itk.Rigid2DTransform[itk.D].New(), "ITK"),
        (lambda: sitk.ScaleTransform(2, (2.0, 0.5)), "SimpleITK"),
        (lambda: sitk.ScaleVersor3DTransform(), "SimpleITK"),
        (lambda: sitk.VersorTransform(), "SimpleITK"),
    ],
    ids=[
        "itk-Scale",
        "itk-Rigid3D",
        "itk-Rigid2D",
        "sitk-Scale",
        "sitk-ScaleVersor3D",
        "sitk-Versor",
    ],
)
def test_any_other_type_is_refused_in_a_sentence_never_made_an_affine(make, toolkit):
    obj = make()
    name = obj.GetNameOfClass() if toolkit == "ITK" else obj.GetName()
    with pytest.raises(InputError) as error:
        (from_itk if toolkit == "ITK" else from_sitk)(obj)
    article = "an" if toolkit == "ITK" else "a"
    supported = _SUPPORTED_BY_ITK
    if toolkit == "SimpleITK":  # SimpleITK has no CenteredRigid2DTransform
        supported = supported.replace(" CenteredRigid2DTransform,", "")
    assert str(error.value) == f"{article} {toolkit} {name} cannot be registered: {supported}"


@pytest.mark.parametrize("suffix", [".tfm", ".h5", ".mat"])
def test_a_centred_rigid_2d_is_written_as_itself_and_read_back_by_itk_simpleitk_and_us(
    tmp_path, suffix
):
    transform = CenteredRigid2DTransform(2, [0.4, 5.0, -6.0, 1.5, 2.5])
    path = tmp_path / f"centred{suffix}"
    write_transform(transform, path)
    (theirs,) = itk.transformread(str(path))
    assert theirs.GetNameOfClass() == "CenteredRigid2DTransform"
    np.testing.assert_array_equal(list(theirs.GetParameters()), transform.parameters)
    points = _points(2)
    mapped = sitk.ReadTransform(str(path))  # an unnamed composite holding it, as it maps
    np.testing.assert_allclose(
        [mapped.TransformPoint(tuple(map(float, p))) for p in points],
        transform.transform_points(points),
        rtol=0,
        atol=1e-12,
    )
    _assert_same(read_transform(path), transform)


def test_an_unnamed_transform_simpleitk_read_is_refused(tmp_path):
    """SimpleITK reads a type it has no class for as a composite holding itself."""
    path = tmp_path / "centred.tfm"
    path.write_text(  # as itk.transformwrite writes it (whose first call takes ~30 s)
        "#Insight Transform File V1.0\n#Transform 0\n"
        "Transform: CenteredRigid2DTransform_double_2_2\n"
        "Parameters: 0.4 5 -6 1.5 2.5\nFixedParameters: 0 0\n"
    )
    with pytest.raises(InputError, match="CompositeTransform inside a CompositeTransform"):
        from_sitk(sitk.ReadTransform(str(path)))
    composite = itk.CompositeTransform[itk.D, 2].New()
    composite.AddTransform(itk.CompositeTransform[itk.D, 2].New())
    with pytest.raises(InputError, match="CompositeTransform inside a CompositeTransform"):
        from_itk(composite)


def test_registering_another_type_is_refused_before_it_starts(phantom_2d):
    with pytest.raises(InputError, match="a SimpleITK ScaleTransform cannot be registered"):
        register_in_process(phantom_2d, phantom_2d, transform=sitk.ScaleTransform(2))


# --------------------------------------------------------------------- Jacobians

_NEW_TYPES = (
    CenteredRigid2DTransform,
    VersorRigid3DTransform,
    Similarity3DTransform,
    ScaleSkewVersor3DTransform,
)
_NEW = [t for t in TRANSFORMS if type(t) in _NEW_TYPES]
_NEW_IDS = [t.itk_name for t in _NEW]


@pytest.mark.parametrize("transform", _NEW, ids=_NEW_IDS)
def test_the_jacobian_is_the_derivative_of_the_mapped_points(transform):
    d, count = transform.dimension, transform.number_of_parameters
    points = _points(d)
    step = 1e-6
    expected = []
    for p in range(count):
        plus, minus = transform.copy(), transform.copy()
        plus.parameters = transform.parameters + step * np.eye(count)[p]
        minus.parameters = transform.parameters - step * np.eye(count)[p]
        expected.append((plus.transform_points(points) - minus.transform_points(points)) / 2e-6)
    obj = to_itk(transform)
    for reference in (np.zeros(d), np.full(d, 4.5)):
        basis = np.hstack([points - reference, np.ones((len(points), 1))])
        ours = np.einsum("pkj,nj->pnk", transform.jacobian_in_affine_basis(reference), basis)
        np.testing.assert_allclose(ours, np.array(expected), rtol=0, atol=1e-6)
        for n, point in enumerate(points[:3]):  # and ITK's own
            jacobian = itk.Array2D[itk.D](d, count)
            obj.ComputeJacobianWithRespectToParameters([float(v) for v in point], jacobian)
            theirs = np.array(itk.array_from_vnl_matrix(jacobian))
            np.testing.assert_allclose(ours[:, n, :], theirs.T, rtol=0, atol=1e-10)


@pytest.mark.parametrize("transform", _NEW, ids=_NEW_IDS)
def test_a_step_is_itks_update_of_the_same_transform(transform):
    """VersorRigid3D and its subclasses compose the versor with the step's rotation, as
    ITK's UpdateTransformParameters (what SimpleITK's optimizers call) does."""
    obj = to_itk(transform)
    stepped = transform.copy()
    for _ in range(3):
        step = _RNG.uniform(-0.2, 0.2, size=transform.number_of_parameters)
        obj.UpdateTransformParameters(itk.Array[itk.D]([float(v) for v in step]), 1.0)
        stepped.update(step)
        np.testing.assert_allclose(list(obj.GetParameters()), stepped.parameters, atol=1e-12)


# --------------------------------------------------------- phantom registrations


def test_a_centred_rigid_2d_registration_lands_on_the_truth_as_itself(phantom_2d):
    centre = phantom_2d.geometry.center()
    truth = CenteredRigid2DTransform(2, [0.06, *centre, 1.5, -1.0])
    moving = moved_copy(phantom_2d, truth)
    start = itk.CenteredRigid2DTransform[itk.D].New()
    start.SetParameters(itk.OptimizerParameters[itk.D]([0.0, *map(float, centre), 0.0, 0.0]))
    result = register_in_process(
        phantom_2d, moving, transform=start, shrink_factors=[2, 1], smoothing_sigmas=[1, 0]
    )
    assert type(result.transform) is CenteredRigid2DTransform
    assert result.itk_transform().GetNameOfClass() == "CenteredRigid2DTransform"
    error = displacement_rmse(result.transform, truth, phantom_2d.geometry)
    assert error < 0.02, f"RMSE {error:.4f} mm"


def test_a_versor_rigid_3d_registration_lands_on_the_truth_as_itself(phantom_3d):
    centre = phantom_3d.geometry.center()
    truth = VersorRigid3DTransform(3, [0.02, -0.03, 0.04, 1.5, -1.0, 0.8], centre)
    moving = moved_copy(phantom_3d, truth)
    start = sitk.VersorRigid3DTransform()
    start.SetCenter(tuple(float(v) for v in centre))
    result = register_in_process(
        phantom_3d, moving, transform=start, shrink_factors=[2, 1], smoothing_sigmas=[1, 0]
    )
    assert type(result.transform) is VersorRigid3DTransform
    assert result.sitk_transform().GetName() == "VersorRigid3DTransform"
    assert result.itk_transform().GetNameOfClass() == "VersorRigid3DTransform"
    error = displacement_rmse(result.transform, truth, phantom_3d.geometry)
    assert error < 0.02, f"RMSE {error:.4f} mm"


# ------------------------------------------------------------ the initializer rule


def _start_of(fixed, moving, **options) -> LinearTransform:
    """The transform the first evaluation sees: the method's at its START event."""
    seen = []
    register_in_process(
        fixed,
        moving,
        shrink_factors=[1],
        smoothing_sigmas=[0],
        iterations=1,
        observers={Event.START: lambda method: seen.append(method.metric.GetTransform().copy())},
        **options,
    )
    return seen[0]


def test_a_transform_handed_in_is_the_start_unless_an_initializer_is_asked_for(phantom_2d):
    given = Euler2DTransform(2, [0.05, 2.0, -1.0], [10.0, 20.0])
    for transform in (given, to_itk(given), to_sitk(given)):
        _assert_same(_start_of(phantom_2d, phantom_2d, transform=transform), given)
    options = dataclasses.replace(RegistrationOptions(backend="clear"), transform=given)
    assert options.initializer is None and options.initializer_to_run() == "none"
    asked = _start_of(phantom_2d, phantom_2d, transform=given, initializer="geometry")
    np.testing.assert_allclose(asked.center, phantom_2d.geometry.center())
    np.testing.assert_allclose(asked.translation, [0.0, 0.0], atol=1e-12)  # one geometry


def test_a_kind_name_is_started_by_the_geometry_initializer(phantom_2d):
    """No transform given: the run builds one and centres it, as before (the CLI's path)."""
    assert RegistrationOptions().initializer_to_run() == "geometry"
    built = _start_of(phantom_2d, phantom_2d, transform="rigid")
    np.testing.assert_allclose(built.center, phantom_2d.geometry.center())
    none = _start_of(phantom_2d, phantom_2d, transform="rigid", initializer="none")
    np.testing.assert_array_equal(none.center, [0.0, 0.0])


def test_the_method_executes_to_the_type_handed_in(phantom_3d):
    """ImageRegistrationMethod.Execute() hands an ITK script back its own type."""
    import ppir_itk

    metric = ppir_itk.PrivateMeanSquaresImageToImageMetric(
        "clear", session=ppir_itk.in_process_session(phantom_3d)
    )
    metric.SetMovingImage(phantom_3d)
    start = itk.VersorRigid3DTransform[itk.D].New()
    start.SetCenter([float(v) for v in phantom_3d.geometry.center()])
    method = ppir_itk.ImageRegistrationMethod(
        metric,
        ppir_itk.GaussNewtonOptimizer(NumberOfIterations=2),
        start,
        shrink_factors=[2],
        smoothing_sigmas=[0.0],
    )
    assert method.Execute().GetNameOfClass() == "VersorRigid3DTransform"


@pytest.mark.parametrize("dimension", [2, 3])
def test_a_bspline_and_its_bulk_go_out_and_back_in_every_dimension(dimension):
    """3-D B-splines have 3 + 3 + 3 + 9 fixed parameters (they were refused as not a grid)."""
    from ppir_itk.bspline import BSplineTransform
    from ppir_itk.image import GridGeometry

    geometry = GridGeometry(
        (20,) * dimension, (1.0,) * dimension, (0.0,) * dimension, np.eye(dimension).ravel()
    )
    bulk = next(t for t in TRANSFORMS if t.dimension == dimension and t.itk_name.startswith("Sim"))
    bspline = BSplineTransform.over(geometry, 8.0, bulk=bulk)
    bspline.parameters = _RNG.uniform(-1.0, 1.0, size=bspline.number_of_parameters)
    for back in (from_sitk(to_sitk(bspline)), from_itk(to_itk(bspline))):
        assert isinstance(back, BSplineTransform)
        np.testing.assert_allclose(back.parameters, bspline.parameters, rtol=0, atol=1e-12)
        np.testing.assert_allclose(back.fixed_parameters, bspline.fixed_parameters, atol=1e-12)
        _assert_same(back.bulk, bulk)
