"""The `vlalign` command: one subcommand per pipeline stage, each a ``main(argv)`` tests can call.

User mistakes (unknown spec, missing file, bad option) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from vlalign.errors import UserError

log = logging.getLogger("vlalign")


def _encode(args: argparse.Namespace) -> None:
    from vlalign.backbones import create_text_encoder, create_vision_encoder
    from vlalign.data import create_source
    from vlalign.store import EncodeOptions, FeatureStore, encode_store

    source = create_source(args.data, data_root=args.data_root)
    vision = create_vision_encoder(args.vision, device=args.device)
    text = create_text_encoder(args.text, device=args.device)
    options = EncodeOptions(tokens=args.tokens, dtype=args.dtype, shard_size=args.shard_size,
                            batch_size=args.batch_size, num_workers=args.workers,
                            max_bad_fraction=args.max_bad_fraction, progress=not args.quiet)
    encode_store(source, vision, text, Path(args.out), kinds=args.captions.split(","),
                 specs=(args.vision, args.text), options=options)
    summary = FeatureStore(args.out).summary()
    print(f"store ready: {args.out} ({summary['rows']} rows, {summary['bad_items']} skipped, "
          f"{summary['size_mb']} MB)")


def _info(args: argparse.Namespace) -> None:
    from vlalign.store import FeatureStore

    store = FeatureStore(args.store, verify=args.verify)
    summary = store.summary()
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    if args.verify:
        print("checksums: ok")


def _train_sail(args: argparse.Namespace) -> None:
    from vlalign.config import load_config
    from vlalign.eval.stored import store_evaluator
    from vlalign.sail.config import SailConfig
    from vlalign.sail.train import train_sail

    overrides = list(args.set or [])
    if args.store:
        overrides.append(f"train_stores={json.dumps(args.store)}")
    if args.val_store:
        overrides.append(f"val_stores={json.dumps(args.val_store)}")
    config = load_config(SailConfig, args.config, overrides)
    if not config.train_stores:
        raise UserError("no training store: pass --store DIR or set train_stores in the config")
    evaluate = store_evaluator(config.val_stores) if config.val_stores else None
    metrics = train_sail(config, Path(args.out), resume=args.resume, evaluate=evaluate,
                         progress=not args.quiet, max_steps=args.max_steps)
    print(json.dumps(metrics))
    print(f"heads written to {args.out}")


def _classify(args: argparse.Namespace) -> None:
    from PIL import Image

    from vlalign.model import load_model

    model = load_model(args.model)
    images = []
    for path in args.images:
        try:
            images.append(Image.open(path).convert("RGB"))
        except OSError as error:
            raise UserError(f"{path}: cannot read image ({error})") from None
    probs = model.classify(images, args.labels, templates=args.templates)
    for path, row in zip(args.images, probs):
        ranked = sorted(zip(args.labels, row.tolist()), key=lambda x: -x[1])
        print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in ranked[: args.top]))


def _demo(args: argparse.Namespace) -> None:
    from vlalign.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlalign", description="Align frozen vision and text encoders into CLIP-like "
        "models (SAIL) and measure how alignable they are.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("encode", help="pre-encode a dataset once into a feature store",
                       description="Encode every image and caption of --data with frozen "
                       "backbones into a sharded, resumable store. Rerun the same command after "
                       "an interruption to finish it.")
    p.add_argument("--vision", required=True, help="vision spec, e.g. bundled:mobilenetv2")
    p.add_argument("--text", required=True, help="text spec, e.g. bundled:minilm")
    p.add_argument("--data", required=True,
                   help="dataset spec, e.g. fashion-mnist:train, emoji:train, csv:pairs.csv, "
                   "wds:shards-{000..009}.tar; slice with [start:stop]")
    p.add_argument("--out", required=True, help="store directory")
    p.add_argument("--tokens", action="store_true", help="also store token maps (dense, UTA)")
    p.add_argument("--captions", default="raw,rewritten",
                   help="caption kinds to store (default raw,rewritten; a source without "
                   "rewritten captions repeats the raw one)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--shard-size", type=int, default=4096, help="items per shard (default 4096)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward (default 64)")
    p.add_argument("--workers", type=int, default=1, help="decoding processes (default 1)")
    p.add_argument("--max-bad-fraction", type=float, default=0.05,
                   help="stop if more than this fraction of items is unusable (default 0.05)")
    p.add_argument("--data-root", default="data", help="where set-up put the datasets")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_encode)

    p = sub.add_parser("info", help="summarise a feature store")
    p.add_argument("store", help="store directory")
    p.add_argument("--verify", action="store_true", help="check every shard's sha256")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)

    p = sub.add_parser("train", help="train alignment heads on stored features")
    train_sub = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    t = train_sub.add_parser("sail", help="SAIL: gated heads + sigmoid loss on a feature store",
                             description="Train SAIL heads. Recipe = defaults <- --config YAML "
                             "<- --set key=value overrides; saved as RUN/config.json.")
    t.add_argument("--store", action="append", help="training store (repeat to mix stores)")
    t.add_argument("--val-store", action="append", help="held-out store(s) evaluated during runs")
    t.add_argument("--config", help="YAML recipe, e.g. configs/sail-offline.yaml")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set optim.lr=1e-4 (repeatable)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--max-steps", type=int, help="stop after this many steps (schedule unchanged)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train_sail)

    p = sub.add_parser("classify", help="zero-shot classify images with a trained model")
    p.add_argument("--model", required=True, help="run directory or saved model")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--labels", nargs="+", required=True, help='class names, e.g. "a cat" "a dog"')
    p.add_argument("--templates", nargs="+", default=["a photo of a {}."],
                   help="prompt templates with {} for the label")
    p.add_argument("--top", type=int, default=5, help="labels to print per image")
    p.set_defaults(func=_classify)

    p = sub.add_parser("demo", help="the whole offline pipeline, ending in a report")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a much smaller run (for smoke tests)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for user mistakes)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("sentence_transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except UserError as error:
        print(f"vlalign: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlalign: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
