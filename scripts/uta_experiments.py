"""UTA against its baselines on the offline data, for docs/uta.md.

1. Distil the demo's SAIL model (run `make demo` first) into the same tiny ViT three ways, each
   for the same wall-clock budget: UTA (kept tokens only), EVA-02-style masked image modelling
   (mask tokens, all tokens run) and plain full-image distillation (no masking).
2. Evaluate the three students and the teacher with the evaluation suite: zero-shot
   Fashion-MNIST and emoji classification, emoji retrieval.
3. Fine-tune the UTA student and the same ViT from scratch on Fashion-MNIST labels for the same
   time, and linear-probe the UTA student.

Every stage is resumable (finished runs are skipped). Usage:
    .venv/bin/python scripts/uta_experiments.py --budget 480 --finetune-budget 300
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
from vlalign.model import load_model

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ("uta", "mim", "distill")


def distil(out: Path, budget: float, teacher: str) -> dict[str, Path]:
    """One student per objective, each trained for ``budget`` seconds. The three run at the same
    time, one thread each, so whatever else loads the machine slows them all alike."""
    runs = {objective: out / objective for objective in OBJECTIVES}
    processes = []
    for objective, run in runs.items():
        if (run / "uta.json").exists():
            continue
        command = [sys.executable, "-m", "vlalign", "train", "uta", "--quiet",
                   "--config", str(ROOT / "configs" / "uta-offline.yaml"), "--out", str(run)]
        for override in (f"objective={objective}", f"time_budget_s={budget}",
                         f"teacher={teacher}", "eval.zeroshot=[]", "num_threads=1"):
            command += ["--set", override]
        if (run / "latest.json").exists():
            command.append("--resume")
        processes.append(subprocess.Popen(command))
    if any(process.wait() != 0 for process in processes):
        raise SystemExit("a distillation run failed (see its output above)")
    return runs


def evaluate(out: Path, runs: dict[str, Path], teacher_run: Path, fashion_test: str) -> list:
    """Zero-shot and retrieval for the teacher and every student, one merged table."""
    jobs = (Job("zeroshot_classification", fashion_test),
            Job("zeroshot_classification", "emoji:test"),
            Job("zeroshot_retrieval", "emoji:test"))
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
    parser.add_argument("--out", default="runs/uta-experiments")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="training seconds per distillation objective")
    parser.add_argument("--finetune-budget", type=float, default=300.0,
                        help="training seconds per full fine-tuning run")
    parser.add_argument("--fashion-test", default="fashion-mnist:test[:2000]")
    parser.add_argument("--finetune-train", default="fashion-mnist:train[:5000]")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    runs = distil(out, args.budget, f"sail:{args.teacher_run}")
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
