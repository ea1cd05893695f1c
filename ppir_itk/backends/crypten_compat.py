"""CrypTen 0.4.1 on current PyTorch: the one place that knows how to import and host it.

CrypTen's last release imports its ONNX converter at package import, and that
converter needs ``torch.onnx`` internals that PyTorch removed; the SPDZ
backend never converts models, so :func:`load_crypten` puts a small module in
the converter's place before importing CrypTen (any call into it says it is
not available). CrypTen's package metadata also asks for the dead ``sklearn``
package, so it is installed with ``pip install --no-deps crypten==0.4.1``
(README); what it really needs (torch, omegaconf, pyyaml) is in ppir_itk's
own dependencies.

:func:`acting_as` makes a communicator CrypTen's communicator for the calling
thread, through CrypTen's own thread-local slot: each party of an in-process
session runs in turn in one thread, and a fixed party's server runs each
session in its own thread.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ppir_itk.errors import InputError

CONVERTER = "crypten.nn.onnx_converter"
INSTALL = "pip install --no-deps crypten==0.4.1"


def _converter_stand_in() -> types.ModuleType:
    module = types.ModuleType(CONVERTER)
    module.__doc__ = "Stand-in for CrypTen's ONNX converter, which current PyTorch cannot import."

    def unavailable(*_: Any, **__: Any) -> None:
        raise NotImplementedError(
            "CrypTen's ONNX model converter is not available with this "
            "PyTorch; ppir_itk does not convert models"
        )

    vars(module).update(
        from_onnx=unavailable,
        from_pytorch=unavailable,
        from_tensorflow=unavailable,
        TF_AND_TF2ONNX=False,
    )
    return module


def load_crypten() -> types.ModuleType:
    """``import crypten``, working around its ONNX converter; a clear error if it is missing."""
    if sys.modules.get("crypten") is not None:
        return sys.modules["crypten"]
    sys.modules.setdefault(CONVERTER, _converter_stand_in())
    try:
        import crypten
    except ModuleNotFoundError as error:
        sys.modules.pop(CONVERTER, None)
        raise InputError(
            f"backend 'spdz' needs CrypTen, which is not installed ({error}): run '{INSTALL}'"
        ) from None
    return crypten


@contextmanager
def acting_as(communicator: Any) -> Iterator[None]:
    """Within the block, CrypTen's ``comm.get()`` in this thread returns ``communicator``.

    It also sets PyTorch to one thread, for the rest of the process (a party
    process does nothing else with PyTorch): share arithmetic is element-wise and
    memory-bound, and OpenMP workers spinning between operations would take the
    cores from the other party's process (measured: 2.5x slower iterations).
    """
    load_crypten()
    import crypten.communicator as comm
    import torch

    # comm.get() reads the thread-local instance when CrypTen is in "threads" mode.
    setattr(comm, "__use_threads", True)  # noqa: B010 - a module global with a dunder name
    slot = comm.InProcessCommunicator.tls
    previous = getattr(slot, "instance", None)
    slot.instance = communicator
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous is None:
            del slot.instance
        else:
            slot.instance = previous
