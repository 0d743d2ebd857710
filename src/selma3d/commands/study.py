"""``selma3d study``: does self-supervised pretraining pay, and at which label budget?"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from ..ssl.registry import METHODS, method_names
from .config import config_option
from ..utils.triples import parse_triple
from .options import parse_options

#: the gpu preset's backbone per method: unet3d where the method works with it, else its own
_GPU_BACKBONES = ", ".join(f"{name} on {'unet3d' if 'unet3d' in spec.models else spec.default_model}"
                           for name, spec in METHODS.items())

HELP = "\n\n".join([
    "Pretrained vs from-scratch finetuning over finetuning modes, label budgets and seeds (the SELMA3D "
    "paper's Table 6 for any dataset), in one command.",
    "Arms: scratch and each --methods SSL method (pretrained once on DATA's unannotated volumes, then "
    "reused), crossed with --modes (full: whole network; frozen: frozen encoder, trained decoder; linear: "
    "one 1x1x1 conv on the frozen encoder's multi-scale features) and --labels (training patches per "
    "structure: the first k of a seeded permutation, the same in every arm of a seed), over --seeds. The "
    "scratch arm of frozen/linear is a random frozen encoder. All arms share steps, batch, crop size and "
    "learning rate; no validation split, final weights.",
    "A model trained on a structure is scored on every test-split case (preliminary_test, final_test, "
    "shifted_test, ...) of the same type: cfos → cfos (spot: Dice, β0 error), vessel → microglia (tree: "
    "Dice, clDice, β0, β1 errors), next to an Otsu threshold of the raw image.",
    "STUDY/ gets results.csv/json (every arm × case), summary.json, comparisons.csv (paired difference to "
    "scratch with a 95 % t-interval over seeds, and a verdict), curves_<structure>.png and index.html. "
    "Rerunning continues a killed study with the arms (and pretraining) not yet done.",
    "Presets (explicit options override them):",
    "tiny: seconds, for tests. unet3d [4,8,16], 16³ crops, 4 steps, byol, full, labels 1,all, seeds 0,1.",
    "cpu: 14 min on 2 idle cores on `synth --preset small` (BENCHMARKS.md). unet3d [8,16,32], 32³ crops, "
    "100 steps (batch 2); byol + inpainting pretrained 200 steps (batch 4); mode full; labels 1,4,all; seeds 0,1. "
    "Every other method runs at the same scale with --methods (small vit3d for dino, attunet2d [8,16,32] "
    "for simclr).",
    f"gpu: one real GPU. Every SSL method: {_GPU_BACKBONES} (unet3d [32,64,128,256]), "
    "each architecture with its own scratch arms; 64³ crops, 2000 steps (batch 4); pretraining "
    "20000 steps (batch 8); modes full,frozen,linear; labels 1,2,4,all; seeds 0,1,2.",
])


def register(app: typer.Typer) -> None:
    @app.command("study", help=HELP)
    def study(
        ctx: typer.Context,
        config_file: Optional[Path] = config_option("study"),
        data: Path = typer.Option(..., "--data", help="Dataset folder (unannotated/ for pretraining, "
                                  "annotated/train for finetuning, the other annotated splits for testing)."),
        out: Path = typer.Option(..., "--out", help="Study folder (created, or continued when rerun)."),
        preset: str = typer.Option("cpu", "--preset", help="tiny | cpu | gpu (see above)."),
        methods: Optional[str] = typer.Option(None, "--methods", help="SSL methods, comma-separated "
                                              f"({', '.join(method_names())})."),
        modes: Optional[str] = typer.Option(None, "--modes", help="Finetuning modes: full,frozen,linear."),
        labels: Optional[str] = typer.Option(None, "--labels", help="Label budgets: training patches per "
                                             "structure, comma-separated; 'all' for every patch (e.g. 1,2,4,all)."),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds, comma-separated (e.g. 0,1,2)."),
        structures: str = typer.Option("cfos,vessel", "--structures", help="Structures to train on; each is "
                                       "tested on every test case of its type."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Finetuning steps per arm."),
        pretrain_steps: Optional[int] = typer.Option(None, "--pretrain-steps", help="Pretraining steps per method."),
        patch_size: Optional[str] = typer.Option(None, "--patch-size", help="Crop size N (finetuning and "
                                                 "pretraining; a study's crops are cubes, so Z,Y,X must be N,N,N)."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Finetuning batch size."),
        model: Optional[str] = typer.Option(None, "--model", help="Backbone of scratch arms and of every method "
                                            "that supports it (default unet3d)."),
        model_option: Optional[List[str]] = typer.Option(None, "--model-option", help="Option key=value of "
                                                         "--model (repeatable), e.g. features=[8,16,32]."),
        encoder: Optional[List[str]] = typer.Option(None, "--encoder", help="METHOD=PATH: reuse an existing "
                                                    "encoder.pt for METHOD instead of pretraining (repeatable)."),
        num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Data-loading worker processes."),
        quiet: bool = typer.Option(False, "--quiet", help="Only the final summary, no per-arm progress lines."),
    ) -> None:
        from ..errors import InputError
        from ..paths import check_input, check_output
        from ..study.plan import StudyPlan, parse_labels, parse_list, parse_seeds
        from ..study.report import text_summary, write_report
        from ..study.runner import run_study

        encoders = {}
        for item in encoder or []:
            method, sep, path = item.partition("=")
            if not sep or not method.strip() or not path.strip():
                raise InputError(f"--encoder expects METHOD=PATH, got {item!r}")
            encoders[method.strip()] = str(check_input(Path(path.strip()), "file", what=f"--encoder {method}"))
        check_input(data, "dir", what="dataset")
        check_output(out, "dir", inputs=[data, *encoders.values()], what="study folder")
        overrides = dict(methods=parse_list(methods, "--methods"), modes=parse_list(modes, "--modes"),
                         labels=parse_labels(labels), seeds=parse_seeds(seeds),
                         structures=parse_list(structures, "--structures"), steps=steps,
                         pretrain_steps=pretrain_steps, patch_size=_cube(patch_size), batch_size=batch_size,
                         model=model, num_workers=num_workers, encoders=encoders or None)
        plan = StudyPlan.from_preset(str(data), str(out), preset, **overrides)
        if model_option:
            plan.model_options = {**plan.model_options, plan.model: parse_options(model_option, "--model-option")}
        from .config import recording

        with recording(out, "study", out / "plan.json", lambda: recorded_options(ctx.command, out)):
            try:
                result = run_study(plan, log=(lambda line: None) if quiet else None)
            finally:
                record_arm_configs(ctx, out)
        analysis = write_report(out, result.rows, title=f"selma3d study of {data}")
        typer.echo(text_summary(analysis))
        typer.echo(f"study written to {out} (open {out / 'index.html'}); "
                   f"{len(result.ran)} arms run now, {len(result.skipped)} found finished")


def record_arm_configs(ctx: typer.Context, out: Path) -> None:
    """``runs/<arm>/config.yaml`` for every arm run: the `selma3d finetune` options that repeat it."""
    from ..study.runner import RUNS_DIR
    from .config import CONFIG_FILE, write_run_config
    from .finetune import recorded_options as finetune_options

    group = ctx.parent.command if ctx.parent is not None else None
    finetune_command = group.get_command(ctx.parent, "finetune") if hasattr(group, "get_command") else None
    if finetune_command is None or int(os.environ.get("RANK", 0)) != 0:
        return
    for run_dir in sorted(p for p in (out / RUNS_DIR).glob("*") if p.is_dir()):
        options = finetune_options(finetune_command, run_dir)
        if options is not None and not (run_dir / CONFIG_FILE).is_file():
            write_run_config(run_dir, "finetune", options)


def _cube(text: Optional[str]) -> Optional[int]:
    """``--patch-size`` in the format of every command, as the one edge a study's cubic crops have."""
    if text is None:
        return None
    sizes = parse_triple(text, "--patch-size")
    if len(set(sizes)) != 1:
        from ..errors import InputError

        raise InputError(f"--patch-size {text}: a study trains on cubic crops; give one size N")
    return sizes[0]


def recorded_options(command, out: Path) -> Optional[dict]:
    """The study options of the study in ``out``, from the settings its plan.json records."""
    from ..study.plan import load_plan
    from .config import run_options

    plan = load_plan(out)
    if not plan:
        return None
    options = run_options(command, plan)
    options["labels"] = ["all" if k is None else k for k in plan.get("labels", [])]
    options["model_option"] = (plan.get("model_options") or {}).get(plan.get("model"), {})
    options["encoder"] = {k: str(Path(v).resolve()) for k, v in (plan.get("encoders") or {}).items()}
    return options
