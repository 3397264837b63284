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
from vlalign.utils.workers import default_workers

log = logging.getLogger("vlalign")


def _encode(args: argparse.Namespace) -> None:
    from vlalign.backbones import create_text_encoder, create_vision_encoder
    from vlalign.data import create_source
    from vlalign.store import EncodeOptions, FeatureStore, encode_store
    from vlalign.utils.distributed import init_from_env

    rank, _ = init_from_env()  # under torchrun: join first, so "cuda" is this rank's GPU
    source = create_source(args.data, data_root=args.data_root)
    vision = create_vision_encoder(args.vision, device=args.device)
    text = create_text_encoder(args.text, device=args.device)
    options = EncodeOptions(tokens=args.tokens, dtype=args.dtype, shard_size=args.shard_size,
                            batch_size=args.batch_size, num_workers=args.workers,
                            max_bad_fraction=args.max_bad_fraction, progress=not args.quiet,
                            precision=args.precision)
    encode_store(source, vision, text, Path(args.out), kinds=args.captions.split(","),
                 specs=(args.vision, args.text), options=options)
    if rank != 0:
        return
    summary = FeatureStore(args.out).summary()
    print(f"store ready: {args.out} ({summary['rows']} rows, {summary['bad_items']} skipped, "
          f"{summary['size_mb']} MB)")


def _import_embeddings(args: argparse.Namespace) -> None:
    from vlalign.store.import_embeddings import ImportOptions, import_embeddings

    options = ImportOptions(shard_size=args.shard_size, dtype=args.dtype,
                            vision_spec=args.vision_spec, text_spec=args.text_spec,
                            progress=not args.quiet)
    manifest = import_embeddings(Path(args.dir), Path(args.out), options)
    print(f"store ready: {args.out} ({manifest['rows']} rows, {manifest['vision']['dim']}-d "
          f"images, {manifest['text']['dim']}-d captions; train with `vlalign train sail "
          f"--store {args.out}`)")


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

    overrides = _overrides(args)
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


def _train_uta(args: argparse.Namespace) -> None:
    from vlalign.config import load_config
    from vlalign.eval.uta_progress import zeroshot_evaluator
    from vlalign.uta.config import UtaConfig
    from vlalign.uta.train import train_uta

    config = load_config(UtaConfig, args.config, _overrides(args))
    evaluate = zeroshot_evaluator(config.eval.zeroshot, config.teacher, config.data_root,
                                  config.eval.batch_size) if config.eval.zeroshot else None
    metrics = train_uta(config, Path(args.out), resume=args.resume, progress=not args.quiet,
                        max_steps=args.max_steps, evaluate=evaluate)
    print(json.dumps(metrics))
    print(f"student written to {args.out}")


def _finetune(args: argparse.Namespace) -> None:
    from vlalign.config import load_config
    from vlalign.eval.finetune import FinetuneConfig, finetune

    flags = FinetuneConfig(mode=args.mode, from_scratch=args.from_scratch, epochs=args.epochs,
                           time_budget_s=args.time_budget_s, batch_size=args.batch_size,
                           augment=not args.no_augment, precision=args.precision,
                           seed=args.seed, num_workers=args.workers, device=args.device,
                           data_root=args.data_root, layer_decay=args.layer_decay,
                           drop_path=args.drop_path, label_smoothing=args.smoothing,
                           img_size=args.img_size)
    flags.optim.lr = args.lr
    config = load_config(FinetuneConfig, None, _overrides(args), base=flags)
    out = Path(args.out) if args.out else None
    record = finetune(args.model, args.data, args.test_data, config, out,
                      progress=not args.quiet, resume=args.resume, max_steps=args.max_steps)
    print(json.dumps(record["metrics"]))
    if out is not None:
        print(f"result: {out / 'finetune.json'}")


def _classify(args: argparse.Namespace) -> None:
    from PIL import Image

    from vlalign.models import load_model

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


def _import_sail(args: argparse.Namespace) -> None:
    from vlalign.sail.official import import_official

    out = import_official(args.checkpoint, args.vision, args.text, Path(args.out),
                          device=args.device)
    print(f"model written to {out} (vlalign.load_model({str(out)!r}), or --model {out})")


def _export_sail(args: argparse.Namespace) -> None:
    from vlalign.sail.official import export_official, official_keys

    out = export_official(Path(args.run), Path(args.out))
    print(f"official SAIL checkpoint written to {out} ({len(official_keys())} tensors)")


def _import_uta(args: argparse.Namespace) -> None:
    from vlalign.uta.official import import_official

    out = import_official(args.checkpoint, Path(args.out), name=args.name,
                          heads=args.text_heads)
    print(f"model written to {out} (vlalign.load_model({str(out)!r}), or --model {out})")


def _push(args: argparse.Namespace) -> None:
    from vlalign.models.hub import describe, prepare_upload, push_to_hub

    if args.out:
        folder = prepare_upload(args.run, args.out, args.repo_id, args.results, args.license)
        print(f"{describe(folder)}\nupload folder written to {folder} (nothing was uploaded)")
        return
    url = push_to_hub(args.run, args.repo_id, revision=args.revision, private=args.private,
                      results=args.results, license=args.license)
    print(f"pushed {args.run} to {url}\nload it with vlalign.load_model('hf-hub:{args.repo_id}')")


def _count(value: str) -> int:
    """argparse type: a whole number >= 0 (worker counts)."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value!r}")
    return number


def _model_arg(value: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` -> (name, path); the name defaults to the folder's name."""
    name, equals, path = value.partition("=")
    if equals and name and "/" not in name and ":" not in name:
        return name, path
    return Path(value.removeprefix("random-heads:")).name or value, value


def _stores(paths: list[str]) -> list:
    """Feature stores to reuse: each path is a store or a folder of stores."""
    from vlalign.store import FeatureStore

    stores = []
    for path in map(Path, paths):
        candidates = [path] if (path / "manifest.json").exists() else sorted(
            p for p in path.glob("*") if (p / "manifest.json").exists())
        if not candidates:
            raise UserError(f"{path}: no feature store (manifest.json) there or in its folders")
        stores += [FeatureStore(p) for p in candidates]
    return stores


def _eval(args: argparse.Namespace) -> None:
    from vlalign.eval.run import SUITES, Job, run_job, run_suite
    from vlalign.eval.tasks import Context
    from vlalign.models import load_model
    from vlalign.utils.distributed import resolve_device

    device = str(resolve_device(args.device))
    workers = default_workers(device.split(":")[0]) if args.workers is None else args.workers
    ctx = Context(stores=_stores(args.store or []), batch_size=args.batch_size,
                  progress=not args.quiet, num_workers=workers)
    models = {}
    for name, path in map(_model_arg, args.model):
        if name in models:
            raise UserError(f"two models are named {name!r}; name them with --model NAME=PATH")
        models[name] = (load_model(path, device=device), path.removeprefix("random-heads:"))
    if args.suite:
        out = Path(args.out or "results")
        run_suite(models, SUITES[args.suite], out, ctx, args.data_root)
        print((out / "results.md").read_text(), end="")
        print(f"results: {out / 'results.md'} (also .csv, .json; one folder per model)")
        return
    if not (args.task and args.dataset):
        raise UserError("pass --task and --dataset, or --suite offline")
    if len(models) != 1:
        raise UserError("a single task evaluates one --model; use --suite for several")
    (name, (model, pretrained)), = models.items()
    job = Job(args.task, args.dataset, args.train_dataset)
    out = Path(args.out or f"{job.slug}.json")
    record = run_job(model, job, name, pretrained, out, ctx, args.data_root)
    print(json.dumps(record["metrics"], indent=1))
    print(f"result: {out}")


def _spec_list(value: str) -> list[str]:
    """``a,b,c`` -> [a, b, c] (empty items dropped)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _probe(args: argparse.Namespace) -> None:
    from vlalign.config import load_config
    from vlalign.probe.config import ProbeConfig, offline_suite
    from vlalign.probe.run import run_probe
    from vlalign.report.build import build_report

    overrides = list(args.set or [])
    for key, value in (("vision", args.vision), ("text", args.text)):
        if value:
            overrides.append(f"{key}={json.dumps(_spec_list(value))}")
    for key, value in (("train_data", args.data), ("test_data", args.test_data)):
        if value:
            overrides.append(f"{key}={json.dumps(value)}")
    if args.labelled:
        pairs = [item.rsplit(",", 1) for item in args.labelled]
        if any(len(pair) != 2 for pair in pairs):
            raise UserError("--labelled takes TRAIN,TEST, e.g. "
                            "fashion-mnist:train[:4000],fashion-mnist:test[:1000]")
        overrides.append(f"labelled_train={json.dumps([p[0] for p in pairs])}")
        overrides.append(f"labelled_test={json.dumps([p[1] for p in pairs])}")
    base = offline_suite() if args.suite == "offline" else None
    config = load_config(ProbeConfig, args.config, overrides, base=base)
    out = Path(args.out)
    result = run_probe(config, out, stores=_stores(args.store or []), data_root=args.data_root,
                       progress=not args.quiet)
    report = build_report(out, data_root=args.data_root, title="vlalign alignment probe")
    for pair in sorted(result["pairs"], key=lambda p: -p["alignment"]):
        print(f"{pair['alignment']:.4f}  {pair['vision']} + {pair['text']}")
    print(f"results: {out / 'probe.json'}\nreport: {report} (and {report.with_suffix('.md')})")


def _report(args: argparse.Namespace) -> None:
    from vlalign.report.build import build_report

    path = build_report(Path(args.run), data_root=args.data_root)
    print(f"report: {path} (and {path.with_suffix('.md')})")


def _clip_benchmark(args: argparse.Namespace) -> None:
    from vlalign.eval.clip_benchmark import main as clip_benchmark_main

    code = clip_benchmark_main(args.args)
    if code:
        raise SystemExit(code)


def _demo(args: argparse.Namespace) -> None:
    from vlalign.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)


def _overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` values, then ``--report-to`` as the ``report_to`` recipe key."""
    overrides = list(args.set or [])
    if args.report_to:
        names = [name for name in args.report_to.split(",") if name]
        overrides.append(f"report_to={json.dumps(names)}")
    return overrides


def _add_engine_options(parser: argparse.ArgumentParser, example: str) -> None:
    """The training engine's options: overrides, resume, early stop, trackers, progress."""
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help=f"override a recipe value, e.g. --set {example} (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--max-steps", type=int,
                        help="stop after this many steps (schedule unchanged)")
    parser.add_argument("--report-to", metavar="TRACKERS",
                        help="also log metrics to tensorboard and/or wandb (comma-separated; "
                        "pip install 'vlalign[tracking]'); metrics.jsonl is always written")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_run_options(parser: argparse.ArgumentParser, config: str, example: str) -> None:
    """The options every training command shares: recipe, run folder, the engine's options."""
    parser.add_argument("--config", help=f"YAML recipe, e.g. {config}")
    parser.add_argument("--out", required=True, help="run directory")
    _add_engine_options(parser, example)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlalign", description="Align frozen vision and text encoders into CLIP-like "
        "models (SAIL), distil ViTs from them (UTA) and measure how alignable they are.")
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
                   help="caption kinds to store (default raw,rewritten). An item without a "
                   "kind repeats its raw caption there; the store counts the real ones "
                   "(`vlalign info`) and training uses only the kinds the store has")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--shard-size", type=int, default=4096, help="items per shard (default 4096)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward (default 64)")
    p.add_argument("--workers", type=_count, default=None,
                   help="decoding processes (default: by device; here "
                   f"{default_workers('cpu')} on the CPU, {default_workers('cuda')} beside a GPU)")
    p.add_argument("--max-bad-fraction", type=float, default=0.05,
                   help="stop if more than this fraction of items is unusable (default 0.05)")
    p.add_argument("--data-root", default="data", help="where set-up put the datasets")
    p.add_argument("--device", default="cpu", help="where the backbones run: cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32",
                   help="autocast of both backbones (default fp32; auto: bf16 on a GPU). Part "
                   "of the store's identity: reduced precision changes the features")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_encode)

    p = sub.add_parser(
        "import-embeddings", help="turn precomputed embeddings (clip-retrieval) into a store",
        description="Import image and caption embeddings in the clip-retrieval / "
        "embedding-reader layout (DIR/img_emb/img_emb_N.npy, DIR/text_emb/text_emb_N.npy, "
        "DIR/metadata/metadata_N.parquet with a caption column; shards in numeric order, "
        "float16 or float32 rows) into a feature store that `vlalign train sail` trains on. "
        "Resumable: rerun the same command after an interruption.",
        epilog="The store records no image transform of vlalign's and an identity "
        "imported:SPEC, so it is never mixed with features vlalign encodes (encode, probe, "
        "eval and UTA refuse or skip it). Give --vision-spec/--text-spec to record which "
        "encoders made the embeddings: imports with the same specs can be mixed and used as "
        "validation stores for each other. Example: vlalign import-embeddings "
        "laion-emb --out stores/laion --vision-spec open_clip:ViT-B-32/laion2b_s34b_b79k "
        "--text-spec open_clip:ViT-B-32/laion2b_s34b_b79k")
    p.add_argument("dir", metavar="DIR", help="folder holding img_emb/, text_emb/, metadata/")
    p.add_argument("--out", required=True, help="store directory to write")
    p.add_argument("--vision-spec", metavar="SPEC",
                   help="the encoder that made img_emb, if known (recorded)")
    p.add_argument("--text-spec", metavar="SPEC",
                   help="the encoder that made text_emb, if known (recorded)")
    p.add_argument("--shard-size", type=int, default=4096, metavar="N",
                   help="rows per store shard (default 4096)")
    p.add_argument("--dtype", choices=["float16", "float32"], default=None,
                   help="stored dtype (default: the inputs', float32 if either is)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_import_embeddings)

    p = sub.add_parser("info", help="summarise a feature store")
    p.add_argument("store", help="store directory")
    p.add_argument("--verify", action="store_true", help="check every shard's sha256")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)

    p = sub.add_parser("train", help="train SAIL heads on stored features, or a UTA student")
    train_sub = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    t = train_sub.add_parser("sail", help="SAIL: gated heads + sigmoid loss on a feature store",
                             description="Train SAIL heads. Recipe = defaults <- --config YAML "
                             "<- --set key=value overrides; saved as RUN/config.json.")
    t.add_argument("--store", action="append", help="training store (repeat to mix stores)")
    t.add_argument("--val-store", action="append", help="held-out store(s) evaluated during runs")
    _add_run_options(t, "configs/sail-offline.yaml", "optim.lr=1e-4")
    t.set_defaults(func=_train_sail)
    t = train_sub.add_parser(
        "uta", help="UTA: distil a frozen CLIP-like teacher into a ViT from unmasked tokens",
        description="Train a UTA student (or the mim / distill baselines: --set "
        "objective=mim). Recipe = defaults <- --config YAML <- --set key=value overrides; "
        "saved as RUN/config.json. The finished run is a model: vlalign eval --model RUN.")
    _add_run_options(t, "configs/uta-offline.yaml", "mask.ratio=0.75")
    t.set_defaults(func=_train_uta)

    p = sub.add_parser(
        "finetune", help="train a classifier on a UTA student (linear probe or full)",
        description="Linear probe on the student's frozen features, or full fine-tuning of the "
        "student with a linear classifier; prints the test metrics as JSON. --from-scratch "
        "trains the same architecture from random initialisation (the baseline).")
    p.add_argument("--model", required=True, help="UTA run directory or saved UTA model")
    p.add_argument("--data", required=True, help="labelled training data, e.g. "
                   "fashion-mnist:train[:10000]")
    p.add_argument("--test-data", required=True, help="labelled test data, e.g. "
                   "fashion-mnist:test")
    p.add_argument("--mode", choices=["linear", "full"], default="linear")
    p.add_argument("--from-scratch", action="store_true",
                   help="random initialisation of the same architecture")
    p.add_argument("--epochs", type=float, default=10.0, help="full mode (default 10)")
    p.add_argument("--time-budget-s", type=float, default=0.0,
                   help="full mode: stop after this many seconds of training (schedule in time)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4, help="full mode (default 1e-4, EVA-02-B's)")
    p.add_argument("--no-augment", action="store_true", help="full mode: no crop/flip")
    p.add_argument("--layer-decay", type=float, default=0.7,
                   help="full mode: layer-wise lr decay, lr x DECAY^(depth + 1 - layer); 1 = off "
                   "(default 0.7, EVA-02-B's)")
    p.add_argument("--drop-path", type=float, default=0.1,
                   help="full mode: stochastic depth at the last block (default 0.1, EVA-02-B's)")
    p.add_argument("--smoothing", type=float, default=0.1,
                   help="full mode: label smoothing (default 0.1, EVA-02-B's)")
    p.add_argument("--img-size", type=int, default=0,
                   help="fine-tune and test at this side, a multiple of the patch size (timm "
                   "resamples the positions and RoPE; default 0: the student's own)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="autocast dtype (auto: bf16 where it is fast here, else fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="image-decoding processes")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default="data", help="where set-up put the datasets")
    p.add_argument("--out", help="folder for finetune.json (full mode: a run folder, with "
                   "checkpoints, metrics.jsonl and the classifier)")
    _add_engine_options(p, "optim.weight_decay=0.1")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("classify", help="zero-shot classify images with a trained model")
    p.add_argument("--model", required=True, help="run directory or saved model")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--labels", nargs="+", required=True, help='class names, e.g. "a cat" "a dog"')
    p.add_argument("--templates", nargs="+", default=["a photo of {a} {c}."],
                   help="prompt templates, applied verbatim: {c} (or {}) is the label, {a} "
                        "its article (a/an); default 'a photo of {a} {c}.'")
    p.add_argument("--top", type=int, default=5, help="labels to print per image")
    p.set_defaults(func=_classify)

    p = sub.add_parser(
        "import-sail", help="turn an official SAIL checkpoint (.pt) into a vlalign model",
        description="Load an official SAIL alignment layer (e.g. sail_dinov2l_nv2.pt from "
        "le723z/sail, or an official training checkpoint) with torch.load(weights_only=True) "
        "and write a vlalign model folder that `vlalign eval --model DIR`, `vlalign classify` "
        "and vlalign.load_model(DIR) open. Strict: a missing or unknown key is an error.",
        epilog="The released checkpoints were trained on --vision hf:facebook/dinov2-large with "
        "--text hf:Alibaba-NLP/gte-large-en-v1.5 (sail_dinov2l_gte.pt) or --text "
        "hf:nvidia/NV-Embed-v2 (sail_dinov2l_nv2.pt). The backbones are loaded once, to check "
        "their output dims against the heads and record their identities.")
    p.add_argument("checkpoint", metavar="FILE.pt", help="official alignment-layer checkpoint")
    p.add_argument("--vision", required=True, help="vision spec the heads were trained on")
    p.add_argument("--text", required=True, help="text spec the heads were trained on")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--device", default="cpu", help="where to load the backbones (default cpu)")
    p.set_defaults(func=_import_sail)

    p = sub.add_parser(
        "export-sail", help="write a SAIL model in the official checkpoint layout (.pt)",
        description="Write the GLU heads, logit scale and bias of a vlalign SAIL run or model "
        "folder as the official AlignmentLayer state dict (vision_layer_norm.*, "
        "vision_mapping_network.{f1,f2,g}.*, text_*, logit_scale, logit_bias): exactly those "
        "keys, for the official code and its LLaVA vision tower.")
    p.add_argument("run", metavar="RUN", help="training run directory or saved model folder")
    p.add_argument("--out", required=True, metavar="FILE.pt", help="checkpoint file to write")
    p.set_defaults(func=_export_sail)

    p = sub.add_parser(
        "import-uta", help="turn an official UTA checkpoint (.pt) into a vlalign model",
        description="Load an official UTA checkpoint (UTA-B/16, UTA-L/14-336 or UTA-g/14-336 "
        "from jjjjh/UTA: the uta_clip.CLIP state dict, visual.*, text.*, logit_scale) with "
        "torch.load(weights_only=True) and write a self-contained vlalign UTA model folder: "
        "the visual tower as a timm EVA-02 student, the text tower and tokenizer as its "
        "zero-shot text side. Strict: a missing or unknown key is an error.",
        epilog="The timm model and its sizes (dim, depth, heads from the RoPE buffers, patch, "
        "image size) are read from the tensors; sizes of no release are accepted too.")
    p.add_argument("checkpoint", metavar="FILE.pt", help="official UTA checkpoint")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--name", metavar="TIMM_NAME",
                   help="timm EVA-02 model for the student (default: by the shapes)")
    p.add_argument("--text-heads", type=int, metavar="N",
                   help="attention heads of the text tower (default: width / 64, i.e. 16)")
    p.set_defaults(func=_import_uta)

    p = sub.add_parser(
        "push", help="share a trained model on the Hugging Face Hub",
        description="Upload a finished run or saved model folder (the model files only, no "
        "checkpoints) with a generated model card (backbones, training facts, results) to a Hub "
        "repo, created if missing. Others load it with vlalign.load_model('hf-hub:REPO_ID'). "
        "Log in first (`hf auth login`) or set HF_TOKEN.")
    p.add_argument("run", metavar="RUN", help="training run directory or saved model folder")
    p.add_argument("repo_id", metavar="REPO_ID", help="Hub repo, e.g. my-org/sail-dinov2-gte")
    p.add_argument("--revision", help="branch to push to (created if missing; default main)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--results", metavar="FILE",
                   help="evaluation results for the card's model-index (a `vlalign eval` JSON "
                   "file or folder; default RUN/results.json when present)")
    p.add_argument("--license", help="license id for the card, e.g. apache-2.0")
    p.add_argument("--out", metavar="DIR",
                   help="only write the upload folder (model files + README.md) to DIR")
    p.set_defaults(func=_push)

    p = sub.add_parser(
        "eval", help="evaluate models (zero-shot, retrieval, k-NN, probes, pairs, segmentation)",
        description="Evaluate a model on one task and dataset, or on a whole suite. Results are "
        "CLIP_benchmark-shaped JSON files (dataset, model, pretrained, task, metrics, language); "
        "a suite also writes results.{json,csv,md} with one column per model.",
        epilog="tasks: zeroshot_classification, zeroshot_retrieval, knn, linear_probe, "
        "winoground, mmvp, zeroshot_segmentation. datasets: any data spec (fashion-mnist:test, "
        "emoji:test, folder:DIR, csv:FILE), standard layouts (imagenet:DIR, coco:DIR, "
        "flickr30k:DIR, winoground:DIR, mmvp:DIR, voc:DIR, ade20k:DIR) and offline sets "
        "(emoji-pairs:test, emoji-mmvp:test, emoji-canvas:test?by=name|subcategory).")
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]MODEL",
                   help="run directory, saved model, open_clip:ARCH/PRETRAINED, or "
                   "random-heads:RUN (RUN's backbones with untrained heads); repeatable")
    p.add_argument("--task", help="one task (see below)")
    p.add_argument("--dataset", help="evaluation data spec")
    p.add_argument("--train-dataset", help="training data for knn and linear_probe")
    p.add_argument("--suite", choices=["offline"], help="run every task of a suite instead")
    p.add_argument("--out", help="result file (one task) or folder (suite; default results)")
    p.add_argument("--store", action="append", metavar="DIR",
                   help="feature store(s), or a folder of them, whose frozen features to reuse")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward (default 64)")
    p.add_argument("--device", default="auto",
                   help="where models run: auto (a GPU if there is one), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=_count, default=None, metavar="N",
                   help="image-decoding worker processes (default: by device; here "
                   f"{default_workers('cpu')} on the CPU, {default_workers('cuda')} beside a "
                   "GPU; 0 decodes in the main process)")
    p.add_argument("--data-root", default="data", help="where set-up put the datasets")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_eval)

    p = sub.add_parser(
        "probe", help="alignment probing: how well can these vision and text encoders align?",
        description="For every vision x text encoder pair: encode what is not stored yet, train "
        "one linear layer per side with the sigmoid loss on --data, and report held-out "
        "retrieval (alignment = recall@10 averaged over both directions, SAIL's metric). Each "
        "vision encoder also gets k-NN and linear-probe accuracy on labelled sets, each text "
        "encoder a paraphrase score; the report correlates alignment with both. Resumable: "
        "rerun the same command after an interruption.",
        epilog="Recipe = defaults (or --suite) <- --config YAML <- flags <- --set overrides; "
        "configs/probe-paper.yaml holds the paper's values. Example: vlalign probe --vision "
        "bundled:mobilenetv2,bundled:mobilenetv2@stage3 --text bundled:minilm,bundled:bow")
    p.add_argument("--vision", help="comma-separated vision specs")
    p.add_argument("--text", help="comma-separated text specs")
    p.add_argument("--data", help="image-caption pairs the linear heads train on "
                   "(default emoji:train)")
    p.add_argument("--test-data", help="held-out pairs for retrieval (default emoji:test)")
    p.add_argument("--labelled", action="append", metavar="TRAIN,TEST",
                   help="labelled sets for k-NN and linear probes (repeatable; default "
                   "fashion-mnist:train[:4000],fashion-mnist:test[:1000])")
    p.add_argument("--suite", choices=["offline"],
                   help="the full offline grid: 15 vision x 3 text encoders")
    p.add_argument("--config", help="YAML probe recipe, e.g. configs/probe-paper.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set sail.epochs=10 (repeatable)")
    p.add_argument("--store", action="append", metavar="DIR",
                   help="existing feature store(s), or a folder of them, to reuse")
    p.add_argument("--out", default="runs/probe", help="output folder (default runs/probe)")
    p.add_argument("--data-root", default="data", help="where set-up put the datasets")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_probe)

    p = sub.add_parser("report", help="write RUN/report.html and report.md with plots",
                       description="Collect what RUN holds (summary.json, training runs' "
                       "metrics.jsonl, evaluation suites' results.json) into a self-contained "
                       "HTML page and a Markdown twin: training curves, results tables, "
                       "confusion matrices, retrieval grids and segmentation overlays.")
    p.add_argument("run", help="run folder (e.g. runs/demo, a training run, an eval folder)")
    p.add_argument("--data-root", default="data",
                   help="where the evaluation data lives (for thumbnails)")
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "clip-benchmark", help="run CLIP_benchmark (eval, build) on vlalign models",
        description="Run CLIP_benchmark's own command line (`clip_benchmark eval|build ...`) "
        "in this process, with model type vlalign: --model_type vlalign --model RUN loads RUN "
        "as `vlalign eval --model` does (a run folder, saved model, open_clip:ARCH/TAG or "
        "random-heads:RUN; NAME=RUN names it); --pretrained is ignored. Its records are "
        "those of `vlalign eval` (model: the name, pretrained: the spec), and `build` reads "
        "the records in a folder and its folders (a `vlalign eval --suite` folder as it is). "
        "Every argument after clip-benchmark goes to CLIP_benchmark unchanged: see `vlalign "
        "clip-benchmark eval --help`. Needs pip install 'vlalign[clip-benchmark]'.",
        epilog="example: vlalign clip-benchmark eval --model_type vlalign --model "
        "runs/demo/sail --dataset wds/mydata --dataset_root data/mydata --task "
        "zeroshot_classification --no_amp --output 'results/{model}/{task}__{dataset}.json'; "
        "then: vlalign clip-benchmark build results --output benchmark.csv")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="eval|build ...",
                   help="CLIP_benchmark's arguments")
    p.set_defaults(func=_clip_benchmark)

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
