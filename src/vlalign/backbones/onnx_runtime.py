"""Run a frozen CNN trunk through onnxruntime: about 3x eager PyTorch on these CPUs.

The trunk is exported once (TorchScript-based ONNX export, dynamic batch) to a cache folder keyed
by the encoder's identity, written atomically so concurrent processes never read a partial file.
Outputs match eager PyTorch to about 1e-5 (tested), so the encoder identity does not change.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vlalign.utils.files import cache_dir
from vlalign.utils.optional import require


def onnxruntime_available() -> bool:
    """True when onnxruntime and onnx (needed for export) import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _AsModule(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _export(trunk: Callable[[torch.Tensor], torch.Tensor], owner: nn.Module, size: int,
            path: Path) -> None:
    module = _AsModule(trunk)
    module.add_module("owner", owner)  # so .eval() reaches every layer the trunk uses
    module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.zeros(1, 3, size, size), buffer, dynamo=False,
                          input_names=["pixels"], output_names=["map"],
                          dynamic_axes={"pixels": {0: "batch"}, "map": {0: "batch"}})
    owner.eval()  # export restores the wrapper's train flag recursively; keep the net frozen
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


class OnnxTrunk:
    """Callable B x 3 x H x W -> B x C x h x w feature map, computed by onnxruntime."""

    def __init__(self, trunk: Callable[[torch.Tensor], torch.Tensor], owner: nn.Module,
                 identity: str, size: int):
        onnxruntime = require("onnxruntime", "bundled")
        require("onnx", "bundled")  # the export

        key = hashlib.sha1(f"{identity}|{size}|{torch.__version__}".encode()).hexdigest()[:16]
        path = cache_dir("onnx") / f"{key}.onnx"
        if not path.exists():
            _export(trunk, owner, size, path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options,
                                                    providers=["CPUExecutionProvider"])

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        array = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"pixels": array})[0])
