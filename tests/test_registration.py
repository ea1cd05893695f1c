"""Clear registrations: known transforms recovered, agreement with SimpleITK's own."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import known_pair, register_in_process

import ppir_itk
from ppir_itk import parallel
from ppir_itk.errors import InputError
from ppir_itk.evaluation import displacement_rmse, sitk_reference_registration
from ppir_itk.phantoms import head_phantom
from ppir_itk.transforms import make_transform
from ppir_itk.wrapping.images import as_image_grid

KNOWN = {
    (2, "rigid"): [0.08, 2.5, -1.5],
    (2, "similarity"): [1.04, -0.06, 1.5, 2.0],
    (2, "affine"): [1.04, 0.06, -0.05, 0.96, 2.0, -1.0],
    (2, "translation"): [2.7, -1.9],
    (3, "rigid"): [0.05, -0.04, 0.07, 1.5, -1.0, 2.0],
    (3, "affine"): [1.03, 0.04, -0.02, -0.03, 0.97, 0.05, 0.02, -0.04, 1.02, 1.0, -1.5, 2.0],
}


@pytest.mark.parametrize(("dimension", "kind"), sorted(KNOWN))
def test_known_transform_is_recovered(dimension, kind, phantom_2d, phantom_3d):
    fixed = phantom_2d if dimension == 2 else phantom_3d
    moving, truth = known_pair(fixed, kind, KNOWN[dimension, kind])
    result = register_in_process(
        fixed, moving, transform=kind, shrink_factors=[2, 1], smoothing_sigmas=[1.0, 0.0]
    )
    voxel = min(fixed.geometry.spacing)
    error = displacement_rmse(result.transform, truth, fixed.geometry)
    assert error < 0.1 * voxel, f"{kind} {dimension}-D: RMSE {error:.4f} mm"
    assert result.transform.kind == kind


def test_identical_images_do_not_move(phantom_2d):
    result = register_in_process(
        phantom_2d, phantom_2d, transform="affine", shrink_factors=[1], smoothing_sigmas=[0.0]
    )
    identity = make_transform("affine", 2)
    assert displacement_rmse(result.transform, identity, phantom_2d.geometry) < 1e-6
    assert result.final_metric < 1e-10


def _sitk_agreement(fixed, moving, kind, shrink, sigmas):
    result = register_in_process(
        fixed, moving, transform=kind, shrink_factors=shrink, smoothing_sigmas=sigmas
    )
    initial = make_transform(kind, fixed.dimension)
    initial.center = fixed.geometry.center()
    initial.translation = moving.geometry.center() - fixed.geometry.center()
    reference = sitk_reference_registration(
        fixed, moving, initial, shrink_factors=shrink, smoothing_sigmas=sigmas
    )
    return displacement_rmse(result.transform, reference, fixed.geometry)


@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_clear_agrees_with_simpleitk_on_real_mri(kind, nibabel_data):
    """nibabel's T1 volume and its reoriented, resampled, moved copy (a real pair)."""
    fixed = as_image_grid(os.path.join(nibabel_data, "anatomical.nii"))
    moving = as_image_grid(os.path.join(nibabel_data, "reoriented_anat_moved.nii"))
    error = _sitk_agreement(fixed, moving, kind, [2, 1], [2.0, 0.0])
    assert error < 0.5 * min(fixed.geometry.spacing), f"RMSE {error:.3f} mm"


def test_clear_agrees_with_simpleitk_on_real_mri_slice(nibabel_data):
    volume = as_image_grid(os.path.join(nibabel_data, "anatomical.nii"))
    fixed = ppir_itk.ImageGrid(volume.array[12], spacing=volume.geometry.spacing[:2])
    moving, _ = known_pair(fixed, "affine", [1.05, 0.05, -0.04, 0.97, 2.0, -1.5])
    error = _sitk_agreement(fixed, moving, "affine", [2, 1], [1.0, 0.0])
    assert error < 0.5 * min(fixed.geometry.spacing), f"RMSE {error:.3f} mm"


@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_clear_agrees_with_simpleitk_on_phantom(kind, phantom_3d):
    moving, _ = known_pair(phantom_3d, kind, KNOWN[3, kind])
    error = _sitk_agreement(phantom_3d, moving, kind, [2, 1], [1.0, 0.0])
    assert error < 0.5 * min(phantom_3d.geometry.spacing), f"RMSE {error:.3f} mm"


def test_same_seed_gives_bit_identical_transforms_for_any_thread_count():
    """The finest level has three kernel chunks, so 2 and 3 threads split its sums
    differently from 1; chunk boundaries and the order of partial sums must not move."""
    fixed = head_phantom((288, 256), spacing=(1.1, 0.9))
    moving, _ = known_pair(fixed, "affine", KNOWN[2, "affine"])
    runs = [
        register_in_process(
            fixed,
            moving,
            sampling="urs",
            sampling_fraction=0.95,
            seed=7,
            threads=threads,
            shrink_factors=[2, 1],
            smoothing_sigmas=[1, 0],
        )
        for threads in (1, 2, 3)
    ]
    assert runs[0].levels[-1].points > 2 * parallel.CHUNK  # three chunks at the finest level
    for run in runs[1:]:
        assert run.threads != runs[0].threads
        np.testing.assert_array_equal(run.transform.parameters, runs[0].transform.parameters)


@pytest.mark.parametrize(
    "sampling",
    [
        ppir_itk.URS(0.25, seed=1),
        ppir_itk.GMS(0.25, seed=1),
        ppir_itk.GMS(0.25, seed=1, reveal_indices=True),
    ],
    ids=["urs", "gms-hidden", "gms-revealed"],
)
def test_sampled_registrations_recover_the_transform(sampling, phantom_2d):
    moving, truth = known_pair(phantom_2d, "affine", KNOWN[2, "affine"])
    result = register_in_process(
        phantom_2d, moving, sampling=sampling, shrink_factors=[2, 1], smoothing_sigmas=[1.0, 0.0]
    )
    assert displacement_rmse(result.transform, truth, phantom_2d.geometry) < 0.2
    revealed = [line for line in result.learned["fixed"] if "GMS" in line]
    assert bool(revealed) == sampling.reveals_indices
    full = phantom_2d.geometry.number_of_points
    assert result.levels[-1].points == (
        full if sampling.name == "gms" and not sampling.reveals_indices else round(0.25 * full)
    )


def test_gms_draws_by_magnitude_and_a_nearby_magnitude_moves_the_cutoff_only():
    """A level's GMS sample comes from the level before's result, which each backend gives
    to its own last bits: a magnitude that close must change the sample at its cutoff only
    (a sequential draw changed 13 % of it here, half of it in a registration's last level,
    and the private results left Clear's)."""
    rng = np.random.default_rng(0)
    magnitude = rng.random(5000) ** 4
    gms = ppir_itk.GMS(0.2, seed=3)
    drawn = gms.draw(magnitude, 1)
    assert drawn.size == 1000 and np.all(np.diff(drawn) > 0)
    assert magnitude[drawn].mean() > 2 * magnitude.mean()
    nearby = gms.draw(magnitude * (1 + 1e-4 * rng.standard_normal(magnitude.size)), 1)
    assert np.setdiff1d(drawn, nearby).size <= 2
    sparse = np.zeros(5000)
    sparse[:10] = 1.0  # fewer points with a gradient than the sample: all of them, and more
    assert set(range(10)) <= set(gms.draw(sparse, 1).tolist())


def test_moments_initializer_is_reported_as_a_disclosure(phantom_2d):
    moving, truth = known_pair(phantom_2d, "translation", [6.0, -4.0])
    result = register_in_process(
        phantom_2d,
        moving,
        transform="translation",
        initializer="moments",
        shrink_factors=[1],
        smoothing_sigmas=[0],
    )
    assert any("centre of mass" in line for line in result.learned["moving"])
    assert displacement_rmse(result.transform, truth, phantom_2d.geometry) < 0.1


def test_the_centre_of_mass_is_itks_and_a_massless_image_is_refused():
    """ITK's ImageMomentsCalculator (SimpleITK's MOMENTS centre), negative pixels too."""
    from ppir_itk.image import ImageGrid, center_of_mass
    from ppir_itk.wrapping.images import to_sitk

    image = ImageGrid(np.array([[-1.0, 2.0, 0.0], [4.0, 0.0, 1.0]]), spacing=(0.5, 2.0))
    reference = sitk.CenteredTransformInitializer(
        sitk.Cast(to_sitk(image), sitk.sitkFloat64),
        sitk.Cast(to_sitk(image), sitk.sitkFloat64),
        sitk.Euler2DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    np.testing.assert_allclose(center_of_mass(image), reference.GetCenter(), atol=1e-12)
    with pytest.raises(InputError, match="no centre of mass: use the 'geometry' initialiser"):
        center_of_mass(ImageGrid(np.array([[1.0, -1.0], [0.0, 0.0]])))


def test_report_holds_the_required_fields(phantom_2d):
    moving, _ = known_pair(phantom_2d, "rigid", KNOWN[2, "rigid"])
    report = register_in_process(phantom_2d, moving, transform="rigid").report()
    for key in ("backend", "transform_type", "iterations", "final_metric", "levels", "parties"):
        assert key in report
    assert report["backend"] == "clear" and report["private"] is False
    assert report["iterations"] == sum(level["iterations"] for level in report["levels"])
    for level in report["levels"]:
        assert {"iterations", "final_metric", "seconds"} <= set(level)
    for party in ("moving", "fixed"):
        assert {"seconds", "bytes_sent", "bytes_received"} <= set(report["parties"][party])
    # Clear sends J once per level: the fixed party's bytes are the level images.
    assert report["parties"]["fixed"]["bytes_sent"] >= 8 * phantom_2d.geometry.number_of_points
    assert any("in the clear" in line for line in report["learned_in_the_clear"]["moving"])
