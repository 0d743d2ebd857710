"""Self-supervised pretraining with PyTorch Lightning: an SSL method fed by the patch sampler.

``run_pretraining(config)`` builds the method (``selma3d.ssl``) and an endless
:class:`~selma3d.data.sampling.PatchDataset` over the dataset's unannotated volumes, trains with
AdamW and a linear-warmup + cosine learning-rate schedule, and writes into the run folder:

- ``config.json``: every option (a resumed run reuses it),
- ``checkpoints/last.ckpt``: full state (weights, EMA targets/teacher, method buffers such as
  DINO's centers, optimizer, schedule, step, loss and health history, RNG states), written
  atomically every ``checkpoint_every`` steps and at the end,
- ``loss.csv`` / ``loss.png``: the loss curve (every logged term),
- ``encoder.pt``: the encoder checkpoint (:func:`selma3d.artifacts.encoder.save_encoder`) naming the model,
  its options, the method and the normalization, so finetuning needs no further flags,
- ``health.csv`` / ``health.png``: SSL health every ``health_every`` steps (embedding spread,
  effective rank, linear-probe Dice; :mod:`selma3d.training.ssl_health`),
- ``summary.json``: steps, final loss and the health verdict (``"collapsed"`` and its step).

A run killed (even ``kill -9``) and continued with ``resume=True`` ends bit-identical to the
uninterrupted run: the randomness of step ``s`` depends on (seed, rank, s) only
(:mod:`selma3d.training.determinism`, and the sampler's per-sample seeds), whatever the number
of loader workers.

Multi-GPU and multi-node training go through Lightning DDP (``devices``, ``num_nodes``,
``strategy="ddp"``; on CPU the gloo backend).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..data.normalize import DEFAULT_NORMALIZATION
from ..errors import Selma3dError
from ..utils.atomic import atomic_path, write_json
from ..utils.schedules import warmup_cosine
from .checkpoint_io import AtomicCheckpointIO
from .determinism import kill_point, rng_state, seed_step, set_rng_state
from .progress import progress_display, quiet_lightning

CHECKPOINT_NAME = "last.ckpt"
CONFIG_NAME = "config.json"
ENCODER_NAME = "encoder.pt"

#: options a resumed run may change; everything else comes from the saved config.json
RUNTIME_OPTIONS = ("max_steps", "num_workers", "devices", "num_nodes", "accelerator", "strategy",
                   "checkpoint_every", "progress", "precision", "health_every")
SUMMARY_NAME = "summary.json"
#: the learning rate decays to this fraction of --lr (finetuning keeps 0.01)
LR_FLOOR = 0.0
#: unannotated patches in the fixed batch the health check embeds
HEALTH_PATCHES = 32
#: the loss goes to Lightning's progress bar every this many steps (and at the first and last)
BAR_LOSS_EVERY = 10


@dataclass
class PretrainConfig:
    method: str
    data: str
    out: str
    model: str | None = None
    model_options: dict = field(default_factory=dict)
    method_options: dict = field(default_factory=dict)
    structures: list[str] | None = None
    max_steps: int = 1000
    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    seed: int = 0
    num_workers: int = 2
    downsample_xy: int = 1
    fg_threshold: float | None = 500.0
    fg_fraction: float = 0.1
    checkpoint_every: int = 100
    devices: int | str = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    progress: bool = True
    health_every: int = 250  # SSL health every N steps (0: off); see training/ssl_health.py

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise Selma3dError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise Selma3dError(f"--lr must be > 0, got {self.lr}")
        if int(self.health_every) < 0:
            raise Selma3dError(f"--health-every must be >= 0 (0: off), got {self.health_every}")
        if self.num_workers < 0:
            raise Selma3dError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.downsample_xy < 1:
            raise Selma3dError(f"--downsample-xy must be >= 1, got {self.downsample_xy}")


def write_loss_curve(history: list[dict], run_dir: Path) -> None:
    """``loss.csv`` (one row per step, one column per logged term) and ``loss.png``."""
    if not history:
        return
    columns = ["step"] + sorted({k for row in history for k in row} - {"step"})
    with atomic_path(run_dir / "loss.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = [c for c in columns if c == "loss" or c.startswith("loss_")]
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [row["step"] for row in history]
    for term in terms:
        ax.plot(steps, [row.get(term, float("nan")) for row in history], label=term, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("self-supervised pretraining")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(run_dir / "loss.png", suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


class PretrainModule(pl.LightningModule):
    """Wraps an :class:`~selma3d.ssl.base.SSLMethod`: loss, optimizer, schedule, EMA hook,
    loss history (kept in the checkpoint so a resumed curve continues), final ``encoder.pt``."""

    def __init__(self, method, config: PretrainConfig, encoder_extra: dict | None = None,
                 dataset=None):
        super().__init__()
        self.method = method
        self.dataset = dataset
        self.config = config
        self.run_dir = Path(config.out)
        self.encoder_extra = dict(encoder_extra or {})
        self.history: list[dict] = []
        self.latest_loss: float | None = None

    def setup(self, stage):
        # Each DDP rank draws its own patches (workers add their id to the seed themselves).
        if self.dataset is not None:
            self.dataset.rank = self.global_rank
        # Masks and view augmentations differ between ranks too: on_train_batch_start seeds every
        # step from (seed, rank, step) (tests/test_ddp.py checks both).

    def on_train_batch_start(self, batch, batch_idx):
        # Views, masks and dropout of this step depend on (seed, rank, step) only, so a resumed
        # run repeats the uninterrupted one exactly.
        seed_step(self.config.seed, self.global_step, self.global_rank)

    def training_step(self, batch, batch_idx):
        loss, logs = self.method.training_loss(batch)
        if not torch.isfinite(loss):
            raise Selma3dError(f"{self.config.method}: loss became {loss.item()} at step "
                               f"{self.global_step + 1}; lower --lr or check the data")
        values = {k: float(v) for k, v in logs.items()}
        values["lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.latest_loss = values["loss"] if "loss" in values else float(loss.detach())  # for LogProgress
        step = self.global_step + 1
        if step % BAR_LOSS_EVERY == 0 or step == 1 or step >= self.trainer.max_steps:
            # for the terminal's progress bar only (the curves come from self.history): Lightning's
            # self.log costs ~0.3-0.6 ms, a few % of a small SSL step, so not every step
            self.log("loss", loss.detach(), prog_bar=True, batch_size=batch["image"].shape[0])
        if self.trainer.is_global_zero:
            self.history.append({"step": self.global_step + 1, **values})
        return loss

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # global_step counts completed steps and is incremented right after this hook.
        self.method.on_after_step(self.global_step + 1, self.config.max_steps)

    def configure_optimizers(self):
        params = [p for p in self.method.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        total = self.config.max_steps
        warmup = self.config.warmup_steps
        if warmup is None:
            warmup = min(500, max(1, total // 10))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total, floor=LR_FLOOR))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["loss_history"] = self.history
        checkpoint["rng_state"] = rng_state()

    def on_load_checkpoint(self, checkpoint):
        self.history = list(checkpoint.get("loss_history", []))
        set_rng_state(checkpoint.get("rng_state"))

    def save_encoder(self) -> Path:
        from ..artifacts.encoder import save_encoder

        path = self.run_dir / ENCODER_NAME
        save_encoder(self.method.backbone, path, method=self.config.method, steps=int(self.global_step),
                     **self.encoder_extra)
        return path


class AtomicCheckpoint(pl.Callback):
    """Every ``every`` steps and at the end: full trainer state to ``checkpoints/last.ckpt``
    (written to a temporary file, then renamed), plus the loss curve."""

    def __init__(self, run_dir: Path, every: int):
        self.run_dir = Path(run_dir)
        self.every = int(every)
        self.last_saved = -1

    def save(self, trainer: pl.Trainer, module: PretrainModule) -> None:
        if trainer.global_step == self.last_saved:
            return
        # collective: every rank calls it, rank 0 writes (atomically: AtomicCheckpointIO)
        trainer.save_checkpoint(self.run_dir / "checkpoints" / CHECKPOINT_NAME)
        if trainer.is_global_zero:
            write_loss_curve(module.history, self.run_dir)
        self.last_saved = trainer.global_step
        kill_point(trainer.global_step)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            self.save(trainer, module)

    def on_train_end(self, trainer, module):
        self.save(trainer, module)
        if trainer.is_global_zero:
            module.save_encoder()
            write_summary(module, self.run_dir)


def write_summary(module: PretrainModule, run_dir: Path) -> None:
    """``summary.json``: steps done, last logged loss, and the SSL health verdict (if measured)."""
    last = module.history[-1] if module.history else {}
    summary = {"method": module.config.method, "steps": int(module.global_step),
               "final_loss": last.get("loss"), "encoder": ENCODER_NAME}
    health = getattr(module, "health_summary", None)
    if health is not None:
        summary.update(collapsed=health["collapsed"], collapsed_step=health["collapsed_step"],
                       health=health)
    write_json(Path(run_dir) / SUMMARY_NAME, summary, newline=False)


def checkpoint_step(path: Path) -> int:
    """The number of completed steps stored in a Lightning checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    return int(state.get("global_step", 0))


def _same_setting(name: str, saved, given, method: str | None = None) -> bool:
    """Whether a resumed run's option equals the saved one (as JSON; paths resolved to absolute
    ones; a model left to the method's default equals that default named explicitly)."""
    if name == "data":
        return Path(str(saved)).expanduser().resolve() == Path(str(given)).expanduser().resolve()
    if name == "model" and method:
        from ..ssl.registry import method_spec

        default = method_spec(method).default_model
        saved, given = saved or default, given or default
    return json.loads(json.dumps(saved, default=str)) == json.loads(json.dumps(given, default=str))


def _resume_config(config: PretrainConfig, given: set[str]) -> PretrainConfig:
    saved_path = Path(config.out) / CONFIG_NAME
    if not saved_path.is_file():
        raise Selma3dError(f"{saved_path}: not found; --resume needs the folder of an earlier run")
    saved = json.loads(saved_path.read_text())
    saved.pop("percentiles", None)
    saved.pop("structures_seen", None)
    for name in RUNTIME_OPTIONS:
        if name in given:
            saved[name] = getattr(config, name)
    saved["out"] = config.out
    saved["patch_size"] = tuple(saved["patch_size"])
    changed = [name for name in sorted(given - set(RUNTIME_OPTIONS) - {"out", "method", "progress"})
               if name in saved and not _same_setting(name, saved[name], getattr(config, name),
                                                      saved.get("method"))]
    if changed:
        raise Selma3dError(
            f"{config.out}: --resume cannot change " + "; ".join(
                f"{name} (saved {saved[name]!r}, given {getattr(config, name)!r})" for name in changed)
            + ". A resume may change only " + ", ".join("--" + n.replace("_", "-") for n in RUNTIME_OPTIONS)
            + "; start a new --out to train with other settings")
    if saved.get("method") != config.method and "method" in given:
        raise Selma3dError(f"{config.out}: was pretrained with --method {saved.get('method')}, "
                           f"not {config.method}")
    return PretrainConfig(**saved)


def _strategy(config: PretrainConfig):
    if config.strategy in ("ddp", "ddp_spawn"):
        from pytorch_lightning.strategies import DDPStrategy

        # Some methods leave part of a backbone unused in a step (e.g. heads of other
        # objectives); let DDP tolerate parameters that get no gradient.
        return DDPStrategy(start_method="spawn" if config.strategy == "ddp_spawn" else "popen",
                           find_unused_parameters=True)
    return config.strategy


def structure_type_option(config: PretrainConfig, structures: list[str]) -> dict:
    """``structure_types`` (spot/tree per sampler structure index) for methods that take it."""
    import inspect

    from ..data.layout import load_dataset
    from ..ssl import method_class

    if "structure_types" not in inspect.signature(method_class(config.method).__init__).parameters:
        return {}
    dataset = load_dataset(config.data)
    return {"structure_types": [dataset.type_of(s) for s in structures]}


def recorded_spacing(data: str | os.PathLike, structures: list[str]) -> dict:
    """The (z, y, x) voxel spacing the pretraining volumes are stored at (before ``downsample_xy``),
    as the dataset records it: ``spacing_by_structure`` for each structure that has one, and
    ``spacing`` when every structure has the same one (None otherwise)."""
    from ..data.layout import load_dataset

    info = load_dataset(data).structures
    by_structure = {name: [float(v) for v in info[name]["spacing_zyx"]] for name in structures
                    if len((info.get(name) or {}).get("spacing_zyx") or ()) == 3}
    distinct = {tuple(v) for v in by_structure.values()}
    common = list(distinct.pop()) if len(distinct) == 1 and len(by_structure) == len(structures) else None
    return {"spacing": common, "spacing_by_structure": by_structure}


def run_pretraining(config: PretrainConfig, resume: bool = False,
                    given: set[str] | None = None, callbacks: list | None = None) -> Path:
    """Train (or continue training) and return the path of ``encoder.pt``.

    ``given`` names the options the user set explicitly; on resume only those among
    :data:`RUNTIME_OPTIONS` override the saved configuration. ``callbacks`` are extra Lightning
    callbacks (run after the built-in ones; e.g. a step timer in ``benchmarks/pretrain_bench.py``).
    """
    from ..data.sampling import PatchDataset, volumes_from_dataset
    from ..ssl import build_method
    from ..ssl.registry import sample_size

    run_dir = Path(config.out)
    ckpt = run_dir / "checkpoints" / CHECKPOINT_NAME
    start_step = 0
    if resume:
        config = _resume_config(config, set(given or ()))
        if not ckpt.is_file():
            raise Selma3dError(f"{ckpt}: no checkpoint to resume from")
        start_step = checkpoint_step(ckpt)
    elif ckpt.is_file():
        raise Selma3dError(f"{run_dir} already holds a pretraining checkpoint; pass --resume to "
                           "continue it or choose another --out")
    else:
        # saved absolute, so a resume from another working directory reads the same dataset
        config = replace(config, data=str(Path(config.data).expanduser().resolve()))
    config.validate()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)

    # the initial weights (a resume overwrites them with the checkpoint's)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    sources = volumes_from_dataset(config.data, config.structures)
    # the windows the method learns from: the patch, or one slice of it for a 2D method
    window = sample_size(config.method, config.patch_size)
    dataset = PatchDataset(sources, window, seed=config.seed, start_step=start_step,
                           batch_size=config.batch_size, downsample_xy=config.downsample_xy, fg_threshold=config.fg_threshold,
                           fg_fraction=config.fg_fraction, normalization=DEFAULT_NORMALIZATION)
    percentiles = dataset.prepare()
    structures = dataset.structures

    method = build_method(config.method, model=config.model, model_options=config.model_options,
                          patch_size=config.patch_size, num_structures=len(structures),
                          **structure_type_option(config, structures), **config.method_options)
    if trainer_is_main():
        saved = asdict(config)
        saved["percentiles"] = {k: list(v) for k, v in percentiles.items()}
        saved["structures_seen"] = structures
        write_json(run_dir / CONFIG_NAME, saved, newline=False)

    encoder_extra = {
        "normalization": DEFAULT_NORMALIZATION.to_dict() | {"per": "volume"},
        "patch_size": list(config.patch_size),
        "sample_size": list(window),
        "downsample_xy": config.downsample_xy,
        **recorded_spacing(config.data, structures),
        "structures": structures,
        "method_options": config.method_options,
        # the method's resolved settings (defaults included), where it reports them
        "method_recipe": method.recipe() if hasattr(method, "recipe") else {},
    }
    module = PretrainModule(method, config, encoder_extra, dataset)
    health = _health_callback(config, dataset, run_dir) if config.health_every > 0 else None
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0, pin_memory=torch.cuda.is_available(),
        drop_last=True)
    bar, progress_lines = progress_display(config.progress, "pretrain")
    with quiet_lightning():
        trainer = pl.Trainer(
            max_steps=config.max_steps, accelerator=config.accelerator, devices=config.devices,
            num_nodes=config.num_nodes, strategy=_strategy(config), precision=config.precision,
            # health first: its rows of a step are then in that step's checkpoint
            callbacks=[*([health] if health else []), AtomicCheckpoint(run_dir, config.checkpoint_every),
                       *progress_lines, *(callbacks or [])], logger=False, plugins=[AtomicCheckpointIO()],
            enable_checkpointing=False, enable_progress_bar=bar,
            enable_model_summary=False, log_every_n_steps=1, use_distributed_sampler=False,
            default_root_dir=str(run_dir))
        trainer.fit(module, train_dataloaders=loader, ckpt_path=str(ckpt) if resume else None)
    return run_dir / ENCODER_NAME


def _health_callback(config: PretrainConfig, dataset, run_dir: Path):
    """The :class:`~selma3d.training.ssl_health.SSLHealth` callback: a fixed batch of
    ``HEALTH_PATCHES`` patches drawn like the training ones (same volumes, filter and
    normalization) from a generator of its own, plus the annotated probe set when there is one."""
    import warnings

    import numpy as np

    from .ssl_health import HELD_SEED, SSLHealth, load_probe_set

    sampler = dataset.make_sampler()
    rng = np.random.default_rng([config.seed, HELD_SEED])
    with warnings.catch_warnings():  # the loader warns about dim volumes itself
        warnings.simplefilter("ignore")
        held = torch.stack([torch.from_numpy(sampler.sample(rng)["image"]) for _ in range(HEALTH_PATCHES)])
    try:
        probe = load_probe_set(config.data, config.patch_size, config.structures)
    except Selma3dError as exc:
        print(f"warning: SSL health runs without the linear probe: {exc}", flush=True)
        probe = None
    return SSLHealth(run_dir, config.health_every, held, probe)


def trainer_is_main() -> bool:
    """True outside DDP and on global rank 0 (Lightning sets the rank variables in children)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0 and \
        int(os.environ.get("NODE_RANK", 0)) == 0
