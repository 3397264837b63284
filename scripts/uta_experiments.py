"""UTA against its baselines on the offline data, for docs/uta.md.

1. Distil the demo's SAIL model (run `make demo` first: its Fashion-MNIST store keeps the token
   maps, and the teacher's targets are cached on first use, so no run pays for the teacher)
   into the same small EVA-02 three ways, one after the other, each for the same wall-clock
   budget on the whole machine: UTA (kept tokens only), EVA-02-style masked image modelling
   (mask tokens, all tokens run) and plain full-image distillation (no masking).
2. Evaluate the three students and the teacher with the evaluation suite: zero-shot
   Fashion-MNIST classification.
3. Fine-tune the UTA student (EVA-02's recipe: layer-wise lr decay, drop path, label smoothing)
   and the same ViT from scratch on Fashion-MNIST labels for the same time, and linear-probe
   the UTA student.

Every stage is resumable (finished runs are skipped). Run it alone on the machine: the budgets
are wall-clock. Usage:
    .venv/bin/python scripts/uta_experiments.py --budget 240 --finetune-budget 120  # docs/uta.md
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from vlalign.eval.finetune import FinetuneConfig, finetune
from vlalign.eval.run import Job, run_suite
from vlalign.eval.tasks import Context
from vlalign.models import load_model

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ("uta", "mim", "distill")
DATA = ["fashion-mnist:train[:20000]"]  # configs/uta-offline.yaml's, and the demo's store of it


def distil(out: Path, budget: float, teacher: str, data: list[str],
           stores: list[Path]) -> dict[str, Path]:
    """One student per objective, each trained for ``budget`` seconds of the whole machine,
    one after the other, from the same cached teacher targets."""
    runs = {objective: out / objective for objective in OBJECTIVES}
    for objective, run in runs.items():
        if (run / "uta.json").exists():
            continue
        command = [sys.executable, "-m", "vlalign", "train", "uta", "--quiet",
                   "--config", str(ROOT / "configs" / "uta-offline.yaml"), "--out", str(run)]
        for override in (f"objective={objective}", f"time_budget_s={budget}",
                         f"teacher={teacher}", "eval.zeroshot=[]", "targets=store",
                         "augment=false", f"data={json.dumps(data)}",
                         f"stores={json.dumps([str(s) for s in stores])}"):
            command += ["--set", override]
        if (run / "latest.json").exists():
            command.append("--resume")
        if subprocess.call(command) != 0:
            raise SystemExit(f"the {objective} run failed (see its output above)")
    return runs


def evaluate(out: Path, runs: dict[str, Path], teacher_run: Path, fashion_test: str) -> list:
    """Zero-shot classification for the teacher and every student, one merged table."""
    jobs = (Job("zeroshot_classification", fashion_test),)
    models = {"sail_teacher": (load_model(teacher_run), str(teacher_run))}
    models |= {f"student_{name}": (load_model(run), str(run)) for name, run in runs.items()}
    return run_suite(models, jobs, out / "eval", Context(progress=False))


def fine_tune(out: Path, uta_run: Path, budget: float, train: str, test: str) -> dict:
    """UTA-initialised vs from-scratch full fine-tuning at equal time, and a linear probe."""
    results = {}
    for name, config in (("uta_full", FinetuneConfig(mode="full", time_budget_s=budget)),
                         ("scratch_full", FinetuneConfig(mode="full", from_scratch=True,
                                                         time_budget_s=budget)),
                         ("uta_linear", FinetuneConfig(mode="linear"))):
        record_path = out / "finetune" / name / "finetune.json"
        if not record_path.exists():
            finetune(uta_run, train, test, config, record_path.parent, progress=False)
        results[name] = json.loads(record_path.read_text())["metrics"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-run", default="runs/demo/sail", help="a trained SAIL run")
    parser.add_argument("--store", default="runs/demo/stores/fashion_train",
                        help="the demo's store of fashion-mnist:train[:20000], with token maps")
    parser.add_argument("--out", default="runs/uta-experiments")
    parser.add_argument("--budget", type=float, default=1200.0,
                        help="training seconds per distillation objective")
    parser.add_argument("--finetune-budget", type=float, default=600.0,
                        help="training seconds per full fine-tuning run")
    parser.add_argument("--fashion-test", default="fashion-mnist:test[:2000]")
    parser.add_argument("--finetune-train", default="fashion-mnist:train[:5000]")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    runs = distil(out, args.budget, f"sail:{args.teacher_run}", DATA, [Path(args.store)])
    records = evaluate(out, runs, Path(args.teacher_run), args.fashion_test)
    tuned = fine_tune(out, runs["uta"], args.finetune_budget, args.finetune_train,
                      args.fashion_test)
    (out / "finetune.json").write_text(json.dumps(tuned, indent=1) + "\n")
    print((out / "eval" / "results.md").read_text())
    for name, metrics in tuned.items():
        print(name, {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
    print(f"{len(records)} results in {out / 'eval'}; fine-tuning in {out / 'finetune.json'}")


if __name__ == "__main__":
    main()
