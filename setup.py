"""Build the C kernels (src/) and their Cython bindings (cython/) as ppir_itk._kernels.

Also compiles the wire protocol (ppir_itk/protocol/ppir.proto) to ppir_pb2.py
with the protoc that grpcio-tools ships (a build requirement).
"""

from pathlib import Path

import numpy
from Cython.Build import cythonize
from grpc_tools import protoc
from setuptools import Extension, setup

PROTOCOL = Path(__file__).resolve().parent / "ppir_itk" / "protocol"
if (
    protoc.main(
        ["protoc", f"-I{PROTOCOL}", f"--python_out={PROTOCOL}", str(PROTOCOL / "ppir.proto")]
    )
    != 0
):
    raise SystemExit("protoc could not compile ppir_itk/protocol/ppir.proto")

kernels = Extension(
    "ppir_itk._kernels",
    sources=[
        "cython/_kernels.pyx",
        "src/ppir_gradient.c",
        "src/ppir_warp.c",
        "src/ppir_affine.c",
        "src/ppir_bspline.c",
        "src/ppir_parzen.c",
        "src/ppir_ring.c",
        "src/ppir_bfv.c",
    ],
    depends=[
        "cython/_ppir_c.pxd",
        "src/ppir_common.h",
        "src/ppir_gradient.h",
        "src/ppir_gradient_body.inc",
        "src/ppir_warp.h",
        "src/ppir_warp_body.inc",
        "src/ppir_affine.h",
        "src/ppir_bspline.h",
        "src/ppir_points.inc",
        "src/ppir_parzen.h",
        "src/ppir_ring.h",
        "src/ppir_bfv.h",
    ],
    include_dirs=["src", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=["-O3", "-std=c99", "-fno-fast-math"],
    libraries=["m"],
)

setup(
    ext_modules=cythonize(
        [kernels],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    )
)
