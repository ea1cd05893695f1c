"""Regenerate the demo pair shipped in ppir_itk/data (deterministic).

    python scripts/make_demo_data.py

A 2-D head phantom (fixed), a copy moved by a known affine transform
(moving), and that transform (``demo_truth.tfm``, fixed to moving points, the
transform a registration should find).
"""

from pathlib import Path

from ppir_itk.phantoms import head_phantom, moved_copy
from ppir_itk.transforms import make_transform
from ppir_itk.wrapping.images import write_image
from ppir_itk.wrapping.transforms import write_transform

DATA = Path(__file__).resolve().parent.parent / "ppir_itk" / "data"


def main() -> None:
    fixed = head_phantom((160, 144), spacing=(1.0, 1.0))
    truth = make_transform("affine", 2)
    truth.center = fixed.geometry.center()
    truth.parameters = [1.06, 0.07, -0.05, 0.95, 4.0, -3.0]
    moving = moved_copy(fixed, truth)
    write_image(fixed, DATA / "demo_fixed.mha")
    write_image(moving, DATA / "demo_moving.mha")
    write_transform(truth, DATA / "demo_truth.tfm")


if __name__ == "__main__":
    main()
