"""The synthetic pairs: the second modality's intensity map and the multi-modal pair's truth."""

import numpy as np
import pytest

from ppir_itk.evaluation import displacement_rmse, sitk_reference_registration
from ppir_itk.phantoms import head_phantom, multimodal_moved_copy, second_modality
from ppir_itk.transforms import make_transform
from ppir_itk.wrapping.resample import resample


@pytest.fixture(scope="module")
def phantom():
    return head_phantom((96, 96))


def _class_means(values, reference):
    """Mean of ``values`` over each of the phantom's tissue classes (by ``reference``)."""
    classes = {
        "background": np.abs(reference) < 1.0,
        "ventricles": reference < -5.0,
        "brain": (reference > 15.0) & (reference < 25.0),
        "skull": reference > 90.0,
    }
    return {name: float(values[inside].mean()) for name, inside in classes.items()}


def test_the_second_modality_swaps_some_tissues_and_keeps_others():
    sharp = head_phantom((128, 128), smoothing=0.5)  # the thin skull keeps its intensity
    before = _class_means(sharp.array, sharp.array)
    after = _class_means(second_modality(sharp).array, sharp.array)
    order_before = sorted(before, key=before.get)
    order_after = sorted(after, key=after.get)
    assert order_before == ["ventricles", "background", "brain", "skull"]
    # skull darkest, brain brightest: neither the order nor its reverse, so not monotonic
    assert order_after == ["skull", "ventricles", "background", "brain"]


def test_the_gain_scales_the_second_modality(phantom):
    once = second_modality(phantom).array
    np.testing.assert_allclose(second_modality(phantom, gain=1.5).array, 1.5 * once, rtol=1e-6)


def test_the_multimodal_pair_is_aligned_by_its_truth(phantom):
    truth = make_transform("affine", 2)
    truth.center = phantom.geometry.center()
    truth.parameters = [1.05, 0.06, -0.04, 0.98, 3.0, -2.0]
    moving = multimodal_moved_copy(phantom, truth)
    expected = second_modality(phantom).array

    def error(transform):
        warped = resample(moving, transform, phantom.geometry, outside=np.nan).array
        inside = np.isfinite(warped)
        return float(np.mean(np.abs(warped[inside] - expected[inside])))

    assert error(truth) < 0.1 * error(make_transform("affine", 2))
    assert error(truth) < 1.5


def test_simpleitk_mattes_registers_the_multimodal_pair_and_mean_squares_does_not():
    """The pair is what the metric is for: only a metric that does not need the tissues'
    order (SimpleITK's own Mattes MI, the reference) finds its truth."""
    fixed = head_phantom((128, 128))
    truth = make_transform("affine", 2)
    truth.center = fixed.geometry.center()
    truth.parameters = [1.04, 0.05, -0.05, 0.97, 3.0, -2.0]
    moving = multimodal_moved_copy(fixed, truth)
    initial = make_transform("affine", 2)
    initial.center = fixed.geometry.center()
    start = displacement_rmse(initial, truth, fixed.geometry)

    def residual(metric):
        found = sitk_reference_registration(
            fixed,
            moving,
            initial,
            metric=metric,
            sampling_fraction=0.25,
            iterations=200,
            minimum_step=1e-4,
            relaxation_factor=0.5,
        )
        return displacement_rmse(found, truth, fixed.geometry)

    assert residual("mattes") < 0.2
    assert residual("meansquares") > start
