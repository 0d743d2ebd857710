"""The finetuning driver: :func:`finetune` builds the network (applying a ``--pretrained``
encoder's adaptation plan), the data, the module and the callbacks, trains, and writes the run
folder's ``run.json`` (:func:`run_info`) and calibrated threshold; :func:`resume_config` reads a
run's saved configuration back for ``--resume``.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, replace
from pathlib import Path

import pytorch_lightning as pl
import torch

from ... import __version__
from ...artifacts.run import MODEL_FILE, RUN_FILE, write_run_info
from ...errors import InputError, Selma3dError
from ..checkpoint_io import AtomicCheckpointIO
from ..finetune_data import FinetuneDataModule
from ..progress import progress_display, quiet_lightning
from .callbacks import CHECKPOINT_DIR, LAST_CHECKPOINT, BestModelKeeper, CurvesWriter, StepCheckpoint
from .config import DEFAULT_THRESHOLD, FinetuneConfig, check_patch_size
from .module import SegmentationModule
from .pretrained import adaptation_plan, build_network, downsample_for, load_pretrained, normalization_for, pool_cases
from .threshold import calibrate_threshold


def _versions() -> dict:
    import monai

    return {"selma3d": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "pytorch_lightning": pl.__version__, "python": platform.python_version()}


def run_info(config: FinetuneConfig, model: torch.nn.Module, data: FinetuneDataModule, status: str,
             best: dict | None = None, downsample_xy: int = 1) -> dict:
    """``run.json`` (the contract: :mod:`selma3d.artifacts.run`)."""
    return {
        "status": status,
        "model": dict(model.config),
        "patch_size": list(config.patch_size),
        # estimated once per source (data.normalize): each whole annotated patch here, the whole
        # input file or volume in predict; never per network window or block
        "normalization": data.normalization.to_dict() | {"per": "source"},
        "threshold": config.threshold or DEFAULT_THRESHOLD,
        "overlap": config.overlap,
        "downsample_xy": int(downsample_xy),
        "structures": data.structure_names,
        "type": data.structure_type,
        "split": {"train": sorted(c.name for c in data.train_cases), "val": sorted(c.name for c in data.val_cases)},
        "training": asdict(config) | {"patch_size": list(config.patch_size),
                                      "resolved_schedule": config.resolved_schedule},
        "best": best or {},
        "versions": _versions(),
    }


def resume_config(out: str | os.PathLike, max_steps: int | None = None) -> FinetuneConfig:
    """The saved configuration of the run in ``out`` (``--max-steps`` may be raised)."""
    out = Path(out)
    info_path, ckpt = out / RUN_FILE, out / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not info_path.is_file() or not ckpt.is_file():
        raise InputError(f"--resume: {out} holds no checkpoint to resume ({CHECKPOINT_DIR}/{LAST_CHECKPOINT} missing)")
    saved = json.loads(info_path.read_text())["training"]
    saved["patch_size"] = tuple(saved["patch_size"])
    if max_steps is not None:
        saved["max_steps"] = int(max_steps)
    known = set(FinetuneConfig.__dataclass_fields__)
    return FinetuneConfig(**{k: v for k, v in saved.items() if k in known})


def finetune(config: FinetuneConfig, resume: bool = False) -> Path:
    """Train a segmentation model as ``config`` says; returns the run folder.

    With ``resume``, training continues from ``RUN/checkpoints/last.ckpt`` (step, weights,
    optimizer and scheduler state, curves, best score) up to ``config.max_steps``.
    """
    out = Path(config.out)
    ckpt_dir = out / CHECKPOINT_DIR
    last = ckpt_dir / LAST_CHECKPOINT
    if resume and not last.is_file():
        raise InputError(f"--resume: {out} holds no checkpoint to resume ({CHECKPOINT_DIR}/{LAST_CHECKPOINT} missing)")
    if not resume and ((out / MODEL_FILE).exists() or last.exists()):
        raise InputError(f"{out} already holds a finetuning run; use --resume to continue it or choose another --out")
    if not resume:  # saved absolute, so a resume from another working directory reads the same files
        config = replace(config, data=str(Path(config.data).expanduser().resolve()),
                         pretrained=str(Path(config.pretrained).expanduser().resolve()) if config.pretrained else None)
    out.mkdir(parents=True, exist_ok=True)

    pl.seed_everything(config.seed, workers=True, verbose=False)
    encoder = load_pretrained(config)  # encoder.pt, read once: the network and its adaptation plan
    plan = adaptation_plan(config, encoder)
    model = build_network(config, encoder)
    if config.linear_probe:
        from ...models.probe import LinearProbe

        model = LinearProbe.around(model)
    check_patch_size(model, config.patch_size)
    data = FinetuneDataModule(config.data, config.patch_size, structures=config.structures,
                              batch_size=config.batch_size, val_fraction=config.val_fraction,
                              folds=config.folds, fold=config.fold, seed=config.seed,
                              num_workers=config.num_workers, samples_per_epoch=config.samples_per_epoch,
                              augment_options={"strength": config.augment},
                              normalization=normalization_for(config, plan))
    data.setup("fit")
    factor = downsample_for(config, plan, echo=print if not resume else (lambda *a, **k: None))
    pool_cases(data, factor)  # the resolution the encoder learned at (its adaptation plan)
    # the tubed skeleton of each augmented crop is computed in the loader, not in the step
    data.augment_options["skeleton"] = config.loss.endswith("+skelrec")
    module = SegmentationModule(model, loss=config.loss, lr=config.lr, weight_decay=config.weight_decay,
                                warmup_steps=config.warmup, max_steps=config.max_steps,
                                freeze_encoder=config.freeze_encoder, patch_size=config.patch_size,
                                threshold=config.threshold or DEFAULT_THRESHOLD, overlap=config.overlap,
                                schedule=config.resolved_schedule, encoder_lr_scale=config.encoder_lr_scale,
                                decoder_warmup_steps=int(config.decoder_warmup_fraction * config.max_steps),
                                seed=config.seed)
    if resume:  # the crops continue where the checkpoint stopped
        from ..pretrain import checkpoint_step

        data.start_step = checkpoint_step(last)
    info = run_info(config, model, data, status="training", downsample_xy=factor)
    write_run_info(out / RUN_FILE, info)

    extra = {"patch_size": list(config.patch_size), "threshold": config.threshold or DEFAULT_THRESHOLD,
             "downsample_xy": factor}
    keeper = BestModelKeeper(out, extra)
    curves = CurvesWriter(out, log_every=max(1, min(10, config.max_steps // 50 or 1)))
    has_val = bool(data.val_cases)
    periodic = StepCheckpoint(last, config.checkpoint_every,
                              validates=lambda step: has_val and step % config.validate_every == 0)
    data.keep_labels(config.labels)  # the label budget, before fit builds the loaders (run.json lists it at the end)
    bar, progress_lines = progress_display(config.progress, "finetune")
    with quiet_lightning():
        trainer = pl.Trainer(
            max_steps=config.max_steps, accelerator=config.accelerator, devices=config.devices,
            precision=config.precision, logger=False, callbacks=[*progress_lines, keeper, curves, periodic],  # periodic last: it saves their state
            plugins=[AtomicCheckpointIO()], check_val_every_n_epoch=None,
            val_check_interval=config.validate_every if has_val else None,
            limit_val_batches=1.0 if has_val else 0, num_sanity_val_steps=0,
            enable_checkpointing=False,  # StepCheckpoint writes last.ckpt
            enable_progress_bar=bar, enable_model_summary=False, log_every_n_steps=1,
            default_root_dir=str(out),
        )
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
        if trainer.interrupted:
            raise Selma3dError(f"training interrupted at step {trainer.global_step}; "
                               f"continue with: selma3d finetune --out {out} --resume")
        # The last step is always checkpointed and validated, so resume/best see the final state.
        trainer.save_checkpoint(last)
        if has_val and trainer.global_step % config.validate_every:
            trainer.validate(module, datamodule=data, verbose=False)  # runs the keeper and curves callbacks
            trainer.save_checkpoint(last)
    if not trainer.is_global_zero:
        return out
    if not has_val:
        keeper.save(module, trainer.global_step, None)
        keeper.best_step = trainer.global_step
    curves.write()
    best = {"step": keeper.best_step, "val_dice": keeper.best_score}
    info = run_info(config, model, data, status="finished", best=best,
                    downsample_xy=factor) | {"steps_done": int(trainer.global_step)}
    write_run_info(out / RUN_FILE, info)
    if config.threshold is None:
        # Held-out patches when there are any; else the training patches themselves (in-sample, so
        # optimistic, but in the study arms the in-sample choice was the best test threshold of the
        # grid: BENCHMARKS.md, "Study arms with a calibrated threshold").
        held_out = bool(data.val_cases)
        calibration = calibrate_threshold(out, data.val_cases if held_out else data.train_cases)
        calibration["on"] = "validation" if held_out else "train"
        write_run_info(out / RUN_FILE, info | {"threshold": calibration["threshold"],
                                               "threshold_calibration": calibration})
    return out
