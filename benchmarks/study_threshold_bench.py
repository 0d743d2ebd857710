"""Study arms (the cpu preset's recipe, no validation split): test Dice at every threshold of the
calibration grid, next to the threshold the arm calibrated on its own training patches.

    python benchmarks/study_threshold_bench.py DATA OUT STRUCTURE    # e.g. /tmp/study_small /tmp/cal cfos

Scratch arms, labels 1 and all, seeds 0 and 1; the Otsu threshold of the raw test images last.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from selma3d.evaluation.baselines import otsu_mask
from selma3d.evaluation.metrics import dice
from selma3d.inference.predict import load_run, predict_probabilities
from selma3d.study.plan import StudyPlan
from selma3d.study.runner import _quiet, finetune_config, load_test_cases, structure_types
from selma3d.training.finetune import THRESHOLD_GRID, finetune


def main(data: str, out: str, structure: str) -> None:
    out_dir = Path(out)
    plan = StudyPlan.from_preset(data, out, "cpu", structures=[structure])
    cases = load_test_cases(data, {structure_types(plan)[structure]})
    for labels in (1, None):
        for seed in (0, 1):
            arm = next(a for a in plan.arms() if a.method == "scratch" and a.labels == labels and a.seed == seed)
            run_dir = out_dir / arm.key
            start = time.time()
            with _quiet():
                finetune(finetune_config(plan, arm, run_dir, None))
            info = json.loads((run_dir / "run.json").read_text())
            run = load_run(run_dir)
            probs = [predict_probabilities(run.model, c.image, run.patch_size, normalize=run.normalization)
                     for c in cases]
            print(f"{arm.key}: calibrated threshold {info['threshold']} ({time.time() - start:.0f} s)", flush=True)
            for t in THRESHOLD_GRID:
                print(f"  t {t} {np.mean([dice(c.label, p > t) for c, p in zip(cases, probs)]):.3f}")
            print(f"  predict() {np.mean([dice(c.label, run.predict(c.image)) for c in cases]):.3f}", flush=True)
    print(f"otsu {np.mean([dice(c.label, otsu_mask(c.image.astype(np.float32))) for c in cases]):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
