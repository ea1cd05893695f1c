"""Every metric a registration takes by name, and the optimizers that fit each.

The one registry behind the command line's ``--metric`` and ``--optimizer``
choices, the options' checks, ``Hello``'s metric and the fixed party's
``--metrics``: ITK's names without the ``ImageToImageMetricv4`` suffix.

- ``meansquares``: ITK's ``MeanSquaresImageToImageMetricv4`` (least squares: the
  Gauss-Newton optimizer fits it, and is its default);
- ``correlation``: ``CorrelationImageToImageMetricv4``, normalised cross
  correlation over the overlap;
- ``mattes``: ``MattesMutualInformationImageToImageMetricv4``, with
  ``histogram_bins`` bins.

The two that are not least squares take ITK's regular-step gradient descent.

Examples
--------
>>> default_optimizer("mattes")
'regular-step'
>>> check_optimizer("gauss-newton", "meansquares")
'gauss-newton'
"""

from __future__ import annotations

from dataclasses import dataclass

from ppir_itk.errors import InputError

MEAN_SQUARES, CORRELATION, MATTES = "meansquares", "correlation", "mattes"
METRICS = (MEAN_SQUARES, CORRELATION, MATTES)
GAUSS_NEWTON, REGULAR_STEP = "gauss-newton", "regular-step"
OPTIMIZERS = (GAUSS_NEWTON, REGULAR_STEP)
DEFAULT_HISTOGRAM_BINS = 32  # as ANTs and elastix (ITK's own default is 50)
# The metrics a least-squares optimizer (Gauss-Newton) can minimise.
LEAST_SQUARES = (MEAN_SQUARES,)


@dataclass(frozen=True)
class MetricSettings:
    """A session's metric, as Hello names it: the metric and, for Mattes, its bins."""

    name: str = MEAN_SQUARES
    histogram_bins: int = DEFAULT_HISTOGRAM_BINS


def check_metric(name: str) -> str:
    """``name`` if it is a metric (any case), lower-cased; otherwise one sentence."""
    if not isinstance(name, str) or name.lower() not in METRICS:
        raise InputError(f"unknown metric '{name}': choose one of {', '.join(METRICS)}")
    return name.lower()


def default_optimizer(metric: str) -> str:
    """The optimizer a metric registers with unless another is asked for."""
    return GAUSS_NEWTON if metric in LEAST_SQUARES else REGULAR_STEP


def check_optimizer(name: str | None, metric: str) -> str:
    """The optimizer ``name`` (None: the metric's default), if it fits ``metric``."""
    if name is None:
        return default_optimizer(metric)
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise InputError(f"unknown optimizer '{name}': choose one of {', '.join(OPTIMIZERS)}")
    name = name.lower()
    if name == GAUSS_NEWTON and metric not in LEAST_SQUARES:
        raise InputError(
            f"the gauss-newton optimizer minimises least-squares metrics only "
            f"({', '.join(LEAST_SQUARES)}); register metric '{metric}' with the "
            f"{REGULAR_STEP} optimizer"
        )
    return name


#: The settings of a session that names no other metric.
MEAN_SQUARES_SETTINGS = MetricSettings()
