"""One set of defaults: ``ppir register --help``, ``RegistrationOptions()``, a fresh
``ImageRegistrationMethod`` and the README's table say the same, and run the same."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import known_pair, register_in_process

import ppir_itk
from ppir_itk import cli
from ppir_itk.metric_kinds import CORRELATION, GAUSS_NEWTON, MATTES, MEAN_SQUARES, REGULAR_STEP
from ppir_itk.options import MINIMUM_STEP_LENGTHS, RegistrationOptions
from ppir_itk.phantoms import head_phantom

README = Path(__file__).resolve().parent.parent / "README.md"
DEFAULTS = RegistrationOptions()


def _shown(value: object) -> str:
    """A default as the help and the table write it."""
    if value is None:
        return "every core"  # threads, the only default None left once options resolve
    if isinstance(value, tuple):
        return " ".join(f"{item:g}" for item in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


# Each option's default as it is written, from RegistrationOptions().
EXPECTED = {
    field: _shown(getattr(DEFAULTS, field))
    for field in (
        "transform",
        "metric",
        "histogram_bins",
        "learning_rate",
        "gradient_magnitude_tolerance",
        "relative_value_tolerance",
        "backend",
        "sampling",
        "sampling_fraction",
        "seed",
        "shrink_factors",
        "smoothing_sigmas",
        "iterations",
        "threads",
        "deadline",
        "bending_energy_weight",
    )
}
EXPECTED["optimizer"] = f"{DEFAULTS.optimizer} for {DEFAULTS.metric}"
EXPECTED["initializer"] = DEFAULTS.initializer_to_run()
EXPECTED["minimum_step_length"] = _shown(MINIMUM_STEP_LENGTHS[GAUSS_NEWTON])
# The command line's name of each option, where it has one.
FLAGS = {
    "transform": "--transform",
    "metric": "--metric",
    "histogram_bins": "--histogram-bins",
    "optimizer": "--optimizer",
    "learning_rate": "--learning-rate",
    "backend": "--backend",
    "sampling": "--sampling",
    "sampling_fraction": "--sampling-fraction",
    "seed": "--seed",
    "shrink_factors": "--shrink-factors",
    "smoothing_sigmas": "--smoothing-sigmas",
    "initializer": "--initializer",
    "iterations": "--iterations",
    "threads": "--threads",
    "deadline": "--deadline",
    "bending_energy_weight": "--bending-weight",
}


def _register_actions():
    subparsers = next(a for a in cli._parser()._actions if a.dest == "command")
    register = subparsers.choices["register"]
    return register, {flag: a for a in register._actions for flag in a.option_strings}


def test_the_command_lines_help_states_the_options_defaults_and_parses_to_them(capsys):
    with pytest.raises(SystemExit):
        cli.main(["register", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    register, actions = _register_actions()
    for field, flag in FLAGS.items():
        action = actions[flag]
        said = " ".join(action.help.split())
        assert said in help_text, flag
        assert re.search(rf"default:? {re.escape(EXPECTED[field])}\b", said), (flag, said)
    parsed = register.parse_args(
        ["--fixed", "f.nii", "--moving", "m.nii", "--output-transform", "o.tfm"]
    )
    for field, flag in FLAGS.items():
        value = getattr(parsed, actions[flag].dest)
        given = tuple(value) if isinstance(value, list) else value
        # The options' field as given (None: resolved by RegistrationOptions itself).
        assert given == RegistrationOptions.__dataclass_fields__[field].default, flag


def test_the_readmes_table_states_the_defaults():
    rows = re.findall(
        r"^\| (`--[a-z-]+`)? ?\| `([a-z_]+)`[^|]*\| ([^|]+) \|$", README.read_text(), re.M
    )
    table = {field: (flag.strip("`"), default) for flag, field, default in rows}
    assert set(table) == set(EXPECTED)
    for field, (flag, default) in table.items():
        assert flag == FLAGS.get(field, ""), field
        # The value, then what it applies to, if anything: "1 (regular-step)".
        assert re.match(rf"{re.escape(EXPECTED[field])}($| \(|, )", default), field
    assert table["minimum_step_length"][1].endswith(
        f"{MINIMUM_STEP_LENGTHS[REGULAR_STEP]:g} (regular-step)"
    )


def _fresh_method(fixed, moving, metric: str) -> ppir_itk.ImageRegistrationMethod:
    metrics = {
        MEAN_SQUARES: ppir_itk.PrivateMeanSquaresImageToImageMetric,
        CORRELATION: ppir_itk.PrivateCorrelationImageToImageMetric,
        MATTES: ppir_itk.PrivateMattesMutualInformationImageToImageMetric,
    }
    private_metric = metrics[metric]("clear", session=ppir_itk.in_process_session(fixed))
    private_metric.SetMovingImage(moving)
    return ppir_itk.ImageRegistrationMethod(private_metric)


@pytest.mark.parametrize("metric", [MEAN_SQUARES, CORRELATION, MATTES])
def test_a_fresh_registration_method_runs_as_register_does(metric):
    """Same defaults, same run: every level, iteration and parameter of a method built with
    none of them equals register()'s (levels, initializer, optimizer and its stops)."""
    fixed = head_phantom((48, 40), spacing=(1.1, 0.9))
    moving, _ = known_pair(fixed, "affine", [1.03, 0.02, -0.02, 0.98, 1.0, -1.0])
    method = _fresh_method(fixed, moving, metric)
    assert method.initializer_to_run() == EXPECTED["initializer"]
    ours = method.run()
    theirs = register_in_process(fixed, moving, metric=metric)
    assert (ours.optimizer, ours.sampling) == (theirs.optimizer, theirs.sampling)
    assert ours.histogram_bins == theirs.histogram_bins
    assert [level.shrink_factor for level in ours.levels] == list(DEFAULTS.shrink_factors)
    assert [level.smoothing_sigma for level in ours.levels] == list(DEFAULTS.smoothing_sigmas)
    assert [level.maximum_iterations for level in ours.levels] == [DEFAULTS.iterations] * 3
    for mine, its in zip(ours.levels, theirs.levels, strict=True):
        assert (mine.iterations, mine.stop_condition) == (its.iterations, its.stop_condition)
    np.testing.assert_array_equal(ours.transform.parameters, theirs.transform.parameters)
    np.testing.assert_array_equal(
        ours.transform.fixed_parameters, theirs.transform.fixed_parameters
    )
