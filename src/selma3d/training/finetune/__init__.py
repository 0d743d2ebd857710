"""Supervised finetuning with PyTorch Lightning: the module, its callbacks and the run folder.

``RUN/`` (the ``--out`` folder) ends up holding everything ``selma3d predict`` needs:

* ``model.pt``: weights of the best validation step (by mean Dice) + the model config;
* ``run.json``: model options, patch size, normalization, threshold, xy downsampling (the
  ``--pretrained`` encoder's adaptation plan unless ``--downsample-xy`` says otherwise),
  structures and their type, the training arguments, the best step and score, library versions
  (the contract: :mod:`selma3d.artifacts.run`);
* ``curves.csv`` / ``curves.png``: training loss, learning rate and validation metrics per step;
* ``checkpoints/last.ckpt``: the full training state (weights, optimizer, scheduler, step,
  curves with the validation values, best score and step, RNG states) written atomically every
  ``checkpoint_every`` steps, once that step's validation is done, for ``--resume``.

A run killed (even ``kill -9``) and resumed ends bit-identical to the uninterrupted one: the
crops of a step depend on (seed, step) only (:class:`~selma3d.training.finetune_data.IndexedCrops`)
and so does every other random draw of the step (:mod:`selma3d.training.determinism`).

One job per module: :mod:`.config` (the options and their checks), :mod:`.module` (the
LightningModule and its validation metrics), :mod:`.callbacks` (checkpoints, curves, the best
model), :mod:`.threshold` (the threshold calibration), :mod:`.pretrained` (applying a
``--pretrained`` encoder and its adaptation plan) and :mod:`.run` (the driver and ``run.json``).
The public names are re-exported here.
"""

from .callbacks import (CHECKPOINT_DIR, CURVES_CSV, CURVES_PNG, LAST_CHECKPOINT, BestModelKeeper, CurvesWriter,
                        StepCheckpoint, plot_curves, write_curves)
from .config import (DEFAULT_MODEL, DEFAULT_THRESHOLD, SCHEDULES, FinetuneConfig, check_patch_size,
                     parse_model_options, parse_patch_size)
from .module import LR_FLOOR, SegmentationModule, summarize_validation, validation_metrics
from .pretrained import (adaptation_plan, build_network, downsample_for, load_pretrained, normalization_for,
                         pool_cases)
from .run import finetune, resume_config, run_info
from .threshold import THRESHOLD_GRID, THRESHOLD_TOLERANCE, calibrate_threshold, choose_threshold

__all__ = [
    "CHECKPOINT_DIR", "CURVES_CSV", "CURVES_PNG", "DEFAULT_MODEL", "DEFAULT_THRESHOLD", "LAST_CHECKPOINT",
    "LR_FLOOR", "SCHEDULES", "THRESHOLD_GRID", "THRESHOLD_TOLERANCE", "BestModelKeeper", "CurvesWriter",
    "FinetuneConfig", "SegmentationModule", "StepCheckpoint", "adaptation_plan", "build_network",
    "calibrate_threshold", "check_patch_size", "choose_threshold", "downsample_for", "finetune",
    "load_pretrained", "normalization_for", "parse_model_options", "parse_patch_size", "plot_curves",
    "pool_cases", "resume_config", "run_info", "summarize_validation", "validation_metrics", "write_curves",
]
