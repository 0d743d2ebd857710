"""``selma3d finetune``: supervised finetuning of a segmentation network (or the structure router)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError
from ..utils.triples import parse_triple
from .config import config_option


def _patch_size(first: Optional[str], rest: list[str]) -> Optional[list[int]]:
    """``--patch-size 32``, ``--patch-size 16,32,32`` or ``--patch-size 16 32 32`` (the command has
    no positional arguments, so trailing numbers belong to it)."""
    if first is None:
        if rest:
            raise InputError(f"unexpected arguments: {' '.join(rest)}")
        return None
    return list(parse_triple(" ".join([first, *rest]), "--patch-size"))


def register(app: typer.Typer) -> None:
    @app.command("finetune", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
    def finetune(
        ctx: typer.Context,
        config_file: Optional[Path] = config_option("finetune"),
        data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder (annotated/train is used)."),
        out: Path = typer.Option(..., "--out", help="Run folder to create (or continue with --resume)."),
        model: Optional[str] = typer.Option(None, "--model", help="unet3d | swinunetr | vit3d | attunet2d "
                                            "(default unet3d, or the one the --pretrained checkpoint names)."),
        model_option: List[str] = typer.Option([], "--model-option", help="Model option key=value, repeatable "
                                               "(e.g. features=[16,32,64,128])."),
        pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="Encoder checkpoint (encoder.pt) "
                                                  "from `selma3d pretrain`."),
        downsample_xy: Optional[int] = typer.Option(None, "--downsample-xy", help="Average-pool patches in xy "
                                                    "by this factor (default: the --pretrained encoder's, else 1; "
                                                    "predict applies the same)."),
        freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Train only the decoder; the "
                                            "encoder's weights and normalization statistics stay fixed."),
        linear_probe: bool = typer.Option(False, "--linear-probe", help="Train only one 1x1x1 convolution on "
                                          "the frozen encoder's multi-scale features (a linear probe of --pretrained)."),
        schedule: Optional[str] = typer.Option(None, "--schedule", help="constant (one learning rate, warmup "
                                               "then cosine) | sawtooth (decoder warm-up on a frozen encoder, then the "
                                               "encoder at --encoder-lr-scale x the rate; default with --pretrained)."),
        encoder_lr_scale: float = typer.Option(0.1, "--encoder-lr-scale", help="sawtooth: encoder learning "
                                               "rate relative to --lr."),
        decoder_warmup_fraction: float = typer.Option(0.2, "--decoder-warmup-fraction", help="sawtooth: share "
                                                      "of the steps with the encoder frozen."),
        loss: str = typer.Option("dicece", "--loss", help="dice | dicece | dicefocal | dice+boundary | dice+cldice | "
                                 "dice+skelrec | dicece+skelrec (skeleton recall, Kirchhoff et al. 2024; skeletons "
                                 "computed in the loader)"),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Training steps (default 1000)."),
        batch_size: int = typer.Option(2, "--batch-size"),
        lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW, warmup then cosine)."),
        weight_decay: float = typer.Option(1e-5, "--weight-decay", help="AdamW weight decay."),
        warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Learning-rate warmup steps "
                                                   "(default 5 % of --max-steps)."),
        patch_size: Optional[str] = typer.Option(None, "--patch-size", help="Crop size: N or Z,Y,X (default 64)."),
        seed: int = typer.Option(0, "--seed"),
        structures: Optional[str] = typer.Option(None, "--structures", help="Comma-separated structures to "
                                                 "train on (default: all annotated ones)."),
        labels: Optional[int] = typer.Option(None, "--labels", help="Annotated training patches per structure "
                                             "(the first N of a permutation fixed by --seed; default: all): a label "
                                             "budget, as the study's arms use."),
        val_fraction: float = typer.Option(0.2, "--val-fraction", help="Held-out share of each structure's patches."),
        folds: Optional[int] = typer.Option(None, "--folds", help="k-fold split (stratified by structure)..."),
        fold: Optional[int] = typer.Option(None, "--fold", help="...and the fold held out (0-based)."),
        checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Checkpoint (and validate) every N steps."),
        val_every: Optional[int] = typer.Option(None, "--val-every", help="Validate every N steps "
                                                "(default: --checkpoint-every)."),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="Probability threshold stored for predict (default: the best on the validation patches, or on the training patches when there are none)."),
        augment: str = typer.Option("default", "--augment", help="Augmentation strength: none | light | default | strong."),
        num_workers: int = typer.Option(1, "--num-workers", help="Data-loading worker processes (0: load in the training process)."),
        accelerator: str = typer.Option("auto", "--accelerator", help="Lightning accelerator: auto | cpu | gpu."),
        devices: str = typer.Option("1", "--devices", help="Lightning devices (e.g. 1, 4 or auto; >1 uses DDP)."),
        precision: str = typer.Option("32-true", "--precision", help="Lightning precision, e.g. 16-mixed, bf16-mixed."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint "
                                    "with its saved settings (only --max-steps may be raised)."),
        router: bool = typer.Option(False, "--router", help="Train the spot/tree structure router instead "
                                    "of a segmentation model on the training patches of all (or the --structures) "
                                    "structures; writes OUT/router.pt and OUT/router.json (held-out accuracy). "
                                    "Its crop size is the first --patch-size value (default 32)."),
        router_steps: int = typer.Option(200, "--router-steps", help="Training steps of the router."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ):
        """Finetune a segmentation network on annotated patches; RUN/ then holds all `predict` needs."""
        from ..paths import check_input, check_output
        from .options import check_device

        sizes = _patch_size(patch_size, list(ctx.args))
        names = [s.strip() for s in structures.split(",")] if structures else None
        if freeze_encoder and pretrained is None and not resume:
            raise InputError("--freeze-encoder needs --pretrained ENCODER.pt: freezing a randomly "
                             "initialized encoder would train the decoder on noise features")
        if data is not None:
            check_input(data, "dir", "--data folder")
        if pretrained is not None:
            check_input(pretrained, "file", "--pretrained checkpoint")
        check_output(out, "dir", inputs=[data, pretrained])
        check_device(accelerator, "--accelerator")
        if router:
            if data is None:
                raise InputError("--data is required")
            from ..training.router import finetune_router
            from .config import recording, run_options

            crop = (sizes or [32])[0]
            used = {"data": data, "router": True, "structures": structures, "router_steps": router_steps,
                    "patch_size": str(crop), "val_fraction": val_fraction, "seed": seed, "quiet": quiet}
            with recording(out, "finetune", out / "router.json", lambda: run_options(ctx.command, used)):
                path = finetune_router(data, out, structures=names, steps=router_steps, crop_size=crop,
                                       val_fraction=val_fraction, seed=seed, progress=not quiet)
            typer.echo(f"router written to {path}")
            return

        from ..training.finetune import FinetuneConfig, finetune as run_finetune, parse_model_options, resume_config

        if resume:
            config = resume_config(out, max_steps=max_steps)
            config.progress = not quiet
        else:
            if data is None:
                raise InputError("--data is required (unless --resume)")
            config = FinetuneConfig(
                data=str(data), out=str(out), model=model, model_options=parse_model_options(model_option),
                pretrained=str(pretrained) if pretrained else None, downsample_xy=downsample_xy,
                freeze_encoder=freeze_encoder, linear_probe=linear_probe, labels=labels, loss=loss,
                schedule=schedule, encoder_lr_scale=encoder_lr_scale, decoder_warmup_fraction=decoder_warmup_fraction,
                max_steps=max_steps if max_steps is not None else 1000, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, warmup_steps=warmup_steps,
                patch_size=tuple(sizes) if sizes else (64, 64, 64), seed=seed, structures=names,
                val_fraction=val_fraction, folds=folds, fold=fold, checkpoint_every=checkpoint_every,
                val_every=val_every, threshold=threshold, augment=augment, num_workers=num_workers, accelerator=accelerator,
                devices=int(devices) if devices.isdigit() else devices, precision=precision, progress=not quiet)
        from ..inference.predict import RUN_FILE
        from ..paths import no_empty_output_on_failure
        from .config import recording

        record = recording(out, "finetune", out / RUN_FILE, lambda: recorded_options(ctx.command, out))
        with no_empty_output_on_failure(out), record:
            run = run_finetune(config, resume=resume)
        typer.echo(f"finetuned model written to {run}")


def recorded_options(command, out: Path) -> Optional[dict]:
    """The finetune options of the run in ``out``, from the settings its run.json records."""
    from ..inference.predict import RUN_FILE
    from .config import read_json, run_options

    training = (read_json(out / RUN_FILE) or {}).get("training")
    if not training:
        return None
    options = run_options(command, training, rename={"model_option": "model_options"})
    options["quiet"] = not training.get("progress", True)
    return options
