"""Masks: ITK's reading of them (nearest pixel, nonzero), the clear backend's masked metrics
against SimpleITK's, the fixed mask's sums against the moving mask's, a registration a mask
puts right, the facades, the command line, and the backends that refuse a fixed mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import known_pair, register_in_process

import ppir_itk
import ppir_itk.simpleitk as facade
from ppir_itk.backends import BACKENDS, HISTOGRAM_BACKENDS
from ppir_itk.bspline import BSplineTransform
from ppir_itk.cli import main
from ppir_itk.errors import InputError
from ppir_itk.image import ImageGrid
from ppir_itk.masks import as_mask, inside
from ppir_itk.metric_kinds import CORRELATION, MATTES, MEAN_SQUARES, METRICS
from ppir_itk.phantoms import head_phantom
from ppir_itk.policy import FixedPolicy
from ppir_itk.protocol.session import PeerError
from ppir_itk.pyramid import Level, LevelSchedule
from ppir_itk.transforms import make_transform
from ppir_itk.wrapping.images import to_itk, to_sitk, write_image
from ppir_itk.wrapping.transforms import to_sitk as transform_to_sitk

METRIC_CLASSES = {
    MEAN_SQUARES: ppir_itk.PrivateMeanSquaresImageToImageMetric,
    CORRELATION: ppir_itk.PrivateCorrelationImageToImageMetric,
    MATTES: ppir_itk.PrivateMattesMutualInformationImageToImageMetric,
}
BINS = 20


def _rotation(dimension: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    if dimension == 2:
        return np.array([[c, -s], [s, c]])
    about_z = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return about_z @ about_x


def _spatial_object(grid: ImageGrid):
    """ITK's ImageMaskSpatialObject of a mask (its image of unsigned char)."""
    import itk

    image = itk.image_from_array(np.ascontiguousarray(grid.array, dtype=np.uint8))
    image.CopyInformation(to_itk(grid))
    spatial = itk.ImageMaskSpatialObject[grid.dimension].New()
    spatial.SetImage(image)
    spatial.Update()
    return spatial


# -- masks.inside against ITK's ImageMaskSpatialObject -----------------------------------
@pytest.mark.parametrize("dimension", [2, 3])
def test_inside_is_itk_s_image_mask_spatial_object_on_a_rotated_anisotropic_grid(dimension):
    rng = np.random.default_rng(dimension)
    shape = (9, 7) if dimension == 2 else (7, 6, 5)
    array = ((rng.random(shape) > 0.5) * rng.integers(1, 5, shape)).astype(np.uint8)
    grid = ImageGrid(
        array,
        spacing=(1.3, 0.7, 2.1)[:dimension],
        origin=(-3.0, 2.0, 1.0)[:dimension],
        direction=_rotation(dimension, 0.4),
    )
    corners = grid.geometry.corners()
    points = rng.uniform(corners.min(0) - 3.0, corners.max(0) + 3.0, (3000, dimension))
    spatial = _spatial_object(grid)
    expected = [int(spatial.IsInsideInWorldSpace([float(v) for v in point])) for point in points]
    ours = inside(as_mask(spatial, name="mask"), points)
    assert ours.tolist() == expected
    assert 0 < ours.sum() < len(points) / 2  # points on and off the grid, inside and outside


# -- the clear backend's masked metrics against SimpleITK's -------------------------------
@pytest.fixture(scope="module")
def masked_scene() -> dict:
    """A pair on different grids, masks that overlap the images and each other partly, and a
    small affine transform."""
    fixed = head_phantom((48, 44), spacing=(1.1, 0.9))
    moving = ImageGrid(head_phantom((50, 46)).array, spacing=(1.0, 1.05), origin=(-2.0, 1.0))
    fixed_mask = np.zeros(fixed.array.shape, np.uint8)
    fixed_mask[8:36, 10:30] = 3
    moving_mask = np.zeros(moving.array.shape, np.uint8)
    moving_mask[5:28, 12:48] = 1
    transform = make_transform("affine", 2)
    transform.center = fixed.geometry.center()
    transform.parameters = [1.02, 0.03, -0.02, 0.98, 0.7, -0.4]
    return {
        "fixed": fixed,
        "moving": moving,
        "fixed_mask": ImageGrid(fixed_mask, spacing=(1.1, 0.9)),
        "moving_mask": ImageGrid(moving_mask, spacing=(1.0, 1.05), origin=(-2.0, 1.0)),
        "transform": transform,
    }


def _evaluation(
    fixed, moving, transform, metric, fixed_mask=None, moving_mask=None, backend="clear"
):
    """The metric's evaluation (the clear backend's unless told) on one level of every
    point."""
    session = ppir_itk.in_process_session(
        fixed, FixedPolicy.holding_both_images((backend,)), fixed_mask=fixed_mask
    )
    options = {"number_of_histogram_bins": BINS} if metric == MATTES else {}
    private = METRIC_CLASSES[metric](backend, session=session, **options)
    private.SetMovingImage(moving)
    private.SetMovingImageMask(moving_mask)
    private.SetTransform(transform.copy())
    private.moving_party.start(LevelSchedule.from_lists([1], [0.0]), ppir_itk.NoSampling())
    private.initialize_level(0, Level(1, 0.0), ppir_itk.NoSampling())
    return private.evaluate()


def _simpleitk_value(scene, metric, fixed_mask, moving_mask) -> float:
    method = sitk.ImageRegistrationMethod()
    if metric == MEAN_SQUARES:
        method.SetMetricAsMeanSquares()
    elif metric == CORRELATION:
        method.SetMetricAsCorrelation()
    else:
        method.SetMetricAsMattesMutualInformation(BINS)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform_to_sitk(scene["transform"]))
    if fixed_mask is not None:
        method.SetMetricFixedMask(to_sitk(fixed_mask))
    if moving_mask is not None:
        method.SetMetricMovingMask(to_sitk(moving_mask))
    images = [sitk.Cast(to_sitk(scene[name]), sitk.sitkFloat32) for name in ("fixed", "moving")]
    return method.MetricEvaluate(*images)


@pytest.mark.parametrize("masks", ["fixed", "moving", "both"])
@pytest.mark.parametrize("metric", METRICS)
def test_a_masked_clear_metric_has_simpleitk_s_value(masked_scene, metric, masks):
    fixed_mask = masked_scene["fixed_mask"] if masks != "moving" else None
    moving_mask = masked_scene["moving_mask"] if masks != "fixed" else None
    ours = _evaluation(
        masked_scene["fixed"],
        masked_scene["moving"],
        masked_scene["transform"],
        metric,
        fixed_mask,
        moving_mask,
    )
    unmasked = _evaluation(
        masked_scene["fixed"], masked_scene["moving"], masked_scene["transform"], metric
    )
    assert ours.number_of_valid_points < unmasked.number_of_valid_points
    expected = _simpleitk_value(masked_scene, metric, fixed_mask, moving_mask)
    assert abs(expected - _simpleitk_value(masked_scene, metric, None, None)) > 1e-3 * abs(expected)
    np.testing.assert_allclose(ours.value, expected, rtol=1e-6)


def test_a_moving_mask_is_read_at_a_bspline_s_own_map_of_the_points(masked_scene):
    bulk = masked_scene["transform"]
    bspline = BSplineTransform.over(masked_scene["fixed"].geometry, 12.0, bulk=bulk)
    rng = np.random.default_rng(7)
    bspline.parameters = rng.uniform(-2.5, 2.5, bspline.number_of_parameters)
    scene = {**masked_scene, "transform": bspline}
    ours = _evaluation(
        scene["fixed"], scene["moving"], bspline, MEAN_SQUARES, moving_mask=scene["moving_mask"]
    )
    expected = _simpleitk_value(scene, MEAN_SQUARES, None, scene["moving_mask"])
    np.testing.assert_allclose(ours.value, expected, rtol=1e-6)
    # Read at the bulk's map alone, the mask would keep other points.
    linear = _evaluation(
        scene["fixed"], scene["moving"], bulk, MEAN_SQUARES, moving_mask=scene["moving_mask"]
    )
    assert linear.number_of_valid_points != ours.number_of_valid_points


@pytest.mark.parametrize("metric", METRICS)
def test_the_fixed_mask_s_sums_give_the_moving_mask_s_value_and_gradient(metric):
    """On one grid under the identity, a moving mask equal to the fixed mask keeps the same
    points: the metric through the fixed party's masked sums (MaskedSums, MaskedHistogram)
    equals the metric through the moving party's own narrowed valid points."""
    fixed = head_phantom((40, 36))
    moving, _ = known_pair(fixed, "rigid", [0.05, 1.5, -1.0])
    region = (slice(6, 30), slice(8, 30))
    for image in (fixed, moving):  # each image's range inside the mask: Mattes's bins agree
        image.array[10, 10] = image.array.max() + 1.0
        image.array[11, 11] = image.array.min() - 1.0
    mask = np.zeros(fixed.array.shape, np.uint8)
    mask[region] = 1
    mask_grid = ImageGrid(mask)
    identity = make_transform("affine", 2)
    identity.center = fixed.geometry.center()
    through_fixed = _evaluation(fixed, moving, identity, metric, fixed_mask=mask_grid)
    through_moving = _evaluation(fixed, moving, identity, metric, moving_mask=mask_grid)
    assert (
        through_fixed.number_of_valid_points == mask.sum() == through_moving.number_of_valid_points
    )
    np.testing.assert_allclose(through_fixed.value, through_moving.value, rtol=1e-10)
    np.testing.assert_allclose(
        through_fixed.gradient,
        through_moving.gradient,
        rtol=0,
        atol=1e-9 * np.abs(through_moving.gradient).max(),
    )
    assert np.abs(through_fixed.gradient).max() > 0


def _masked_private_backends() -> list[tuple[str, str]]:
    """(backend, metric) pairs a private backend computes with a fixed mask."""
    pairs = []
    for metric in METRICS:
        for name, protocols in BACKENDS.items():
            halves = (
                HISTOGRAM_BACKENDS.get(name) if metric == MATTES else next(iter(protocols.values()))
            )
            if halves is None or not halves[0].private or metric not in halves[0].metrics:
                continue
            if all(metric in half.fixed_mask_metrics for half in halves):
                pairs.append((name, metric))
    return pairs


@pytest.mark.parametrize(("backend", "metric"), _masked_private_backends() or [("none", "none")])
def test_a_private_backend_s_masked_metric_is_clear_s(masked_scene, backend, metric):
    if backend == "none":
        pytest.skip("no private backend computes a metric with a fixed mask yet")
    scene = [masked_scene[name] for name in ("fixed", "moving", "transform")]
    masks = {name: masked_scene[name] for name in ("fixed_mask", "moving_mask")}
    clear = _evaluation(*scene, metric, **masks)
    private = _evaluation(*scene, metric, **masks, backend=backend)
    assert private.number_of_valid_points == clear.number_of_valid_points
    # Fixed point: J to 13 bits or more (tests/test_correlation.py's tolerances); Mattes on
    # shares: the secure log's error, 3e-4 of the largest moment (tests/test_spdz_mattes.py).
    share = 3e-4 if metric == MATTES else 1e-4
    np.testing.assert_allclose(private.value, clear.value, rtol=1e-5)
    np.testing.assert_allclose(
        private.gradient, clear.gradient, rtol=0, atol=share * np.abs(clear.gradient).max()
    )


# -- a registration a mask puts right ---------------------------------------------------
@pytest.fixture(scope="module")
def distracted_pair() -> dict:
    """A head moved by a known translation, and a bright square in a corner that stays where
    it is in both images (a table in a scanner): the fixed mask leaves it out."""
    fixed = head_phantom((64, 64))
    moving, truth = known_pair(fixed, "translation", [2.5, -2.0])
    for image in (fixed, moving):
        image.array[0:16, 48:64] = 3.0 * fixed.array.max()
    mask = np.zeros(fixed.array.shape, np.uint8)
    mask[:, :42] = 1  # x < 42 mm: T(x) stays off the square (x >= 48) too
    return {"fixed": fixed, "moving": moving, "truth": truth, "mask": ImageGrid(mask)}


def _error(result, truth) -> float:
    return float(np.max(np.abs(result.transform.parameters - truth.parameters)))


def test_a_fixed_mask_keeps_the_registration_off_a_distracting_structure(distracted_pair):
    options = dict(
        transform="translation",
        shrink_factors=[2, 1],
        smoothing_sigmas=[1.0, 0.0],
        initializer="none",
        iterations=300,  # Gauss-Newton's own matrix spans the points outside the mask too
    )
    fixed, moving, truth = (distracted_pair[k] for k in ("fixed", "moving", "truth"))
    masked = register_in_process(fixed, moving, fixed_mask=distracted_pair["mask"], **options)
    unmasked = register_in_process(fixed, moving, **options)
    assert _error(masked, truth) < 0.1 < 0.5 < _error(unmasked, truth)
    assert masked.fixed_mask and not masked.moving_mask and not unmasked.fixed_mask
    counts = [level.points_inside_fixed_mask for level in masked.levels]
    assert 0 < counts[0] < counts[1] < fixed.geometry.number_of_points
    assert [level.points_inside_fixed_mask for level in unmasked.levels] == [None, None]
    assert masked.report()["masks"] == {"fixed": True, "moving": False}


# -- the facades ------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["SetMetricFixedMask", "SetMetricMovingMask"])
def test_the_simpleitk_facade_s_masks_register_as_simpleitk_does(distracted_pair, which):
    fixed, moving = to_sitk(distracted_pair["fixed"]), to_sitk(distracted_pair["moving"])
    mask = to_sitk(distracted_pair["mask"])

    def script(method):
        method.SetMetricAsMeanSquares()
        method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200)
        method.SetInitialTransform(sitk.TranslationTransform(2))
        getattr(method, which)(mask)
        return method

    theirs = script(sitk.ImageRegistrationMethod())
    theirs.SetInterpolator(sitk.sitkLinear)
    expected = theirs.Execute(
        sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)
    )
    ours = script(facade.ImageRegistrationMethod(backend="clear")).Execute(fixed, moving)
    difference = np.subtract(ours.GetParameters(), expected.GetParameters())
    assert np.max(np.abs(difference)) < 0.5  # px: unit spacing
    np.testing.assert_allclose(ours.GetParameters(), [2.5, -2.0], atol=0.5)


@pytest.mark.parametrize("metric", METRICS)
def test_the_facade_s_metric_evaluate_with_masks_and_a_moving_initial_transform_is_simpleitk_s(
    masked_scene, metric
):
    """The moving mask is read where the moving image is: at ``initial(T(x))``."""
    images = [sitk.Cast(to_sitk(masked_scene[k]), sitk.sitkFloat32) for k in ("fixed", "moving")]
    initial = sitk.TranslationTransform(2, (1.5, -2.0))

    def script(method):
        if metric == MEAN_SQUARES:
            method.SetMetricAsMeanSquares()
        elif metric == CORRELATION:
            method.SetMetricAsCorrelation()
        else:
            method.SetMetricAsMattesMutualInformation(BINS)
        method.SetInitialTransform(transform_to_sitk(masked_scene["transform"]))
        method.SetMovingInitialTransform(initial)
        method.SetMetricFixedMask(to_sitk(masked_scene["fixed_mask"]))
        method.SetMetricMovingMask(to_sitk(masked_scene["moving_mask"]))
        return method

    theirs = script(sitk.ImageRegistrationMethod())
    theirs.SetInterpolator(sitk.sitkLinear)
    expected = theirs.MetricEvaluate(*images)
    ours = script(facade.ImageRegistrationMethod(backend="clear")).MetricEvaluate(*images)
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    assert abs(expected - _simpleitk_value(masked_scene, metric, None, None)) > 1e-3 * abs(expected)


def test_a_fixed_mask_for_a_remote_fixed_party_is_refused_in_a_sentence(distracted_pair):
    method = facade.ImageRegistrationMethod(backend="clear")
    method.SetMetricAsMeanSquares()
    method.SetMetricFixedMask(to_sitk(distracted_pair["mask"]))
    method.SetInitialTransform(sitk.TranslationTransform(2))
    remote = facade.RemoteFixedImage("127.0.0.1:1", tls=None)  # never reached
    with pytest.raises(InputError, match=r"^SetMetricFixedMask: .*'ppir serve --fixed-mask'"):
        method.Execute(remote, to_sitk(distracted_pair["moving"]))
    with pytest.raises(InputError, match=r"belongs to the fixed party: .*--fixed-mask"):
        ppir_itk.register_with(
            None, distracted_pair["moving"], backend="clear", fixed_mask=distracted_pair["mask"]
        )


def test_the_itk_metric_takes_its_masks_by_itk_s_names(masked_scene):
    session = ppir_itk.in_process_session(
        masked_scene["fixed"], FixedPolicy.holding_both_images(("clear",))
    )
    metric = ppir_itk.PrivateMeanSquaresImageToImageMetric("clear", session=session)
    metric.SetMovingImageMask(_spatial_object(masked_scene["moving_mask"]))
    metric.SetFixedImageMask(masked_scene["fixed_mask"])
    assert metric.GetMovingImageMask().array.sum() == (masked_scene["moving_mask"].array != 0).sum()
    metric.SetMovingImage(masked_scene["moving"])
    metric.SetTransform(masked_scene["transform"].copy())
    metric.moving_party.start(LevelSchedule.from_lists([1], [0.0]), ppir_itk.NoSampling())
    assert metric.fixed_masked
    with pytest.raises(InputError, match=r"^SetFixedImageMask: the fixed mask belongs"):
        metric.SetFixedImageMask(masked_scene["fixed_mask"])  # the session has started


# -- the command line -------------------------------------------------------------------
def test_ppir_register_takes_both_masks_and_reports_the_fixed_mask_s_counts(
    distracted_pair, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # relative paths: the caller's, as the images' are
    for name in ("fixed", "moving", "mask"):
        write_image(distracted_pair[name], tmp_path / f"{name}.nrrd")
    code = main(
        [
            "register",
            *("--fixed", "fixed.nrrd", "--moving", "moving.nrrd"),
            *("--fixed-mask", "mask.nrrd", "--moving-mask", "mask.nrrd"),
            *("--backend", "clear", "--transform", "translation", "--initializer", "none"),
            *("--shrink-factors", "2", "1", "--smoothing-sigmas", "1", "0"),
            *("--output-transform", "out.tfm", "--report", "report.json"),
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["masks"] == {"fixed": True, "moving": True}
    counts = [level["points_inside_fixed_mask"] for level in report["levels"]]
    assert all(count > 0 for count in counts)
    assert f"moving party learned: {counts[0]} {counts[1]}" in capsys.readouterr().out
    np.testing.assert_allclose(report["parameters"], [2.5, -2.0], atol=0.1)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fixed-mask", "absent.nrrd"], "--fixed-mask 'absent.nrrd' does not exist"),
        (["--moving-mask", "three.nrrd"], "moving mask is 3-D but the image it restricts is 2-D"),
        (["--fixed-mask", "empty.nrrd"], "fixed mask has no pixel inside"),
    ],
)
def test_a_bad_mask_is_refused_in_one_sentence(
    distracted_pair, tmp_path, monkeypatch, capsys, flags, message
):
    monkeypatch.chdir(tmp_path)
    for name in ("fixed", "moving"):
        write_image(distracted_pair[name], tmp_path / f"{name}.nrrd")
    write_image(ImageGrid(np.ones((3, 4, 5), np.uint8)), tmp_path / "three.nrrd")
    write_image(ImageGrid(np.zeros((8, 8), np.uint8)), tmp_path / "empty.nrrd")
    code = main(
        [
            "register",
            *("--fixed", "fixed.nrrd", "--moving", "moving.nrrd", "--backend", "clear"),
            *("--output-transform", "out.tfm", *flags),
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_a_mask_with_no_point_inside_at_a_level_is_refused_with_the_metric_s_sentence(
    masked_scene,
):
    far = ImageGrid(np.ones((4, 4), np.uint8), origin=(500.0, 500.0))
    with pytest.raises(InputError, match="no fixed-grid point inside the masks maps inside"):
        _evaluation(
            masked_scene["fixed"],
            masked_scene["moving"],
            masked_scene["transform"],
            MEAN_SQUARES,
            fixed_mask=far,
        )


# -- the backends that cannot restrict a metric to a fixed mask --------------------------
def _unmasked_backends() -> list[tuple[str, str, str]]:
    """(backend, protocol, metric) triples a backend's protocol computes, but not with a
    fixed mask (today: the he backend's paper protocols)."""
    triples = []
    for metric in METRICS:
        for name, protocols in BACKENDS.items():
            for protocol, halves in protocols.items():
                if metric == MATTES:
                    halves = HISTOGRAM_BACKENDS.get(name) if protocol == name else None
                if halves is None or metric not in halves[0].metrics:
                    continue
                if not all(metric in half.fixed_mask_metrics for half in halves):
                    triples.append((name, protocol, metric))
    return triples


@pytest.mark.parametrize(("backend", "protocol", "metric"), _unmasked_backends())
def test_a_backend_without_a_masked_metric_is_refused_naming_both(
    distracted_pair, backend, protocol, metric
):
    fixed, moving, mask = (distracted_pair[k] for k in ("fixed", "moving", "mask"))
    options = dict(backend=backend, metric=metric, backend_parameters={"protocol": protocol})
    named = rf"backend '{backend}' \(protocol {protocol}\) does not compute metric '{metric}'"
    with pytest.raises(
        InputError,
        match=rf"{named} within a fixed mask: register with backend .*clear, which is NOT private",
    ):
        ppir_itk.register(fixed, moving, fixed_mask=mask, **options)
    # A fixed party that serves with a mask ends such a session itself.
    session = ppir_itk.in_process_session(fixed, fixed_mask=mask)
    with pytest.raises(PeerError, match=rf"restricts the metric to its mask, and {named}"):
        ppir_itk.register_with(session, moving, iterations=1, **options)
