"""``selma3d demo OUT``: the whole SELMA3D pipeline on synthetic data, command by command.

It runs the same ``selma3d`` sub-commands a user would type (printed before each step), so
the demo doubles as a tutorial: synthesize → convert → pretrain (BYOL) → finetune a spot-like
model (c-Fos) and a tree-like model (vessels) from the pretrained encoder → predict the test
splits, including microglia, a structure never annotated for training → evaluate exactly as
the challenge scores → a small `selma3d study` (the same encoder against from-scratch training,
over label budgets and seeds: did SSL help here?) → HTML report with both.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import typer

from ..errors import Selma3dError

#: Step sizes per mode: "quick" exercises every stage in about a minute (used by the tests);
#: "standard" trains long enough on the `small` preset for meaningful segmentations.
MODES = {
    "quick": dict(preset="tiny", pretrain_steps=4, finetune_steps=6, patch=16, batch=2, features="[4,8,16]",
                  study=dict(preset="tiny", labels="1,all", seeds="0,1", structures="cfos", steps=6)),
    "standard": dict(preset="small", pretrain_steps=60, finetune_steps=150, patch=32, batch=2, features="[8,16,32]",
                     study=dict(preset="cpu", labels="1,all", seeds="0,1", structures="cfos,vessel", steps=100)),
}


def run_step(args: list[str], log) -> None:
    cmd = [sys.executable, "-m", "selma3d", *args]
    typer.secho("$ selma3d " + " ".join(shlex.quote(a) for a in args), fg=typer.colors.CYAN)
    log.write("$ selma3d " + " ".join(shlex.quote(a) for a in args) + "\n")
    log.flush()
    start = time.perf_counter()
    result = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True)
    if result.stderr:
        sys.stderr.write(result.stderr)
        log.write(result.stderr)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise Selma3dError(f"demo step `selma3d {args[0]}` failed: {last}")
    log.write(f"  ({time.perf_counter() - start:.1f} s)\n")


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Argument(..., metavar="OUT", help="Folder for everything the demo writes."),
        mode: str = typer.Option("standard", "--mode", help="standard (minutes) or quick (about a minute)."),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Run the end-to-end pipeline on a synthetic SELMA3D-like dataset."""
        if mode not in MODES:
            raise Selma3dError(f"unknown demo mode {mode!r}; choose one of {', '.join(MODES)}")
        m = MODES[mode]
        from ..paths import check_output

        check_output(out, "dir")
        out.mkdir(parents=True, exist_ok=True)
        data = out / "data"
        patch = str(m["patch"])
        start = time.perf_counter()
        with open(out / "demo_commands.log", "a") as log:
            if not (data / "dataset.json").is_file():
                run_step(["synth", str(data), "--preset", m["preset"], "--seed", str(seed)], log)
            vessel_volumes = sorted((data / "unannotated" / "vessel").iterdir())
            run_step(["convert", str(vessel_volumes[0]), str(out / "vessel_volume.zarr"), "--overwrite"], log)
            run_step(["pretrain", "--method", "byol", "--data", str(data), "--out", str(out / "pretrain"),
                      "--model-option", f"features={m['features']}",
                      "--max-steps", str(m["pretrain_steps"]), "--patch-size", patch,
                      "--batch-size", str(m["batch"]), "--seed", str(seed)], log)
            encoder = out / "pretrain" / "encoder.pt"
            runs = {"spot": ("cfos", out / "finetune_spot"), "tree": ("vessel", out / "finetune_tree")}
            for kind, (structure, run) in runs.items():
                run_step(["finetune", "--data", str(data), "--out", str(run), "--pretrained", str(encoder),
                          "--structures", structure, "--max-steps", str(m["finetune_steps"]),
                          "--patch-size", patch, "--batch-size", str(m["batch"]), "--seed", str(seed)], log)
            split = "final_test"
            test_dir = data / "annotated" / split
            pred = out / "predictions"
            for structure, kind in (("cfos", "spot"), ("microglia", "tree")):
                run_step(["predict", "--model", str(runs[kind][1]), str(test_dir / structure),
                          str(pred / structure)], log)
            metrics = out / "metrics.json"
            run_step(["evaluate", str(pred), str(test_dir), "--out", str(metrics),
                      "--csv", str(out / "metrics.csv")], log)
            # Did SSL help here? The same BYOL encoder against scratch, paired by seed and test case.
            st = m["study"]
            run_step(["study", "--data", str(data), "--out", str(out / "study"), "--preset", st["preset"],
                      "--methods", "byol", "--encoder", f"byol={encoder}", "--modes", "full",
                      "--labels", st["labels"], "--seeds", st["seeds"], "--structures", st["structures"],
                      "--steps", str(st["steps"]), "--patch-size", patch, "--batch-size", str(m["batch"]),
                      "--model-option", f"features={m['features']}"], log)
            run_step(["report", str(metrics), "--out", str(out / "report"), "--pred", str(pred),
                      "--gt", str(test_dir), "--study", str(out / "study"),
                      "--title", "selma3d demo: synthetic SELMA3D final test"], log)
        typer.secho(f"demo finished in {time.perf_counter() - start:.0f} s; open {out / 'report' / 'index.html'}",
                    fg=typer.colors.GREEN)
