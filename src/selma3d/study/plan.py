"""What a study runs: its settings (presets), and the grid of arms they expand to.

An *arm* is one finetuning run: a structure to train on, an initialization (``scratch`` or an
SSL method's pretrained encoder), a finetuning mode, a label budget and a seed. Every arm of a
study shares the training budget (steps, batch, crop size, learning rate, augmentation), and
arms that differ only in initialization or mode train on the same patches with the same seed,
so the difference between them is the initialization or the mode and nothing else.

Modes:

* ``full``: the whole network is trained (encoder included);
* ``frozen``: the encoder is frozen, the decoder is trained;
* ``linear``: a linear probe, one 1×1×1 convolution on the frozen encoder's multi-scale features
  (:class:`selma3d.models.probe.LinearProbe`).

The ``scratch`` arm of ``frozen``/``linear`` freezes a *random* encoder: the classic
random-features baseline a pretrained encoder has to beat.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import InputError
from ..ssl.registry import method_names, method_spec

SCRATCH = "scratch"
MODES = ("full", "frozen", "linear")
#: Settings that define the training budget: a study folder keeps them fixed, so arms run on
#: different days stay comparable (the grid itself, i.e. methods/modes/labels/seeds/structures,
#: may grow between runs).
BUDGET_FIELDS = ("model", "model_options", "method_options", "patch_size", "batch_size", "steps", "lr", "loss",
                 "augment", "pretrain_steps", "pretrain_batch_size", "pretrain_lr", "pretrain_seed", "encoders")

#: Backbone options per architecture, per preset. ``tiny`` uses unet3d only; ``cpu`` has a small
#: backbone of every architecture, so any method (dino on vit3d, simclr on attunet2d) runs at CPU scale.
_CPU_MODELS = {
    "unet3d": {"features": [8, 16, 32]},
    "vit3d": {"patch_size": 8, "hidden_size": 96, "num_layers": 4, "num_heads": 4, "mlp_dim": 192,
              "decoder_channels": 8},
    "attunet2d": {"features": [8, 16, 32]},
    "swinunetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 4,
                  "norm": "group"},
}
#: SSL method options per preset where a method's defaults are sized for a GPU.
_CPU_METHODS = {"dino": {"out_dim": 1024, "hidden_dim": 256, "bottleneck_dim": 64, "local_crops": 2}}
_GPU_MODELS = {
    "unet3d": {"features": [32, 64, 128, 256]},
    "vit3d": {"img_size": 64, "patch_size": 8, "hidden_size": 384, "num_layers": 8, "num_heads": 6,
              "mlp_dim": 1536},
    "attunet2d": {"features": [32, 64, 128, 256]},
}

PRESETS: dict[str, dict] = {
    # seconds: for tests and `selma3d demo --mode quick`
    "tiny": dict(methods=["byol"], modes=["full"], labels=[1, None], seeds=[0, 1],
                 model_options={"unet3d": {"features": [4, 8, 16]}}, patch_size=16, batch_size=2,
                 steps=4, pretrain_steps=4, pretrain_batch_size=2, num_workers=0, pretrain_workers=0,
                 augment="light"),
    # <= 20 minutes on 2 idle CPU cores on `selma3d synth --preset small` (BENCHMARKS.md)
    "cpu": dict(methods=["byol", "inpainting"], modes=["full"], labels=[1, 4, None], seeds=[0, 1],
                model_options=_CPU_MODELS, method_options=_CPU_METHODS, patch_size=32, batch_size=2,
                steps=100, pretrain_steps=200, pretrain_batch_size=4, num_workers=0, pretrain_workers=1,
                augment="default"),
    # the recipe for one real GPU: every method with unet3d or its own backbone, every mode
    "gpu": dict(methods=method_names(), modes=list(MODES),
                labels=[1, 2, 4, None], seeds=[0, 1, 2], model_options=_GPU_MODELS, patch_size=64,
                batch_size=4, steps=2000, pretrain_steps=20000, pretrain_batch_size=8, num_workers=4, pretrain_workers=4,
                augment="default"),
}


@dataclass
class StudyPlan:
    """Every setting of a study; stored as ``STUDY/plan.json``."""

    data: str
    out: str
    preset: str = "cpu"
    methods: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)  # training patches per structure; None: all
    seeds: list[int] = field(default_factory=list)
    structures: list[str] = field(default_factory=lambda: ["cfos", "vessel"])
    model: str = "unet3d"  # the backbone of scratch arms and of every method that supports it
    model_options: dict[str, dict] = field(default_factory=dict)  # per architecture
    method_options: dict[str, dict] = field(default_factory=dict)  # per SSL method (pretraining)
    patch_size: int = 32
    batch_size: int = 2
    steps: int = 150
    lr: float = 1e-3
    loss: str = "dicece"
    augment: str = "default"
    pretrain_steps: int = 300
    pretrain_batch_size: int = 4
    pretrain_lr: float = 1e-4
    pretrain_seed: int = 0  # one pretraining per method, shared by every seed of the study
    encoders: dict[str, str] = field(default_factory=dict)  # method -> existing encoder.pt to reuse
    num_workers: int = 0  # finetuning loader workers (augmentation is cheap next to the step)
    pretrain_workers: int = 1  # pretraining loader workers (patch sampling from volumes is not)

    @classmethod
    def from_preset(cls, data: str, out: str, preset: str = "cpu", **overrides) -> "StudyPlan":
        """The preset's settings, with every non-None keyword overriding one."""
        if preset not in PRESETS:
            raise InputError(f"unknown --preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        values = dict(PRESETS[preset])
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"unknown study settings: {', '.join(unknown)}")
        plan = cls(data=str(data), out=str(out), preset=preset, **values)
        plan.validate()
        return plan

    def validate(self) -> None:
        for name in self.methods:
            if name == SCRATCH:
                raise InputError("--methods lists SSL methods; the scratch arms are always run")
            method_spec(name)  # unknown → one-line error listing the methods
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise InputError(f"--modes: {', '.join(bad) or '(none)'} unknown; choose from {', '.join(MODES)}")
        if not self.seeds:
            raise InputError("--seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"--seeds has repeated seeds: {self.seeds}")
        if not self.labels:
            raise InputError("--labels: give at least one budget (e.g. 1,4,all)")
        if any(k is not None and k < 1 for k in self.labels):
            raise InputError(f"--labels must be positive numbers of patches or 'all', got {self.labels}")
        if not self.structures:
            raise InputError("--structures: give at least one structure to train on")
        for name in ("steps", "pretrain_steps", "batch_size", "pretrain_batch_size", "patch_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for method in self.encoders:
            if method not in self.methods:
                raise InputError(f"an encoder is given for {method!r}, which is not in --methods")

    # ------------------------------------------------------------------ derived
    def model_for(self, method: str) -> str:
        """The backbone of a method's arms: the study's model if the method supports it, else its own."""
        if method == SCRATCH:
            return self.model
        spec = method_spec(method)
        return self.model if self.model in spec.models else spec.default_model

    def options_for(self, model: str) -> dict:
        options = dict(self.model_options.get(model, {}))
        if model == "vit3d":  # its position table is sized for the crop
            options["img_size"] = int(self.patch_size)
        return options

    def arms(self) -> list["Arm"]:
        """Every finetuning run of the study, seed-major: a study stopped after its first seed
        already holds a complete grid for that seed."""
        return [Arm(structure, method, model, mode, labels, seed)
                for seed in self.seeds for structure in self.structures for labels in self.labels
                for method, model in self.inits() for mode in self.modes]

    def inits(self) -> list[tuple[str, str]]:
        """(initialization, backbone) pairs: a scratch arm per backbone in use, then each method."""
        return [(SCRATCH, m) for m in self.architectures()] + [(m, self.model_for(m)) for m in self.methods]

    def architectures(self) -> list[str]:
        """The backbones the study's arms use (scratch's and each method's)."""
        return list(dict.fromkeys(self.model_for(x) for x in [SCRATCH, *self.methods]))

    def budget(self) -> dict:
        """The settings that must not change within a study folder. Backbone and method options
        count only for the architectures and methods this study uses: a preset that also sizes a
        backbone no arm builds does not make an older study incomparable."""
        budget = {name: getattr(self, name) for name in BUDGET_FIELDS}
        budget["model_options"] = {m: self.model_options[m] for m in self.architectures() if self.model_options.get(m)}
        budget["method_options"] = {m: self.method_options[m] for m in self.methods if self.method_options.get(m)}
        return budget

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Arm:
    """One finetuning run of a study (module doc)."""

    structure: str
    method: str  # "scratch" or an SSL method
    model: str
    mode: str  # full | frozen | linear
    labels: int | None  # training patches per structure; None: all
    seed: int

    @property
    def key(self) -> str:
        """File-name-safe identity, e.g. ``cfos-byol-unet3d-full-L4-s0``."""
        return (f"{self.structure}-{self.method}-{self.model}-{self.mode}-"
                f"L{'all' if self.labels is None else self.labels}-s{self.seed}")

    @property
    def pretrained(self) -> bool:
        return self.method != SCRATCH

    def fields(self) -> dict:
        return {"structure": self.structure, "method": self.method, "model": self.model, "mode": self.mode,
                "labels": "all" if self.labels is None else int(self.labels), "seed": int(self.seed)}


def parse_list(text: str | None, flag: str) -> list[str] | None:
    """``"a, b,c"`` → ``["a", "b", "c"]``; None stays None (use the preset's)."""
    if text is None:
        return None
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise InputError(f"{flag}: empty list")
    return items


def parse_labels(text: str | None) -> list[int | None] | None:
    """``"1,2,4,all"`` → ``[1, 2, 4, None]``."""
    items = parse_list(text, "--labels")
    if items is None:
        return None
    budgets: list[int | None] = []
    for item in items:
        if item.lower() == "all":
            budgets.append(None)
            continue
        try:
            budgets.append(int(item))
        except ValueError:
            raise InputError(f"--labels expects numbers of patches or 'all', got {item!r}") from None
    return budgets


def parse_seeds(text: str | None) -> list[int] | None:
    items = parse_list(text, "--seeds")
    if items is None:
        return None
    try:
        return [int(s) for s in items]
    except ValueError:
        raise InputError(f"--seeds expects integers, got {text!r}") from None


def labels_text(labels: int | str | None) -> str:
    return "all" if labels in (None, "all") else str(labels)


def load_plan(out: str | Path) -> dict | None:
    import json

    path = Path(out) / "plan.json"
    return json.loads(path.read_text()) if path.is_file() else None
