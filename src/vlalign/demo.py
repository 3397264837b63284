"""`make demo`: the whole offline pipeline on the bundled encoders, ending in a summary.

1. encode Fashion-MNIST and emoji (train and test) with bundled:mobilenetv2 + bundled:minilm;
2. train SAIL heads on Fashion-MNIST train + emoji train (raw and rewritten captions), evaluating
   the held-out splits during training;
3. train a second set on emoji alone, to measure true zero-shot transfer to Fashion-MNIST, and a
   linear-head control on the same data as step 2;
4. run the offline evaluation suite on the SAIL model and two controls (linear heads; the same
   backbones with untrained heads) and write summary.json + summary.md;
5. probe a small grid of encoders (4 vision x 2 text) for alignability, reusing step 1's stores;
6. distil the SAIL model into a small EVA-02 ViT from unmasked tokens (UTA), with teacher
   targets made once from the stored token maps, and evaluate the student zero-shot next to its
   teacher;
7. write report.html (and report.md) with the plots.
Stores and runs are resumable, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.config import load_config
from vlalign.data import create_source
from vlalign.errors import StoreError
from vlalign.eval.run import Job, offline_suite, run_job, run_suite, write_table
from vlalign.eval.stored import evaluate_store, store_evaluator
from vlalign.eval.tasks import Context
from vlalign.models import load_model
from vlalign.probe.config import ProbeConfig
from vlalign.probe.run import run_probe
from vlalign.report.build import build_report
from vlalign.sail.artifact import AlignmentHeads
from vlalign.sail.config import SailConfig
from vlalign.sail.train import train_sail
from vlalign.store import EncodeOptions, FeatureStore, encode_store
from vlalign.uta.config import UtaConfig
from vlalign.uta.train import train_uta
from vlalign.utils.files import atomic_write_json

log = logging.getLogger(__name__)
VISION, TEXT = "bundled:mobilenetv2", "bundled:minilm"
PROBE_VISION = [VISION, f"{VISION}@stage3", f"{VISION}?weights=random",
                "bundled:pixels?size=32&patch=4"]
PROBE_TEXT = [TEXT, "bundled:bow"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CONFIG, UTA_CONFIG = CONFIGS / "sail-offline.yaml", CONFIGS / "uta-offline.yaml"
UTA_STORES = ("fashion_train",)  # what the UTA student learns from (stored teacher targets)
MAIN = "sail"  # the model every task evaluates; the controls get the alignment tasks only
CONTROL_TASKS = ("zeroshot_classification", "zeroshot_retrieval", "winoground", "mmvp")


@dataclass
class DemoSize:
    """How much of each dataset the demo encodes, and how long it trains."""

    fashion_train: str = "fashion-mnist:train[:20000]"
    fashion_test: str = "fashion-mnist:test"
    emoji_train: str = "emoji:train"
    emoji_test: str = "emoji:test"
    epochs: float = 20.0
    transfer_epochs: float = 30.0
    batch_size: int = 1024
    eval_every: int = 150
    pairs_per_tag: int = 50
    canvases: int = 100
    probe_labelled_train: str = "fashion-mnist:train[:1000]"
    probe_labelled_test: str = "fashion-mnist:test[:500]"
    probe_epochs: float = 20.0
    uta_seconds: float = 150.0
    uta_overrides: tuple[str, ...] = ()


QUICK = DemoSize("fashion-mnist:train[:512]", "fashion-mnist:test[:256]", "emoji:train[:512]",
                 "emoji:test[:256]", epochs=2.0, transfer_epochs=2.0, batch_size=128,
                 eval_every=4, pairs_per_tag=4, canvases=4,
                 probe_labelled_train="fashion-mnist:train[:256]",
                 probe_labelled_test="fashion-mnist:test[:128]", probe_epochs=2.0,
                 uta_seconds=10.0, uta_overrides=("batch_size=16", "student.depth=2",
                                                  "log_every=2", "checkpoint_every=4"))


def _encode_all(size: DemoSize, root: Path) -> dict[str, Path]:
    """The four stores; the training splits keep their token maps, the UTA student's targets."""
    vision = create_vision_encoder(VISION)
    text = create_text_encoder(TEXT)
    stores = {}
    for name, spec in (("fashion_train", size.fashion_train), ("fashion_test", size.fashion_test),
                       ("emoji_train", size.emoji_train), ("emoji_test", size.emoji_test)):
        out = root / name
        encode_store(create_source(spec), vision, text, out, kinds=["raw", "rewritten"],
                     specs=(VISION, TEXT), options=EncodeOptions(tokens=name in UTA_STORES))
        stores[name] = out
    return stores


def _stores_of(out: Path, size: DemoSize) -> dict[str, Path]:
    """The demo's stores in ``out/stores``. A folder an older vlalign made (its stores refused,
    e.g. for another image transform) is started over: everything in it was trained on them."""
    try:
        return _encode_all(size, out / "stores")
    except StoreError as stale:
        if not (out / "stores").exists():
            raise
        log.warning("%s was made by an older vlalign (%s); starting the demo over", out, stale)
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        return _encode_all(size, out / "stores")


def _train(run: Path, train: list[Path], size: DemoSize, epochs: float,
           val: tuple[Path, ...] = (), heads: str | None = None) -> Path:
    overrides = [f"epochs={epochs}", f"batch_size={size.batch_size}",
                 f"eval_every={size.eval_every}"]
    if heads:
        overrides += [f"vision_head.kind={heads}", f"text_head.kind={heads}"]
    config = load_config(SailConfig, CONFIG if CONFIG.exists() else None, overrides)
    config.train_stores = [str(p) for p in train]
    config.val_stores = [str(p) for p in val]
    if (run / "heads.json").exists():
        log.info("%s already trained", run)
        return run
    evaluate = store_evaluator(config.val_stores) if val else None
    train_sail(config, run, resume=(run / "latest.json").exists(), evaluate=evaluate)
    return run


def _evaluate_suite(out: Path, runs: dict[str, Path | str], size: DemoSize,
                    stores: dict[str, Path]) -> list[dict]:
    """The offline suite on the SAIL model, and its alignment tasks on the controls, reusing
    the demo's stores (a suite finished by an earlier, interrupted demo is read back)."""
    if (out / "results.json").exists():
        return json.loads((out / "results.json").read_text())
    jobs = offline_suite(size.fashion_train, size.fashion_test, size.emoji_train,
                         size.emoji_test, size.pairs_per_tag, size.canvases)
    context = Context(stores=[FeatureStore(p) for p in stores.values()])
    records = []
    for name, path in runs.items():
        model = load_model(path)
        for job in jobs if name == MAIN else [j for j in jobs if j.task in CONTROL_TASKS]:
            records.append(run_job(model, job, name, str(path), out / name / f"{job.slug}.json",
                                   context))
    write_table(records, out)
    return records


def _probe(out: Path, size: DemoSize, stores: dict[str, Path]) -> dict[str, float]:
    """A small alignability grid on emoji; returns its correlations for the summary."""
    config = ProbeConfig(vision=PROBE_VISION, text=PROBE_TEXT, train_data=size.emoji_train,
                         test_data=size.emoji_test, labelled_train=[size.probe_labelled_train],
                         labelled_test=[size.probe_labelled_test])
    config.sail.epochs = size.probe_epochs
    result = run_probe(config, out, stores=[FeatureStore(p) for p in stores.values()],
                       progress=False)
    summary = {f"probe/{p['vision']} + {p['text']}/alignment": p["alignment"]
               for p in result["pairs"]}
    correlation = result["correlations"]["mean over text encoders | fashion-mnist"]
    for measure in ("knn", "linear_probe"):
        summary[f"probe/pearson(alignment, {measure})"] = correlation[measure]["pearson"]
    return summary


def _uta(out: Path, size: DemoSize, teacher: Path, stores: dict[str, Path]) -> dict[str, float]:
    """Distil the SAIL model into timm's EVA-02 (UTA, offline recipe: targets from the stored
    token maps, cached once; ``uta_seconds`` of training); the student's Fashion-MNIST zero-shot
    accuracy next to its teacher's, through the evaluation suite."""
    run = out / "uta"
    if not (run / "uta.json").exists():
        overrides = [f"teacher=sail:{teacher}", f"time_budget_s={size.uta_seconds}",
                     f"data={json.dumps([size.fashion_train])}", "targets=store",
                     "augment=false",
                     f"stores={json.dumps([str(stores[name]) for name in UTA_STORES])}",
                     "eval.zeroshot=[]", *size.uta_overrides]
        config = load_config(UtaConfig, UTA_CONFIG if UTA_CONFIG.exists() else None, overrides)
        train_uta(config, run, resume=(run / "latest.json").exists())
    jobs = (Job("zeroshot_classification", size.fashion_test),)
    results = out / "eval_uta" / "results.json"
    if results.exists():
        records = json.loads(results.read_text())
    else:
        models = {"uta_student": (load_model(run), str(run)),
                  "sail_teacher": (load_model(teacher), str(teacher))}
        records = run_suite(models, jobs, out / "eval_uta",
                            Context(stores=[FeatureStore(p) for p in stores.values()]))
    summary = {}
    for record in records:
        dataset = record["dataset"].split(":")[0].replace("-", "_")
        for key in ("acc1", "image_retrieval_recall@5", "text_retrieval_recall@5"):
            if key in record["metrics"]:
                summary[f"uta/{record['model']}/{dataset}/{key}"] = record["metrics"][key]
    return summary


class StageClock:
    """Seconds per demo stage, logged as each one ends; the summary keeps them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 1)
        log.info("stage %s done in %.0f s", name, self.seconds[name])


def run_demo(out: Path, quick: bool = False) -> dict[str, float]:
    """Run the pipeline into ``out``; returns the flat summary."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    size = QUICK if quick else DemoSize()
    out.mkdir(parents=True, exist_ok=True)
    start, stage = time.perf_counter(), StageClock()
    with stage("encode"):
        stores = _stores_of(out, size)
    with stage("train_sail"):
        main_run = _train(out / "sail", [stores["fashion_train"], stores["emoji_train"]], size,
                          size.epochs, val=(stores["fashion_test"], stores["emoji_test"]))
        transfer_run = _train(out / "sail_emoji_only", [stores["emoji_train"]], size,
                              size.transfer_epochs)
        linear_run = _train(out / "controls" / "linear_heads",
                            [stores["fashion_train"], stores["emoji_train"]], size, size.epochs,
                            heads="linear")
    with stage("evaluate"):
        _evaluate_suite(out / "eval", {"sail": main_run, "linear_heads": linear_run,
                                       "random_heads": f"random-heads:{main_run}"}, size, stores)
        summary: dict[str, float] = {}
        evaluations = (("sail", main_run, "fashion_test", "fashion_mnist"),
                       ("sail", main_run, "emoji_test", "emoji"),
                       ("sail_emoji_only", transfer_run, "fashion_test", "fashion_mnist_transfer"),
                       ("sail_emoji_only", transfer_run, "emoji_test", "emoji"))
        for model_name, run, store_name, label in evaluations:
            heads = AlignmentHeads.from_pretrained(run)
            for key, value in evaluate_store(FeatureStore(stores[store_name]), heads).items():
                summary[f"{model_name}/{label}/{key}"] = round(value, 4)
    with stage("probe"):
        probe = _probe(out / "probe", size, stores)
    summary |= {key: round(value, 4) for key, value in probe.items()}
    with stage("uta"):
        uta = _uta(out, size, main_run, stores)
    summary |= {key: round(value, 4) for key, value in uta.items()}
    summary |= {f"seconds/{name}": seconds for name, seconds in stage.seconds.items()}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(_markdown(summary, size))
    records = json.loads((out / "eval" / "results.json").read_text())
    atomic_write_json(out / "overview.json", _overview(size, records, summary, stage.seconds))
    with stage("report"):
        report = build_report(out, title="vlalign demo")
    print(_markdown(summary, size))
    print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in stage.seconds.items()))
    print(f"results: {out / 'summary.json'}, {out / 'eval' / 'results.md'}")
    print(f"report: {report}")
    return summary


HEADLINES = (  # (row label, task, which test split, metric): the overview's first table
    ("Fashion-MNIST zero-shot acc1", "zeroshot_classification", "fashion_test", "acc1"),
    ("emoji zero-shot acc1", "zeroshot_classification", "emoji_test", "acc1"),
    ("emoji retrieval R@5, text -> image", "zeroshot_retrieval", "emoji_test",
     "image_retrieval_recall@5"),
    ("emoji retrieval R@5, image -> text", "zeroshot_retrieval", "emoji_test",
     "text_retrieval_recall@5"),
)
CONTROLS = ("linear_heads", "random_heads")


def _overview(size: DemoSize, records: list[dict], summary: dict[str, float],
              seconds: dict[str, float]) -> dict:
    """The report's first screen: what was trained on what, the headline numbers next to the
    controls', the UTA student next to its teacher, and where the time went."""
    splits = {"fashion_test": size.fashion_test, "emoji_test": size.emoji_test}
    metric = {(r["model"], r["task"], r["vlalign"]["spec"]): r["metrics"] for r in records}
    rows = [[label] + [metric.get((model, task, splits[split]), {}).get(key)
                       for model in (MAIN, *CONTROLS)]
            for label, task, split, key in HEADLINES]
    rows.append(["Fashion-MNIST acc1, heads trained on emoji only",
                 summary.get("sail_emoji_only/fashion_mnist_transfer/acc1"), None, None])
    student = summary.get("uta/uta_student/fashion_mnist/acc1")
    teacher = summary.get("uta/sail_teacher/fashion_mnist/acc1")
    ratio = round(student / teacher, 3) if student is not None and teacher else None
    minutes = sum(seconds.values()) / 60
    return {
        "title": "What was trained, on what, and how well",
        "lines": [
            f"SAIL: gated-MLP heads on the frozen features of {VISION} (vision) and {TEXT} (text),"
            f" trained with a sigmoid contrastive loss on {size.fashion_train} + "
            f"{size.emoji_train} (raw and rewritten captions); every number below is on the "
            f"held-out {size.fashion_test} and {size.emoji_test}.",
            "Controls: the same backbones with linear heads (same data and epochs), and with "
            "untrained heads (the floor). Chance is 0.1 on Fashion-MNIST.",
            f"UTA: the SAIL model distilled into timm's EVA-02 ({size.uta_seconds:.0f} s, teacher "
            "targets cached from the stored token maps); the student classifies zero-shot with "
            "the SAIL text side.",
            f"Time: {minutes:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in
                                                    seconds.items()) + ").",
        ],
        "tables": [
            {"header": ["metric", "SAIL", "linear heads", "untrained heads"], "rows": rows},
            {"header": ["Fashion-MNIST zero-shot acc1", "value"],
             "rows": [["UTA student", student], ["its SAIL teacher", teacher],
                      ["student / teacher", ratio]]},
        ],
    }


def _markdown(summary: dict[str, float], size: DemoSize) -> str:
    lines = ["# vlalign demo", "",
             f"Backbones: {VISION} + {TEXT}. Data: {size.fashion_train}, {size.emoji_train} "
             f"(train); {size.fashion_test}, {size.emoji_test} (held out).", "",
             "| metric | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in summary.items()]
    return "\n".join(lines) + "\n"
