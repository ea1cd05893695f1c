"""RegistrationOptions: the defaults live once, a bad value is refused in its sentence
wherever it comes from, the CLI, register and bench build the same options from the
same inputs, and the options are frozen."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
from conftest import known_pair, register_in_process

from ppir_itk import bench, cli, registration
from ppir_itk.errors import InputError
from ppir_itk.evaluation import sitk_reference_registration
from ppir_itk.image import ImageGrid
from ppir_itk.options import RegistrationOptions
from ppir_itk.registration import ImageRegistrationMethod

# The same registration, as command-line arguments and as options: what a bench's rows
# share, then what ppir register alone takes.
SHARED_ARGUMENTS = [
    "--transform",
    "rigid",
    "--sampling-fraction",
    "0.2",
    "--seed",
    "3",
    "--shrink-factors",
    "2",
    "1",
    "--smoothing-sigmas",
    "1",
    "0",
    "--initializer",
    "moments",
    "--iterations",
    "7",
    "--threads",
    "2",
]
SHARED = dict(
    transform="rigid",
    sampling_fraction=0.2,
    seed=3,
    shrink_factors=[2, 1],
    smoothing_sigmas=[1.0, 0.0],
    initializer="moments",
    iterations=7,
    threads=2,
)
ARGUMENTS = [*SHARED_ARGUMENTS, "--backend", "clear", "--sampling", "urs", "--deadline", "9"]
OPTIONS = dict(SHARED, backend="clear", sampling="urs", deadline=9.0)

BAD = [  # (options, the sentence)
    (
        dict(transform="rigid3d"),
        "unknown transform 'rigid3d': choose one of translation, rigid, similarity, affine, "
        "bspline",
    ),
    (dict(backend="magic"), "unknown backend 'magic': choose one of clear, he, spdz"),
    (
        dict(backend_parameters={"protocol": "paper-v9"}),
        "backend 'he' has no protocol 'paper-v9': choose one of packed, paper-v1, paper-v2",
    ),
    (
        dict(backend_parameters={"poly_modulus_degree": "8k"}),
        "backend 'he' parameters must be whole numbers",
    ),
    (dict(sampling="some"), "unknown sampling 'some': choose none, urs, regular or gms"),
    (dict(sampling="urs", sampling_fraction=0.0), "sampling fraction 0 must be in (0, 1]"),
    (dict(seed=-1), "--seed -1 must be between 0 and 2^64 - 1"),
    (
        dict(shrink_factors=[4, 2, 1], smoothing_sigmas=[1.0, 0.0]),
        "shrink factors (3 values) and smoothing sigmas (2 values) must have one value per "
        "level each",
    ),
    (
        dict(shrink_factors=[0], smoothing_sigmas=[0.0]),
        "shrink factor 0 must be a whole number of at least 1",
    ),
    (
        dict(initializer="centre"),
        "unknown initializer 'centre': choose one of none, geometry, moments",
    ),
    (dict(iterations=0), "--iterations 0 must be at least 1"),
    (dict(iterations=[100, 0, 20]), "--iterations 100 0 20 must be at least 1"),
    (
        dict(iterations=[100, 50]),
        "--iterations has 2 values but the schedule has 3 levels; give one, or one per level",
    ),
    (dict(threads=0), "--threads 0 must be at least 1"),
    (dict(deadline=0.0), "--deadline 0 must be positive"),
    (
        dict(transform="bspline"),
        "a B-spline transform needs a control-point spacing "
        "(grid_spacing, in physical units; --grid-spacing MM)",
    ),
    (
        dict(transform="bspline", grid_spacing=[8.0, 0.0]),
        "--grid-spacing 8 0 must be positive and finite",
    ),
    (dict(bending_energy_weight=-1.0), "--bending-weight -1 must be at least 0"),
]


class _Captured(Exception):
    """Stops a run at the call whose options a test looks at."""


def _image() -> ImageGrid:
    return ImageGrid(np.add.outer(np.arange(8.0), 2.0 * np.arange(8.0)))


def _parsed(*arguments: str):
    return cli._parser().parse_args(
        [
            "register",
            "--fixed",
            "f.mha",
            "--moving",
            "m.mha",
            "--output-transform",
            "t.tfm",
            *arguments,
        ]
    )


def test_the_command_line_defaults_are_the_options_defaults():
    assert cli._registration_options(_parsed(), 2) == RegistrationOptions()
    assert bench.BenchSettings().registration == RegistrationOptions()
    reference = inspect.signature(sitk_reference_registration).parameters
    assert reference["shrink_factors"].default == RegistrationOptions().shrink_factors
    assert reference["smoothing_sigmas"].default == RegistrationOptions().smoothing_sigmas


def test_the_command_line_register_and_bench_build_the_same_options(monkeypatch, tmp_path):
    expected = RegistrationOptions(**OPTIONS)
    assert cli._registration_options(_parsed(*ARGUMENTS), 2) == expected

    seen = []

    def capture(session, moving, options, observers):
        seen.append(options)
        raise _Captured

    monkeypatch.setattr(registration, "in_process_session", lambda *_, **__: None)
    monkeypatch.setattr(registration, "_register_with", capture)
    image = _image()
    with pytest.raises(_Captured):
        registration.register(image, image, transport="in-process", **OPTIONS)
    with pytest.raises(_Captured):  # options, and keyword overrides of them
        registration.register(
            image,
            image,
            RegistrationOptions(**OPTIONS, refine_grid=True),
            transport="in-process",
            refine_grid=False,
        )
    assert seen == [expected, expected]

    settings = []

    def run_bench(fixed, moving, bench_settings, say):
        settings.append(bench_settings)
        raise _Captured

    monkeypatch.setattr(bench, "run_bench", run_bench)
    with pytest.raises(_Captured):
        cli.main(["bench", "--out", str(tmp_path / "out"), *SHARED_ARGUMENTS])
    # the rows set the backend; the shared options take clear, which computes every metric
    assert settings[0].registration == RegistrationOptions(**SHARED, backend="clear")


def test_a_bench_row_registers_with_the_settings_and_its_own_backend_and_sampling(monkeypatch):
    seen = []

    def register(fixed, moving, options, **_):
        seen.append(options)
        raise _Captured

    monkeypatch.setattr(bench, "register", register)
    options = RegistrationOptions(**OPTIONS)
    row = bench.Row("he", "paper-v1", "gms")
    with pytest.raises(_Captured):
        bench._run_row(
            row,
            _image(),
            _image(),
            bench.BenchSettings(registration=options),
            None,
            say=lambda _: None,
        )
    assert seen == [
        dataclasses.replace(
            options, backend="he", sampling="gms", backend_parameters={"protocol": "paper-v1"}
        )
    ]


@pytest.mark.parametrize("options, sentence", BAD, ids=[sentence for _, sentence in BAD])
def test_a_bad_value_is_refused_in_its_sentence(options, sentence):
    with pytest.raises(InputError) as error:
        RegistrationOptions(**options)
    assert str(error.value) == sentence
    with pytest.raises(InputError) as replaced:  # replacing a value checks it again
        dataclasses.replace(RegistrationOptions(), **options)
    assert str(replaced.value) == sentence


@pytest.mark.parametrize(
    "options, sentence",
    [
        (dict(initializer="centre"), "unknown initializer 'centre'"),
        (dict(threads=0), "--threads 0 must be at least 1"),
        (dict(shrink_factors=[0], smoothing_sigmas=[0.0]), "shrink factor 0"),
        (dict(grid_spacing=[0.0]), "--grid-spacing 0 must be positive and finite"),
    ],
)
def test_the_registration_method_refuses_the_same_values_in_the_same_sentences(options, sentence):
    with pytest.raises(InputError, match=sentence) as method_error:
        ImageRegistrationMethod(None, **options)
    with pytest.raises(InputError) as options_error:
        RegistrationOptions(**{"transform": "bspline", "grid_spacing": 8.0, **options})
    assert str(method_error.value) == str(options_error.value)


def test_the_registration_method_refuses_a_b_spline_without_a_grid_spacing():
    with pytest.raises(InputError, match="control-point spacing"):
        ImageRegistrationMethod(None, initial_transform="bspline")


def test_the_grid_spacing_must_fit_the_images():
    options = RegistrationOptions(transform="bspline", grid_spacing=[8.0, 8.0, 8.0])
    options.check_dimension(3)
    with pytest.raises(InputError) as error:
        options.check_dimension(2)
    assert str(error.value) == (
        "--grid-spacing has 3 values; give one, or one per axis of the 2-D images"
    )
    assert RegistrationOptions(transform="bspline", grid_spacing=[8.0]).grid_spacing == 8.0


def test_the_options_are_frozen():
    parameters = {"protocol": "packed"}
    options = RegistrationOptions(
        backend_parameters=parameters, shrink_factors=[2, 1], smoothing_sigmas=[1, 0]
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.iterations = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        options.backend_parameters["protocol"] = "paper-v1"  # type: ignore[index]
    parameters["protocol"] = "paper-v1"  # the caller's dict is not the options'
    assert options.backend_parameters == {"protocol": "packed"}
    assert RegistrationOptions(backend_parameters=None).backend_parameters == {}
    assert options.shrink_factors == (2, 1) and options.smoothing_sigmas == (1.0, 0.0)


def test_iterations_are_one_count_for_every_level_or_one_per_level():
    """As ANTs' --convergence [100x50x20]: coarse to fine; one value is every level's."""
    per_level = cli._registration_options(_parsed("--iterations", "100", "50", "20"), 2)
    assert per_level.iterations == (100, 50, 20)
    assert per_level.iterations_per_level() == (100, 50, 20)
    one = cli._registration_options(_parsed("--iterations", "30"), 2)
    assert one == RegistrationOptions(iterations=30) == RegistrationOptions(iterations=[30])
    assert one.iterations_per_level() == (30, 30, 30)
    assert RegistrationOptions(iterations=(7, 7, 7)).iterations == 7  # one count, kept so
    with pytest.raises(InputError) as error:  # the levels' count is checked again on replace
        dataclasses.replace(per_level, shrink_factors=[2, 1], smoothing_sigmas=[1, 0])
    assert str(error.value) == (
        "--iterations has 3 values but the schedule has 2 levels; give one, or one per level"
    )
    with pytest.raises(InputError) as method_error:
        ImageRegistrationMethod(
            None, shrink_factors=[2, 1], smoothing_sigmas=[1, 0], iterations=[100, 50, 20]
        )
    assert str(method_error.value) == str(error.value)


def test_a_registration_stops_each_level_at_its_own_count(phantom_2d):
    """No other stop condition can fire (tolerance and step length 0): each level runs its
    count exactly, and the report says each level's limit."""
    moving, _ = known_pair(phantom_2d, "affine", [1.03, 0.02, -0.02, 0.98, 1.0, -1.0])
    result = register_in_process(
        phantom_2d,
        moving,
        shrink_factors=[4, 2, 1],
        smoothing_sigmas=[2, 1, 0],
        iterations=[5, 3, 2],
        relative_value_tolerance=0.0,
        minimum_step_length=0.0,
    )
    assert [level.iterations for level in result.levels] == [5, 3, 2]
    assert [level["maximum_iterations"] for level in result.report()["levels"]] == [5, 3, 2]
    assert all("maximum number of iterations" in level.stop_condition for level in result.levels)
