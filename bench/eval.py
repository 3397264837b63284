"""How fast does evaluation embed images, relative to the bare backbone in the same run?

``vlalign eval`` embeds each dataset's images once (``vlalign.eval.features.embed_images``):
decode and preprocess (in ``--workers`` DataLoader worker processes, or in the main process with
0), then the frozen backbone and the trained head, on ``--device``. This times that path on
Fashion-MNIST test images with the offline backbone and a random GLU head, with the feature
cache pointed at an empty folder, against the bare backbone forward on pre-decoded tensors.
One JSON line per configuration, a table, then bench/results/eval.json.

    .venv/bin/python bench/eval.py [--images 2048] [--device cpu|cuda] [--workers 0 1 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

import vlalign  # noqa: F401  (torchvision compat before anything else)
from common import machine, print_table, timed, write_results  # noqa: I001
from vlalign.backbones import create_vision_encoder, image_to_tensor
from vlalign.data import create_source
from vlalign.eval.features import backbone_features
from vlalign.utils.workers import default_workers

VISION = "bundled:mobilenetv2"


def bare_rate(spec: str, device: torch.device, data: str, batch: int) -> float:
    """Images/s of the backbone alone on tensors decoded beforehand (the ceiling)."""
    source = create_source(data)
    encoder = create_vision_encoder(spec, device=str(device))
    pixels = torch.stack([image_to_tensor(source.load(i).image, encoder.preprocess)
                          for i in range(len(source))])

    def run() -> None:
        with torch.inference_mode():
            for i in range(0, len(pixels), batch):
                encoder.encode(pixels[i:i + batch].to(device))
    return len(pixels) / timed(run, repeats=1, device=device)


def eval_rate(spec: str, device: torch.device, data: str, batch: int, workers: int) -> float:
    """Images/s of the evaluation path, from the dataset to pooled features on ``device``."""
    source = create_source(data)
    encoder = create_vision_encoder(spec, device=str(device))
    with tempfile.TemporaryDirectory() as cache:
        os.environ["VLALIGN_CACHE"] = cache  # nothing cached: every image is encoded
        start = time.perf_counter()
        backbone_features(encoder, source, batch_size=batch, progress=False,
                          num_workers=workers, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(source) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="worker counts to time (default: 0 and 1 on the CPU, 0 and the "
                        "spare cores beside a GPU)")
    parser.add_argument("--vision", default=VISION,
                        help="vision spec (on a GPU: ?runtime=torch is added for bundled:)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.workers is None:
        args.workers = [0, max(1, default_workers(device.type))]
    spec = args.vision
    if device.type == "cuda" and spec.startswith("bundled:") and "runtime=" not in spec:
        spec += "?runtime=torch"  # the ONNX runtime is CPU-only
    data = f"fashion-mnist:test[:{args.images}]"
    bare = bare_rate(spec, device, data, args.batch)
    rows = []
    for workers in args.workers:
        rate = eval_rate(spec, device, data, args.batch, workers)
        rows.append({"path": f"eval, {workers} workers", "workers": workers,
                     "img_per_s": rate, "bare_img_per_s": bare, "eval_vs_bare": rate / bare})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nmachine: {machine()}\n{spec} on {device}, {data}, batch {args.batch}")
    print_table(rows, ["path", "img_per_s", "bare_img_per_s", "eval_vs_bare"])
    path = write_results("eval", {"machine": machine(), "device": str(device), "vision": spec,
                                  "rows": rows, "args": vars(args)})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
