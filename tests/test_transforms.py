"""Tests of ppir_itk.transforms against ITK and SimpleITK, and of transform files."""

from __future__ import annotations

import os

import itk  # slow (~10-20 s the first time): imported once for the module
import numpy as np
import pytest
import SimpleITK as sitk

from ppir_itk.errors import InputError
from ppir_itk.transforms import (
    TRANSFORM_KINDS,
    AffineTransform,
    Euler2DTransform,
    Euler3DTransform,
    LinearTransform,
    RigidTransform,
    Similarity2DTransform,
    Similarity3DTransform,
    SimilarityTransform,
    TranslationTransform,
    make_transform,
)
from ppir_itk.wrapping.transforms import (
    TRANSFORM_FILE_SUFFIXES,
    from_itk,
    from_sitk,
    read_transform,
    to_itk,
    to_sitk,
    write_transform,
)

CASES = [
    (TranslationTransform, 2),
    (TranslationTransform, 3),
    (Euler2DTransform, 2),
    (Euler3DTransform, 3),
    (Similarity2DTransform, 2),
    (Similarity3DTransform, 3),
    (AffineTransform, 2),
    (AffineTransform, 3),
]
CASE_IDS = [f"{cls.__name__}-{d}d" for cls, d in CASES]
SEEDS = (0, 1, 2)


def random_parameters(cls: type[LinearTransform], d: int, rng: np.random.Generator) -> np.ndarray:
    """Non-trivial parameters in the range a registration would visit."""
    t = rng.uniform(-8.0, 8.0, size=d)
    if cls is TranslationTransform:
        return t
    if cls is Euler2DTransform:
        return np.concatenate([[rng.uniform(-1.2, 1.2)], t])
    if cls is Euler3DTransform:
        return np.concatenate([rng.uniform(-1.2, 1.2, size=3), t])
    if cls is Similarity2DTransform:
        return np.concatenate([[rng.uniform(0.6, 1.6), rng.uniform(-1.2, 1.2)], t])
    if cls is Similarity3DTransform:
        axis = rng.normal(size=3)
        versor = axis / np.linalg.norm(axis) * rng.uniform(0.1, 0.8)
        return np.concatenate([versor, t, [rng.uniform(0.6, 1.6)]])
    matrix = np.eye(d) + rng.uniform(-0.4, 0.4, size=(d, d))
    return np.concatenate([matrix.ravel(), t])


def random_transform(cls: type[LinearTransform], d: int, seed: int) -> LinearTransform:
    rng = np.random.default_rng(1000 * seed + 10 * d + CASES.index((cls, d)))
    center = None if cls is TranslationTransform else rng.uniform(-20.0, 20.0, size=d)
    return cls(d, random_parameters(cls, d, rng), center)


def random_points(d: int, n: int = 12, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-30.0, 30.0, size=(n, d))


def phi(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.hstack([points - reference, np.ones((points.shape[0], 1))])


def itk_jacobian(obj, point: np.ndarray, n_parameters: int) -> np.ndarray:
    """ITK's ComputeJacobianWithRespectToParameters, as a (d, P) array."""
    jacobian = itk.Array2D[itk.D](point.shape[0], n_parameters)
    obj.ComputeJacobianWithRespectToParameters([float(v) for v in point], jacobian)
    return np.array(itk.array_from_vnl_matrix(jacobian))


def finite_difference_jacobian(
    transform: LinearTransform, points: np.ndarray, step: float = 1e-6
) -> np.ndarray:
    """Central differences of transform_points, shape (P, n, d)."""
    theta = transform.parameters
    out = []
    for p in range(theta.size):
        plus, minus = transform.copy(), transform.copy()
        e = np.zeros(theta.size)
        e[p] = step
        plus.parameters = theta + e
        minus.parameters = theta - e
        out.append((plus.transform_points(points) - minus.transform_points(points)) / (2 * step))
    return np.array(out)


def assert_same_transform(a: LinearTransform, b: LinearTransform, atol: float = 1e-12) -> None:
    assert type(a) is type(b)
    assert a.dimension == b.dimension
    np.testing.assert_allclose(a.parameters, b.parameters, rtol=0, atol=atol)
    if a.has_center:
        np.testing.assert_allclose(a.center, b.center, rtol=0, atol=atol)
    else:
        assert a.center is None and b.center is None


# ----------------------------------------------------------------- (a) points vs ITK


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("cls", "d"), CASES, ids=CASE_IDS)
def test_points_match_itk_and_sitk(cls, d, seed):
    t = random_transform(cls, d, seed)
    points = random_points(d, seed=seed)
    matrix, offset = t.matrix_offset()
    ours = t.transform_points(points)
    np.testing.assert_allclose(ours, points @ matrix.T + offset, rtol=0, atol=1e-12)

    itk_obj = to_itk(t)
    sitk_obj = to_sitk(t)
    assert itk_obj.GetNameOfClass() == t.itk_name
    assert sitk_obj.GetName() == t.itk_name
    by_itk = np.array([itk_obj.TransformPoint([float(v) for v in p]) for p in points])
    by_sitk = np.array([sitk_obj.TransformPoint(tuple(float(v) for v in p)) for p in points])
    np.testing.assert_allclose(ours, by_itk, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours, by_sitk, rtol=0, atol=1e-12)

    np.testing.assert_allclose(offset, np.array(list(itk_obj.GetOffset())), rtol=0, atol=1e-12)
    if cls is not TranslationTransform:
        itk_matrix = np.array(itk.array_from_matrix(itk_obj.GetMatrix()))
        np.testing.assert_allclose(matrix, itk_matrix, rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            matrix.ravel(), np.array(sitk_obj.GetMatrix()), rtol=0, atol=1e-12
        )


def test_euler3d_rotation_order_is_itk_default_zxy():
    ax, ay, az = 0.3, -0.7, 1.1
    t = Euler3DTransform(3, [ax, ay, az, 0.0, 0.0, 0.0])

    def rx(a):
        return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])

    def ry(a):
        return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])

    def rz(a):
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])

    matrix, _ = t.matrix_offset()
    np.testing.assert_allclose(matrix, rz(az) @ rx(ax) @ ry(ay), rtol=0, atol=1e-15)
    itk_obj = to_itk(t)
    np.testing.assert_allclose(
        np.array(itk.array_from_matrix(itk_obj.GetMatrix())), matrix, rtol=0, atol=1e-15
    )
    # ITK's Euler3D fixed parameters are the centre plus the ComputeZYX flag.
    assert list(itk_obj.GetFixedParameters()) == [0.0, 0.0, 0.0, 0.0]
    assert to_sitk(t).GetComputeZYX() is False


def test_identity_by_default_and_centre_semantics():
    for kind in TRANSFORM_KINDS:
        for d in (2, 3):
            t = make_transform(kind, d)
            assert t.kind == kind
            points = random_points(d)
            np.testing.assert_array_equal(t.transform_points(points), points)
    t = AffineTransform(2, [2.0, 0.0, 0.0, 2.0, 1.0, -1.0], center=[3.0, 4.0])
    # W(x) = M (x - c) + c + t: the centre moves by t only.
    np.testing.assert_allclose(t.transform_points([[3.0, 4.0]]), [[4.0, 3.0]])
    _, offset = t.matrix_offset()
    np.testing.assert_allclose(offset, [1.0 + 3.0 - 6.0, -1.0 + 4.0 - 8.0])


# ------------------------------------------------------------ (b), (c) Jacobians


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("cls", "d"), CASES, ids=CASE_IDS)
def test_jacobian_matches_itk(cls, d, seed):
    t = random_transform(cls, d, seed)
    reference = np.random.default_rng(seed + 100).uniform(-15.0, 15.0, size=d)
    C = t.jacobian_in_affine_basis(reference)
    P = t.number_of_parameters
    assert C.shape == (P, d, d + 1)
    itk_obj = to_itk(t)
    points = random_points(d, n=6, seed=seed + 3)
    ours = np.einsum("pkj,nj->npk", C, phi(points, reference))  # (n, P, d)
    for n, point in enumerate(points):
        theirs = itk_jacobian(itk_obj, point, P)  # (d, P)
        np.testing.assert_allclose(ours[n], theirs.T, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("cls", "d"), CASES, ids=CASE_IDS)
def test_jacobian_matches_finite_differences(cls, d, seed):
    t = random_transform(cls, d, seed)
    points = random_points(d, n=8, seed=seed + 5)
    expected = finite_difference_jacobian(t, points)  # (P, n, d)
    for reference in (np.zeros(d), np.full(d, 4.5), t.center if t.has_center else np.ones(d)):
        C = t.jacobian_in_affine_basis(reference)
        ours = np.einsum("pkj,nj->pnk", C, phi(points, reference))
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_jacobian_of_rotation_depends_on_angle():
    a = Euler2DTransform(2, [0.0, 0.0, 0.0])
    b = Euler2DTransform(2, [0.5, 0.0, 0.0])
    assert not np.allclose(
        a.jacobian_in_affine_basis([0.0, 0.0]), b.jacobian_in_affine_basis([0, 0])
    )


# ---------------------------------------------------------------- (d) round trips


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("cls", "d"), CASES, ids=CASE_IDS)
def test_itk_and_sitk_round_trips(cls, d, seed):
    t = random_transform(cls, d, seed)
    assert_same_transform(from_itk(to_itk(t)), t)
    assert_same_transform(from_sitk(to_sitk(t)), t)
    # A plain sitk.Transform is downcast; composites of one transform are unwrapped.
    assert_same_transform(from_sitk(sitk.Transform(to_sitk(t))), t)
    composite = sitk.CompositeTransform(d)
    composite.AddTransform(to_sitk(t))
    assert_same_transform(from_sitk(composite), t)
    itk_composite = itk.CompositeTransform[itk.D, d].New()
    itk_composite.AddTransform(to_itk(t))
    assert_same_transform(from_itk(itk_composite), t)


@pytest.mark.parametrize("suffix", TRANSFORM_FILE_SUFFIXES)
@pytest.mark.parametrize(("cls", "d"), CASES, ids=CASE_IDS)
def test_file_round_trips(cls, d, suffix, tmp_path):
    t = random_transform(cls, d, seed=4)
    path = tmp_path / f"transform{suffix}"
    write_transform(t, path)
    assert sorted(os.listdir(tmp_path)) == [path.name]
    assert_same_transform(read_transform(path), t)
    # Readable by ITK and SimpleITK themselves.
    by_itk = itk.transformread(str(path))
    assert len(by_itk) == 1
    assert_same_transform(from_itk(by_itk[0]), t)
    by_sitk = sitk.ReadTransform(str(path))
    assert_same_transform(from_sitk(by_sitk), t)
    points = random_points(d)
    np.testing.assert_allclose(
        np.array([by_itk[0].TransformPoint([float(v) for v in p]) for p in points]),
        t.transform_points(points),
        rtol=0,
        atol=1e-12,
    )


def test_write_overwrites_and_accepts_str(tmp_path):
    path = str(tmp_path / "t.tfm")
    write_transform(TranslationTransform(2, [1.0, 2.0]), path)
    write_transform(TranslationTransform(2, [3.0, 4.0]), path)
    np.testing.assert_array_equal(read_transform(path).parameters, [3.0, 4.0])
    assert os.listdir(tmp_path) == ["t.tfm"]


@pytest.mark.parametrize("convert", ["itk", "sitk"])
def test_euler3d_with_compute_zyx_keeps_its_matrix(convert):
    params = (0.3, -0.5, 1.0, 1.0, 2.0, 3.0)
    center = (4.0, -5.0, 6.0)
    if convert == "itk":
        obj = itk.Euler3DTransform[itk.D].New()
        obj.SetComputeZYX(True)
        obj.SetCenter(center)
        obj.SetParameters(itk.OptimizerParameters[itk.D](params))
        t = from_itk(obj)
    else:
        obj = sitk.Euler3DTransform(center, *params[:3], params[3:])
        obj.SetComputeZYX(True)
        t = from_sitk(obj)
    assert isinstance(t, Euler3DTransform)
    np.testing.assert_allclose(t.center, center)
    np.testing.assert_allclose(t.parameters[3:], params[3:], atol=1e-12)
    points = random_points(3)
    expected = np.array([obj.TransformPoint([float(v) for v in p]) for p in points])
    np.testing.assert_allclose(t.transform_points(points), expected, rtol=0, atol=1e-12)


def test_conversion_rejects_other_objects():
    with pytest.raises(ValueError, match="str"):
        from_itk("not a transform")
    with pytest.raises(ValueError, match="DisplacementFieldTransform"):
        from_itk(itk.DisplacementFieldTransform[itk.D, 2].New())
    with pytest.raises(ValueError, match="int"):
        from_sitk(3)
    with pytest.raises(ValueError, match="DisplacementFieldTransform"):
        from_sitk(sitk.DisplacementFieldTransform(2))
    composite = sitk.CompositeTransform(2)
    composite.AddTransform(sitk.Euler2DTransform())
    composite.AddTransform(sitk.TranslationTransform(2))
    with pytest.raises(ValueError, match="then a B-spline"):
        from_sitk(composite)
    itk_composite = itk.CompositeTransform[itk.D, 2].New()
    with pytest.raises(ValueError, match="then a B-spline"):
        from_itk(itk_composite)
    with pytest.raises(ValueError, match="2-D and 3-D"):
        from_itk(itk.AffineTransform[itk.D, 4].New())
    with pytest.raises(TypeError):
        to_itk(sitk.AffineTransform(2))


# ------------------------------------------------------------------- (e) bad input


@pytest.mark.parametrize(("cls", "d"), CASES, ids=CASE_IDS)
def test_bad_parameters_raise(cls, d):
    t = random_transform(cls, d, seed=0)
    before = t.parameters
    P = t.number_of_parameters
    for bad in (np.zeros(P + 1), np.zeros(P - 1), np.zeros((P, 1)), "abc"):
        with pytest.raises(ValueError):
            t.parameters = bad
        with pytest.raises(ValueError):
            cls(d, bad)
        with pytest.raises(ValueError):
            t.update(bad)
    for value in (np.nan, np.inf, -np.inf):
        bad = before.copy()
        bad[0] = value
        with pytest.raises(ValueError, match="finite"):
            t.parameters = bad
        with pytest.raises(ValueError, match="finite"):
            cls(d, bad)
        with pytest.raises(ValueError, match="finite"):
            t.update(bad)
    np.testing.assert_array_equal(t.parameters, before)
    with pytest.raises(ValueError):
        cls(4)
    with pytest.raises(ValueError):
        t.jacobian_in_affine_basis(np.zeros(d + 1))
    with pytest.raises(ValueError):
        t.transform_points(np.zeros((3, d + 1)))


def test_bad_dimension_kind_and_centre_raise():
    for d in (1, 4, 2.0, True, "2"):
        with pytest.raises(ValueError, match="2-D and 3-D|integer"):
            make_transform("affine", d)
    with pytest.raises(ValueError, match="2-D and 3-D"):
        RigidTransform(4)
    with pytest.raises(ValueError, match="Euler2DTransform is 2-D only"):
        Euler2DTransform(3)
    with pytest.raises(ValueError, match="3-D only"):
        Similarity3DTransform(2)
    with pytest.raises(ValueError) as info:
        make_transform("bspline", 2)
    for kind in TRANSFORM_KINDS:
        assert kind in str(info.value)
    with pytest.raises(ValueError, match="no centre"):
        TranslationTransform(2, center=[1.0, 2.0])
    with pytest.raises(ValueError, match="center"):
        AffineTransform(2, center=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        Euler2DTransform(2, center=[np.nan, 0.0])


def test_versor_norm_must_stay_below_one():
    with pytest.raises(ValueError, match="norm < 1"):
        Similarity3DTransform(3, [0.6, 0.8, 0.0, 0.0, 0.0, 0.0, 1.0])
    # A step composes, as ITK's: 120 degrees about (1, 1, 1), then 0.1 sqrt(3) radians more
    # about it, is a versor of that axis past 0.75 (a sum would leave the unit ball).
    t = Similarity3DTransform(3, [0.5, 0.5, 0.5, 1.0, 2.0, 3.0, 1.1])
    t.update([0.1, 0.1, 0.1, 0.0, 0.0, 0.0, 0.05])
    angle = 2.0 * np.pi / 3.0 + 0.1 * np.sqrt(3.0)
    expected = np.sin(angle / 2.0) / np.sqrt(3.0)
    np.testing.assert_allclose(t.parameters, [*[expected] * 3, 1.0, 2.0, 3.0, 1.15], atol=1e-15)


def test_bad_suffix_raises_and_writes_nothing(tmp_path):
    t = make_transform("rigid", 3)
    for name in ("t.nii", "t", "t.TFM", "t.json", "t.tfm.bak"):
        with pytest.raises(ValueError, match=r"\.tfm, \.txt, \.h5, \.hdf5, \.mat"):
            write_transform(t, tmp_path / name)
    assert os.listdir(tmp_path) == []
    with pytest.raises(TypeError):
        write_transform(sitk.Euler3DTransform(), tmp_path / "t.tfm")
    with pytest.raises(FileNotFoundError):
        read_transform(tmp_path / "missing.tfm")
    (tmp_path / "garbage.tfm").write_text("not a transform\n")
    with pytest.raises(ValueError, match="could not read"):
        read_transform(tmp_path / "garbage.tfm")


# ----------------------------------------------------------- (f) failed writes


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    t = random_transform(Similarity3DTransform, 3, seed=1)
    # The target is a directory: the write succeeds, os.replace fails.
    (tmp_path / "dir.tfm").mkdir()
    with pytest.raises(OSError):
        write_transform(t, tmp_path / "dir.tfm")
    assert os.listdir(tmp_path) == ["dir.tfm"]
    assert os.listdir(tmp_path / "dir.tfm") == []

    # The directory does not exist: a user error, said in a sentence.
    with pytest.raises(InputError, match="does not exist"):
        write_transform(t, tmp_path / "missing" / "t.h5")
    assert os.listdir(tmp_path) == ["dir.tfm"]

    # SimpleITK fails half way: the temporary file goes, an existing target stays.
    target = tmp_path / "t.mat"
    write_transform(make_transform("affine", 3), target)
    original = target.read_bytes()
    seen = []

    def failing_write(obj, path):
        seen.append(path)
        assert path.endswith(".mat") and os.path.dirname(path) == str(tmp_path)
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteTransform", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_transform(t, target)
    assert len(seen) == 1 and not os.path.exists(seen[0])
    assert sorted(os.listdir(tmp_path)) == ["dir.tfm", "t.mat"]
    assert target.read_bytes() == original


# -------------------------------------------------------------- API behaviour


@pytest.mark.parametrize(("cls", "d"), CASES, ids=CASE_IDS)
def test_copy_update_repr_and_metadata(cls, d):
    t = random_transform(cls, d, seed=2)
    params = t.parameters
    params[0] += 1.0  # a copy: the transform does not change
    assert t.parameters[0] != params[0]
    c = t.copy()
    assert_same_transform(c, t, atol=0)
    delta = np.linspace(-0.01, 0.01, t.number_of_parameters)
    c.update(delta)
    # ITK's Similarity3D step composes its versor (tests/test_transform_types.py): the rest adds.
    added = slice(3, None) if cls is Similarity3DTransform else slice(None)
    np.testing.assert_allclose(
        c.parameters[added], (t.parameters + delta)[added], rtol=0, atol=1e-15
    )
    assert not np.array_equal(c.parameters, t.parameters)
    assert cls.__name__ in repr(t) and f"dimension={d}" in repr(t)
    assert t.kind in TRANSFORM_KINDS
    assert t.itk_name == cls.__name__
    assert (
        t.number_of_parameters
        == {
            TranslationTransform: d,
            Euler2DTransform: 3,
            Euler3DTransform: 6,
            Similarity2DTransform: 4,
            Similarity3DTransform: 7,
            AffineTransform: d * (d + 1),
        }[cls]
    )
    assert t.number_of_parameters == to_itk(t).GetNumberOfParameters()
    assert len(t.fixed_parameters) == to_itk(t).GetFixedParameters().GetSize()


def test_factories():
    assert isinstance(RigidTransform(2), Euler2DTransform)
    assert isinstance(RigidTransform(3), Euler3DTransform)
    assert isinstance(SimilarityTransform(2), Similarity2DTransform)
    assert isinstance(SimilarityTransform(3), Similarity3DTransform)
    expected = {
        "translation": TranslationTransform,
        "rigid": {2: Euler2DTransform, 3: Euler3DTransform},
        "similarity": {2: Similarity2DTransform, 3: Similarity3DTransform},
        "affine": AffineTransform,
    }
    for kind in TRANSFORM_KINDS:
        for d in (2, 3):
            cls = expected[kind] if isinstance(expected[kind], type) else expected[kind][d]
            assert type(make_transform(kind, d)) is cls
    a = AffineTransform.from_matrix_offset([[1.0, 2.0], [3.0, 4.0]], [5.0, 6.0], [1.0, 1.0])
    matrix, offset = a.matrix_offset()
    np.testing.assert_allclose(matrix, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(offset, [5.0, 6.0])
