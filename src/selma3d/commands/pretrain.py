"""``selma3d pretrain``: self-supervised pretraining on a dataset's unannotated volumes."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..ssl.registry import default_models, method_names, method_spec
from ..utils.triples import parse_triple
from .config import config_option
from .options import parse_options


#: command-line parameter → PretrainConfig field, where the names differ
CONFIG_FIELDS = {"model_option": "model_options", "method_option": "method_options", "structure": "structures"}
PRETRAIN_FIELDS = ("data", "model", "model_options", "method_options", "structures", "patch_size", "batch_size",
                   "lr", "weight_decay", "warmup_steps", "seed", "downsample_xy", "fg_threshold", "fg_fraction")


def _structure_list(structures: str | None, old: list[str] | None) -> list[str] | None:
    """``--structures a,b`` (and the old repeatable ``--structure a --structure b``)."""
    names = [n.strip() for n in (structures or "").split(",") if n.strip()] + list(old or [])
    return list(dict.fromkeys(names)) or None


def register(app: typer.Typer) -> None:
    @app.command("pretrain")
    def pretrain(
        ctx: typer.Context,
        config_file: Optional[Path] = config_option("pretrain"),
        method: str = typer.Option(..., help=" | ".join(method_names())),
        data: Path = typer.Option(..., help="dataset folder (its unannotated/ volumes are used)"),
        out: Path = typer.Option(..., help="run folder (checkpoints, loss curve, encoder.pt)"),
        model: Optional[str] = typer.Option(None, help="backbone (default per method: "
                                            + ", ".join(f"{k}→{v}" for k, v in default_models().items()) + ")"),
        model_option: Optional[List[str]] = typer.Option(None, "--model-option",
                                                         help="backbone option key=value (repeatable)"),
        method_option: Optional[List[str]] = typer.Option(None, "--method-option",
                                                          help="method option key=value (repeatable)"),
        structures: Optional[str] = typer.Option(None, "--structures",
                                                 help="only volumes of these structures (comma-separated), as in "
                                                      "finetune and study"),
        structure: Optional[List[str]] = typer.Option(None, "--structure", hidden=True,
                                                      help="old spelling of --structures (repeatable)"),
        max_steps: Optional[int] = typer.Option(None, help="optimizer steps in total [1000]"),
        patch_size: str = typer.Option("64", help="patch size N or Z,Y,X (after downsampling; a 2D "
                                        "method such as simclr samples one Y,X slice of it)"),
        batch_size: int = typer.Option(4),
        lr: float = typer.Option(1e-4, help="peak AdamW learning rate"),
        weight_decay: float = typer.Option(0.05),
        warmup_steps: Optional[int] = typer.Option(None, help="[max_steps/10, at most 500]"),
        seed: int = typer.Option(0),
        num_workers: Optional[int] = typer.Option(None, help="DataLoader workers [2]"),
        downsample_xy: int = typer.Option(1, help="average-pool xy by this factor (the teams used 3 or 4)"),
        fg_threshold: float = typer.Option(500.0, help="foreground: raw intensity above this ..."),
        fg_fraction: float = typer.Option(0.1, help="... in at least this fraction of voxels (0: off)"),
        checkpoint_every: Optional[int] = typer.Option(None, help="steps between checkpoints [100]"),
        resume: bool = typer.Option(False, "--resume", help="continue the run in --out at its saved step"),
        devices: Optional[str] = typer.Option(None, help="devices per node: a number or 'auto' [1]"),
        num_nodes: Optional[int] = typer.Option(None, help="nodes for multi-node DDP [1]"),
        accelerator: Optional[str] = typer.Option(None, help="auto | cpu | gpu [auto]"),
        strategy: Optional[str] = typer.Option(None, help="auto | ddp | ddp_spawn [auto]"),
        precision: Optional[str] = typer.Option(None, help="32-true | 16-mixed | bf16-mixed [32-true]"),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar or progress lines."),
        progress: bool = typer.Option(True, "--progress/--no-progress", hidden=True, help="old spelling of --quiet"),
        health_every: Optional[int] = typer.Option(None, help="SSL health (spread, rank, probe) every N steps; 0: off [250]"),
    ) -> None:
        """Self-supervised pretraining; writes RUN/encoder.pt for `selma3d finetune --pretrained`."""
        method_spec(method)  # unknown name → one-line error listing the methods
        from ..paths import check_input, check_output
        from .config import given_options
        from .options import check_device

        check_input(data, "dir", "--data folder")
        check_output(out, "dir", inputs=[data])
        check_device(accelerator, "--accelerator")
        runtime = {"max_steps": max_steps, "num_workers": num_workers, "checkpoint_every": checkpoint_every,
                   "num_nodes": num_nodes, "accelerator": accelerator, "strategy": strategy,
                   "precision": precision, "health_every": health_every}
        if devices is not None:
            runtime["devices"] = int(devices) if devices.isdigit() else devices
        given = {k for k, v in runtime.items() if v is not None} | {"progress"}
        if resume:
            given.add("method")
            # the training options this call sets (command line or --config), so a resume can refuse changed ones
            given |= {CONFIG_FIELDS.get(name, name) for name in given_options(ctx)
                      if CONFIG_FIELDS.get(name, name) in PRETRAIN_FIELDS}

        from ..training.pretrain import CONFIG_NAME, PretrainConfig, run_pretraining

        config = PretrainConfig(
            method=method, data=str(data), out=str(out), model=model,
            model_options=parse_options(model_option, "--model-option"),
            method_options=parse_options(method_option, "--method-option"),
            structures=_structure_list(structures, structure),
            patch_size=parse_triple(patch_size, "--patch-size"), batch_size=batch_size, lr=lr,
            weight_decay=weight_decay, warmup_steps=warmup_steps, seed=seed,
            downsample_xy=downsample_xy, fg_threshold=fg_threshold if fg_fraction > 0 else None,
            fg_fraction=fg_fraction, progress=progress and not quiet,
            **{k: v for k, v in runtime.items() if v is not None})
        from ..paths import no_empty_output_on_failure
        from .config import recording

        record = recording(out, "pretrain", out / CONFIG_NAME, lambda: recorded_options(ctx.command, out))
        with no_empty_output_on_failure(out), record:
            encoder = run_pretraining(config, resume=resume, given=given)
        if encoder.is_file():
            typer.echo(f"encoder: {encoder}")


def recorded_options(command, out: Path) -> Optional[dict]:
    """The pretrain options of the run in ``out``, from the settings its config.json records."""
    from ..training.pretrain import CONFIG_NAME
    from .config import read_json, run_options

    saved = read_json(out / CONFIG_NAME)
    if not saved:
        return None
    options = run_options(command, saved, rename=CONFIG_FIELDS)
    options["quiet"] = not saved.get("progress", True)
    return options
