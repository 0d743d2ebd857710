"""Transfer: does a finetuned model beat a threshold on data unlike its training data?

Finetunes the small unet3d of the issue (features 8,16,32, 32³ crops, batch 2) on the `small`
synthetic set for one structure, then scores it, an Otsu threshold and the best global threshold
per case (an oracle that knows the labels: the ceiling of every threshold method) on

* ``final_test`` of the synthetic set (in distribution),
* ``shifted_test`` when the set has it (``selma3d synth --shift``),
* cases of :mod:`selma3d.data.ood`, a second generator that shares no code with ``synth``.

    .venv/bin/python benchmarks/transfer_bench.py --structure cfos --steps 300 [--data DIR]
    .venv/bin/python benchmarks/transfer_bench.py --structure vessel --steps 300   # tree: tested on microglia

Prints one Markdown table (mean Dice, and clDice for trees) per test set and arm.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="dataset (default: a fresh `small` set with --shift if available)")
    parser.add_argument("--structure", default="cfos", help="training structure (cfos → spot tests, vessel → tree tests)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ood-cases", type=int, default=8)
    parser.add_argument("--loss", default=None, help="default: the finetune default")
    parser.add_argument("--augment", default="default")
    parser.add_argument("--normalization-floor", type=float, default=None,
                        help="override the noise floor (0 → plain percentiles) to compare")
    parser.add_argument("--out", type=Path, help="keep the run here")
    return parser.parse_args()


def best_threshold_dice(image, label) -> float:
    """Dice of the best global threshold (over 64 quantiles of the image): the oracle threshold."""
    from selma3d.evaluation.metrics import dice

    values = np.quantile(image, np.linspace(0.5, 0.9999, 64))
    return max(dice(label, image > t) for t in values)


def score(kind: str, label, pred) -> dict:
    from selma3d.evaluation.metrics import cldice, dice

    out = {"dice": dice(label, pred)}
    if kind == "tree":
        out["cldice"] = cldice(label, pred)
    return out


def main() -> None:
    args = _parse()
    import torch

    torch.set_num_threads(2)
    from selma3d.data.layout import load_dataset
    from selma3d.data.ood import ood_case
    from selma3d.evaluation.baselines import otsu_mask
    from selma3d.inference.predict import load_run
    from selma3d.io.nifti import read_nifti
    from selma3d.training.finetune import FinetuneConfig, finetune

    work = Path(tempfile.mkdtemp(prefix="transfer_"))
    data = args.data
    if data is None:
        from selma3d.data.synthetic import make_dataset

        data = work / "small"
        try:
            make_dataset(data, preset="small", seed=0, shift=True)
        except TypeError:  # synth without --shift
            make_dataset(data, preset="small", seed=0)
    dataset = load_dataset(data)
    kind = dataset.type_of(args.structure)
    options = dict(data=str(data), out=str(args.out or work / "run"), model="unet3d",
                   model_options={"features": [8, 16, 32]}, max_steps=args.steps, batch_size=2,
                   patch_size=(32, 32, 32), seed=args.seed, structures=[args.structure], val_fraction=0.2,
                   checkpoint_every=max(50, args.steps // 4), progress=False, num_workers=0, augment=args.augment)
    if args.loss:
        options["loss"] = args.loss
    config = FinetuneConfig(**options)
    start = time.perf_counter()
    if args.normalization_floor is not None:
        import selma3d.training.finetune.run as ft_run
        from selma3d.data.normalize import Normalization

        floor = args.normalization_floor or None
        ft_run.normalization_for = lambda config, plan=None: Normalization(noise_floor=floor)
    run_dir = finetune(config)
    train_s = time.perf_counter() - start
    run = load_run(run_dir)

    tests: dict[str, list] = {}
    for split in ("final_test", "shifted_test"):
        cases = [c for c in dataset.annotated_cases(split=split) if dataset.type_of(c.structure) == kind]
        if cases:
            tests[split] = [(c.case, read_nifti(c.image).array, read_nifti(c.label).array) for c in cases]
    tests["ood"] = [(f"ood_{kind}_{i}", *ood_case(kind, (96, 96, 96), seed=1000 + i)) for i in range(args.ood_cases)]

    rows = []
    for test, cases in tests.items():
        per_arm: dict[str, list] = {"model": [], "otsu": [], "best threshold": []}
        for _name, image, label in cases:
            pred = run.predict(image)
            per_arm["model"].append(score(kind, label, pred))
            per_arm["otsu"].append(score(kind, label, otsu_mask(image)))
            per_arm["best threshold"].append({"dice": best_threshold_dice(image.astype(np.float32), label)})
        for arm, scores in per_arm.items():
            row = {"test": test, "cases": len(cases), "arm": arm}
            for key in scores[0]:
                row[key] = float(np.mean([s[key] for s in scores]))
            rows.append(row)
    print(f"trained {args.structure} ({kind}), {args.steps} steps in {train_s:.0f} s; run {run_dir}")
    print("| test | cases | arm | Dice | clDice |\n|---|---|---|---|---|")
    for r in rows:
        cl = f"{r['cldice']:.3f}" if "cldice" in r else ""
        print(f"| {r['test']} | {r['cases']} | {r['arm']} | {r['dice']:.3f} | {cl} |")
    (work / "transfer.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
