"""How fast does `vlalign encode` run, relative to the bare backbones in the same run?

Images: the full store pipeline (decode, resize and crop to uint8 in worker processes,
normalise and run the backbone on the device, fp16 shard writes) on Fashion-MNIST at 224 px
versus the bare vision forward on pre-decoded tensors, per execution path (CPU: eager
contiguous, eager channels_last, bf16 autocast, onnxruntime; GPU: eager fp32 and bf16
autocast). Captions: the store's caption encoding (dedupe + batches) versus a bare MiniLM
forward, on the emoji captions.

    .venv/bin/python bench/encode.py [--images 2048] [--captions 4096] [--device cpu|cuda]
                                     [--workers N]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

import vlalign  # noqa: F401  (torchvision compat before anything else)
from common import machine, print_table, timed, write_results  # noqa: I001
from vlalign.backbones import create_text_encoder, create_vision_encoder, image_to_tensor
from vlalign.data import create_source
from vlalign.store import EncodeOptions, encode_store
from vlalign.store.encode import encode_captions
from vlalign.utils.workers import default_workers

VISION, TEXT = "bundled:mobilenetv2", "bundled:minilm"
CPU = torch.device("cpu")


def bare_vision_rate(spec: str, pixels: torch.Tensor, batch: int, bf16: bool = False,
                     device: torch.device = CPU) -> float:
    """Images/s of the backbone alone on pixels already on ``device``."""
    encoder = create_vision_encoder(spec, device=str(device))
    pixels = pixels.to(device)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=bf16):
            for i in range(0, len(pixels), batch):
                encoder.encode(pixels[i:i + batch])
    return len(pixels) / timed(run, repeats=1, device=device)


def contiguous_rate(pixels: torch.Tensor, batch: int) -> float:
    """The same network without channels_last: the plain eager baseline."""
    encoder = create_vision_encoder(VISION + "?runtime=torch")
    net = encoder.net.to(memory_format=torch.contiguous_format)

    def run() -> None:
        with torch.inference_mode():
            for i in range(0, len(pixels), batch):
                net.features(pixels[i:i + batch]).mean(dim=(2, 3))
    return len(pixels) / timed(run, repeats=1, device=torch.device("cpu"))


def store_rate(data: str, items: int, batch: int, workers: int, runtime: str,
               device: torch.device = CPU, precision: str = "fp32") -> float:
    """Images/s of the whole store pipeline, from the dataset to complete shards."""
    out = Path(tempfile.mkdtemp()) / "store"
    vision = create_vision_encoder(f"{VISION}?runtime={runtime}", device=str(device))
    text = create_text_encoder(TEXT, device=str(device))
    try:
        start = time.perf_counter()
        encode_store(create_source(data), vision, text, out, kinds=["raw", "rewritten"],
                     specs=(VISION, TEXT), options=EncodeOptions(
                         batch_size=batch, num_workers=workers, progress=False,
                         shard_size=1024, precision=precision))
        return items / (time.perf_counter() - start)
    finally:
        shutil.rmtree(out.parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--captions", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--workers", type=int, default=None,
                        help="store decoding workers (default: vlalign's, by device)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.workers is None:
        args.workers = default_workers(device.type)
    data = f"fashion-mnist:train[:{args.images}]"
    source = create_source(data)
    pre = create_vision_encoder(VISION).preprocess
    pixels = torch.stack([image_to_tensor(source.load(i).image, pre) for i in range(len(source))])

    torch_spec = VISION + "?runtime=torch"
    if device.type == "cuda":
        rows = [{"path": "eager fp32",
                 "bare_img_per_s": bare_vision_rate(torch_spec, pixels, args.batch, False, device)},
                {"path": "eager bf16 autocast",
                 "bare_img_per_s": bare_vision_rate(torch_spec, pixels, args.batch, True, device)}]
        timed_rows = ((rows[0], "torch", "fp32"), (rows[1], "torch", "bf16"))
    else:
        rows = [
            {"path": "eager, contiguous", "bare_img_per_s": contiguous_rate(pixels, args.batch)},
            {"path": "eager, channels_last",
             "bare_img_per_s": bare_vision_rate(torch_spec, pixels, args.batch)},
            {"path": "eager, channels_last, bf16 autocast",
             "bare_img_per_s": bare_vision_rate(torch_spec, pixels, args.batch, bf16=True)},
            {"path": "onnxruntime (default)",
             "bare_img_per_s": bare_vision_rate(VISION + "?runtime=onnx", pixels, args.batch)},
        ]
        timed_rows = ((rows[1], "torch", "fp32"), (rows[3], "onnx", "fp32"))
    for row, runtime, precision in timed_rows:
        row["store_img_per_s"] = store_rate(data, args.images, args.batch, args.workers, runtime,
                                            device, precision)
        row["store_vs_bare"] = row["store_img_per_s"] / row["bare_img_per_s"]

    emoji = create_source("emoji:all")
    captions = []
    for i in range(len(emoji)):
        example = emoji.load(i)
        captions.append([example.captions["raw"], example.captions["rewritten"]])
        if 2 * len(captions) >= args.captions:
            break
    flat = [c for row in captions for c in row]
    unique = len(set(flat))
    text = create_text_encoder(TEXT, device=str(device))
    bare = timed(lambda: [text.encode(flat[i:i + 256]) for i in range(0, len(flat), 256)],
                 repeats=1, device=device)
    stored = timed(lambda: encode_captions(text, captions, 2, 256), repeats=1, device=device)
    text_row = {"captions": len(flat), "unique": unique, "bare_captions_per_s": len(flat) / bare,
                "store_captions_per_s": len(flat) / stored, "store_vs_bare": bare / stored}

    print(f"machine: {machine()}")
    print(f"\nimages: {data} at {pre.size} px, batch {args.batch}, {args.workers} decoding "
          f"worker(s), {device}")
    print_table(rows, ["path", "bare_img_per_s", "store_img_per_s", "store_vs_bare"])
    print(f"\ncaptions: {TEXT} on emoji captions")
    print_table([text_row], list(text_row))
    path = write_results("encode", {"machine": machine(), "images": rows, "captions": text_row,
                                    "args": vars(args)})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
