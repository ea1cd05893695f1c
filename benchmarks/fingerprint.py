"""The transforms of a fixed set of registrations, to compare two versions of the code.

    python benchmarks/fingerprint.py OUT.json             # every backend and protocol
    python benchmarks/fingerprint.py --compare A.json B.json

Nineteen in-process registrations on phantoms (2-D and 3-D, NONE and URS, affine;
2-D B-splines), their parameters and iterations written to JSON; ``--compare``
prints the largest parameter difference of each. BFV, SPDZ and clear runs are
exact, so a refactor that keeps the arithmetic gives 0; CKKS (paper-v1, paper-v2)
draws fresh encryption noise every run and differs by about 1e-10 from itself.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

import ppir_itk
from ppir_itk.phantoms import head_phantom, moved_copy
from ppir_itk.transforms import make_transform

CASES = [
    ("clear", {}),
    ("he", {}),
    ("he", {"protocol": "paper-v1"}),
    ("he", {"protocol": "paper-v2"}),
    ("spdz", {}),
]
LEVELS = dict(shrink_factors=[2, 1], smoothing_sigmas=[1.0, 0.0], transport="in-process")


def _pair(fixed: ppir_itk.ImageGrid, parameters: list[float]) -> ppir_itk.ImageGrid:
    truth = make_transform("affine", fixed.dimension)
    truth.center = fixed.geometry.center()
    truth.parameters = parameters
    return moved_copy(fixed, truth)


def fingerprint() -> dict[str, tuple[list[float], int]]:
    """Name -> (parameters, iterations) of every registration of the set."""
    fixed2 = head_phantom((64, 56), spacing=(1.1, 0.9))
    fixed3 = head_phantom((24, 26, 22), spacing=(1.0, 1.2, 1.1))
    moving2 = _pair(fixed2, [1.03, 0.04, -0.05, 0.98, 1.5, -2.0])
    moving3 = _pair(fixed3, [1.02, 0.01, 0, -0.01, 0.99, 0.02, 0, 0.01, 1.0, 0.8, -0.6, 0.4])
    runs = {}
    for backend, parameters in CASES:
        for name, fixed, moving in (("2d", fixed2, moving2), ("3d", fixed3, moving3)):
            if "protocol" in parameters and name == "3d":
                continue  # the paper's protocols: 2-D only, as the paper ran them
            for sampling in ("none", "urs"):
                result = ppir_itk.register(
                    fixed,
                    moving,
                    backend=backend,
                    backend_parameters=parameters,
                    transform="affine",
                    sampling=sampling,
                    sampling_fraction=0.3,
                    seed=1,
                    **LEVELS,
                )
                key = f"{backend}{parameters.get('protocol', '')}-{name}-{sampling}-affine"
                runs[key] = (result.transform.parameters.tolist(), result.iterations)
    for backend in ("clear", "he", "spdz"):
        result = ppir_itk.register(
            fixed2,
            moving2,
            backend=backend,
            transform="bspline",
            grid_spacing=12.0,
            iterations=15,
            bending_energy_weight=50.0,
            **LEVELS,
        )
        runs[f"{backend}-2d-bspline"] = (result.transform.parameters.tolist(), result.iterations)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="where to write the fingerprint (JSON)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = parser.parse_args()
    if args.compare:
        first, second = (json.loads(Path(path).read_text()) for path in args.compare)
        for key, (parameters, iterations) in first.items():
            other, other_iterations = second[key]
            difference = np.max(np.abs(np.asarray(parameters) - np.asarray(other)))
            print(
                f"{key:34s} iterations {iterations} {other_iterations}  "
                f"largest difference {difference:.3g}"
            )
        return
    if args.out is None:
        parser.error("give OUT.json, or --compare A.json B.json")
    warnings.simplefilter("ignore")
    with open(args.out, "w") as handle:
        json.dump(fingerprint(), handle)


if __name__ == "__main__":
    main()
