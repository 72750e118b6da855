"""Make torchvision / timm / pytorchvideo importable where torchvision is a CUDA build on a CPU torch.

The PyPI torchvision 0.28 wheel is a CUDA build; on the CPU torch its C++ ops are missing and
``import torchvision`` raises ``operator torchvision::nms does not exist`` while registering fake
kernels. timm imports torchvision.ops.misc, pytorchvideo imports torchvision.transforms, so both
break with it. We define the two op schemas torchvision registers kernels for (nms, qnms) so the
import succeeds; the ops themselves stay unusable and this project never calls them (nor
torchvision's image / video IO). On a healthy environment ``torch.ops.torchvision.nms`` already
exists and this module does nothing.

Import this module before the first import of torchvision, timm or pytorchvideo:
``from videoconvmae import compat  # noqa: F401``.
"""

from __future__ import annotations

import importlib
import sys

import torch

_LIBRARY = None  # kept alive for the whole process: dropping it unregisters the schemas


def _torchvision_ops_registered() -> bool:
    try:
        return hasattr(torch.ops.torchvision, "nms")
    except (AttributeError, RuntimeError):
        return False


def install() -> None:
    """Idempotently patch the environment (no-op when torchvision's ops are present)."""
    global _LIBRARY
    if _LIBRARY is None and not _torchvision_ops_registered():
        _LIBRARY = torch.library.Library("torchvision", "DEF")
        _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # pytorchvideo 0.1.5 imports the module under its pre-0.17 name.
    if "torchvision.transforms.functional_tensor" not in sys.modules:
        try:
            ft = importlib.import_module("torchvision.transforms._functional_tensor")
        except ImportError:
            return
        sys.modules["torchvision.transforms.functional_tensor"] = ft


install()
