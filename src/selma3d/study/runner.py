"""Running a study: pretraining once per method, then every arm, resumable after a kill.

Layout of ``STUDY/``::

    plan.json                   the settings (a rerun must keep the training budget)
    pretrain/<method>/          one `selma3d pretrain` run per SSL method (resumed if cut short)
    runs/<arm>/                 one `selma3d finetune` run per arm (model.pt + run.json)
    arms/<arm>.json             the arm's scores on every test case: written atomically when the
                                arm is finished, so its presence is what "done" means
    arms/otsu.json              the Otsu-threshold baseline on the same test cases
    results.json, results.csv   every row (arm × test case), rebuilt at the end of every run

Testing protocol: a model trained on structure S is scored on every case of every test split
(all ``annotated/`` splits but ``train``: ``preliminary_test``, ``final_test``, ``shifted_test``
when present) whose structure has S's type, with the challenge's metric set of that type
(:func:`selma3d.evaluation.metrics.metrics_for_type`). So a vessel model is scored on microglia,
which were never annotated for training: the question SELMA3D asks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from ..utils.atomic import atomic_write, write_json
from ..utils.progress import format_duration
from .plan import Arm, StudyPlan, load_plan

ARMS_DIR, RUNS_DIR, PRETRAIN_DIR = "arms", "runs", "pretrain"
OTSU = "otsu"
TRAIN_SPLIT = "train"


@dataclass
class TestCase:
    split: str
    structure: str
    type: str
    case: str
    image: np.ndarray  # raw intensities (z, y, x)
    label: np.ndarray  # uint8 {0, 1}


@dataclass
class StudyRun:
    """What one call of :func:`run_study` did and found."""

    out: Path
    rows: list[dict]
    ran: list[str] = field(default_factory=list)  # arm keys trained in this call
    skipped: list[str] = field(default_factory=list)  # arm keys found finished
    pretrained: list[str] = field(default_factory=list)  # methods pretrained (or resumed) in this call


# ------------------------------------------------------------------------------- the study folder
def check_study_folder(plan: StudyPlan) -> None:
    """Create ``STUDY/`` or check that an existing one was run with the same training budget."""
    out = Path(plan.out)
    saved = load_plan(out)
    if saved is None:
        if out.exists() and any(out.iterdir()):
            raise InputError(f"{out} exists and is not a study folder (no plan.json); choose another --out")
    else:
        if Path(saved.get("data", "")).resolve() != Path(plan.data).resolve():
            raise InputError(f"{out} is a study of {saved.get('data')}, not {plan.data}; choose another --out")
        mine = json.loads(json.dumps(plan.budget(), default=str))
        theirs = json.loads(json.dumps(saved_budget(saved), default=str))
        differ = [k for k, v in mine.items() if theirs.get(k) != v]
        if differ:
            shown = "; ".join(f"{k}: {theirs.get(k)!r} there, {mine[k]!r} now" for k in differ)
            raise InputError(f"{out} was run with another training budget ({shown}); its arms would not "
                             f"be comparable: rerun with the same settings or choose another --out")
    write_json(out / "plan.json", plan.to_json())


def saved_budget(saved: dict) -> dict:
    """The training budget of a study folder's ``plan.json`` (older plans lack newer fields: their
    defaults apply)."""
    known = {f.name for f in dataclasses.fields(StudyPlan)}
    return StudyPlan(**{k: v for k, v in saved.items() if k in known}).budget()


def load_test_cases(data: str | os.PathLike, types: set[str]) -> list[TestCase]:
    """Every annotated case outside ``train`` whose structure has one of ``types``."""
    from ..data.layout import load_dataset
    from ..io.nifti import read_nifti_array
    from ..training.finetune_data import binarize_label

    dataset = load_dataset(data)
    cases = []
    for case in dataset.annotated_cases():
        if case.split == TRAIN_SPLIT or dataset.type_of(case.structure) not in types:
            continue
        label = binarize_label(read_nifti_array(case.label), str(case.label))
        cases.append(TestCase(case.split, case.structure, dataset.type_of(case.structure), case.case,
                              read_nifti_array(case.image), label))
    return cases


def structure_types(plan: StudyPlan) -> dict[str, str]:
    from ..data.layout import load_dataset

    dataset = load_dataset(plan.data)
    known = set(dataset.structures) or None
    types = {}
    for structure in plan.structures:
        if known is not None and structure not in known:
            raise InputError(f"--structures: {structure} not in {plan.data} (has {', '.join(sorted(known))})")
        types[structure] = dataset.type_of(structure)
    return types


# ------------------------------------------------------------------------------- baselines and arms
def otsu_rows(cases: list[TestCase]) -> list[dict]:
    """The Otsu threshold of each raw test image, scored like any arm (what a network must beat)."""
    from ..evaluation.baselines import otsu_mask
    from ..evaluation.metrics import metrics_for_type

    rows = []
    for case in cases:
        mask = otsu_mask(case.image.astype(np.float32))
        rows.append({"structure": "", "method": OTSU, "model": "", "mode": "", "labels": "", "seed": None,
                     "split": case.split, "case": case.case, "test_structure": case.structure, "type": case.type,
                     **{k: float(v) for k, v in metrics_for_type(case.type, case.label, mask).items()}})
    return rows


def _quiet():
    """Silence Lightning's banners and expected warnings (the finetuning module's own helper)."""
    from ..training.progress import quiet_lightning

    return quiet_lightning()


def ensure_encoder(plan: StudyPlan, method: str) -> tuple[Path, bool]:
    """``encoder.pt`` of ``method``: given, already pretrained, resumed, or pretrained now.
    Returns (path, whether pretraining ran in this call)."""
    from ..artifacts.encoder import load_encoder_checkpoint
    from ..training.pretrain import CHECKPOINT_NAME, ENCODER_NAME, PretrainConfig, checkpoint_step, run_pretraining

    model = plan.model_for(method)
    if method in plan.encoders:
        path, ran = Path(plan.encoders[method]), False
    else:
        run_dir = Path(plan.out) / PRETRAIN_DIR / method
        path, ran = run_dir / ENCODER_NAME, False
        if not path.is_file():
            ckpt = run_dir / "checkpoints" / CHECKPOINT_NAME
            if ckpt.is_file() and checkpoint_step(ckpt) >= plan.pretrain_steps:
                # Killed between its last checkpoint and encoder.pt: nothing left to resume, and
                # a seeded rerun gives the same encoder.
                shutil.rmtree(run_dir)
            resume = ckpt.is_file()
            config = PretrainConfig(method=method, data=plan.data, out=str(run_dir), model=model,
                                    model_options=plan.options_for(model), max_steps=plan.pretrain_steps,
                                    patch_size=(plan.patch_size,) * 3, batch_size=plan.pretrain_batch_size,
                                    method_options=dict(plan.method_options.get(method, {})),
                                    lr=plan.pretrain_lr, seed=plan.pretrain_seed, num_workers=plan.pretrain_workers,
                                    checkpoint_every=max(1, min(100, plan.pretrain_steps)), progress=False)
            with _quiet():
                run_pretraining(config, resume=resume, given=set())
            ran = True
    # The scratch arms build the same architecture from the plan: check the encoder fits it.
    from ..models import build_model
    from ..models import canonical
    from ..models.registry import MODELS

    saved = canonical(load_encoder_checkpoint(path)["model"])
    expected = canonical(build_model(model, **plan.options_for(model)).config)
    differ = [k for k in MODELS[model].encoder_options if saved.get(k) != expected.get(k)]
    if saved.get("name") != model or differ:
        raise InputError(f"encoder {path} ({saved.get('name')}, {', '.join(f'{k}={saved.get(k)}' for k in differ)}) "
                         f"does not match the study's {model} ({', '.join(f'{k}={expected.get(k)}' for k in differ)})")
    return path, ran


def finetune_config(plan: StudyPlan, arm: Arm, run_dir: Path, encoder: Path | None):
    """The arm's finetuning run: the study's budget, no validation split, final weights."""
    from ..training.finetune import FinetuneConfig

    return FinetuneConfig(
        data=plan.data, out=str(run_dir), model=arm.model, model_options=plan.options_for(arm.model),
        pretrained=str(encoder) if encoder is not None else None, freeze_encoder=arm.mode != "full",
        linear_probe=arm.mode == "linear", loss=plan.loss, max_steps=plan.steps, batch_size=plan.batch_size,
        lr=plan.lr, patch_size=(plan.patch_size,) * 3, seed=arm.seed, structures=[arm.structure],
        labels=arm.labels, val_fraction=0.0, checkpoint_every=plan.steps, augment=plan.augment,
        num_workers=plan.num_workers, progress=False)


def run_arm(plan: StudyPlan, arm: Arm, encoder: Path | None, cases: list[TestCase]) -> dict:
    """Finetune one arm and score it on its test cases; returns the arm record (not yet saved)."""
    from ..evaluation.metrics import metrics_for_type
    from ..artifacts.run import RUN_FILE
    from ..inference.predict import load_run
    from ..training.finetune import CHECKPOINT_DIR, finetune

    run_dir = Path(plan.out) / RUNS_DIR / arm.key
    if run_dir.exists():  # cut short by a kill: this arm starts again
        shutil.rmtree(run_dir)
    start, cpu_start = time.perf_counter(), time.process_time()
    with _quiet():
        finetune(finetune_config(plan, arm, run_dir, encoder))
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)  # optimizer state: not needed any more
    trained, cpu_trained = time.perf_counter(), time.process_time()
    info = json.loads((run_dir / RUN_FILE).read_text())
    loaded = load_run(run_dir)
    kind = info["type"]
    rows = []
    for case in cases:
        if case.type != kind:
            continue
        mask = loaded.predict(case.image)
        rows.append({**arm.fields(), "split": case.split, "case": case.case, "test_structure": case.structure,
                     "type": case.type,
                     **{k: float(v) for k, v in metrics_for_type(case.type, case.label, mask).items()}})
    return {"key": arm.key, "arm": arm.fields(), "train_cases": info["split"]["train"], "type": kind,
            "schedule": info["training"].get("resolved_schedule"),
            # process CPU time too: on a shared machine it estimates the time on idle cores
            "seconds": {"train": trained - start, "evaluate": time.perf_counter() - trained,
                        "train_cpu": cpu_trained - cpu_start, "evaluate_cpu": time.process_time() - cpu_trained},
            "rows": rows}


def arm_path(plan: StudyPlan, arm: Arm) -> Path:
    return Path(plan.out) / ARMS_DIR / f"{arm.key}.json"


def read_arm(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # absent, or written by something else than the atomic writer: run again


# ------------------------------------------------------------------------------- the whole study
def run_study(plan: StudyPlan, log: Callable[[str], None] | None = None) -> StudyRun:
    """Run every arm not yet finished, then gather all rows (see the module doc for the layout)."""
    log = log or (lambda line: print(line, file=sys.stdout, flush=True))
    out = Path(plan.out)
    types = structure_types(plan)
    check_study_folder(plan)
    cases = load_test_cases(plan.data, set(types.values()))
    missing = sorted(set(types.values()) - {c.type for c in cases})
    if missing:
        raise InputError(f"{plan.data}: no test cases (annotated splits other than train) of type "
                         f"{', '.join(missing)}; a study needs them to score the arms")
    started = time.perf_counter()
    result = StudyRun(out=out, rows=[])

    otsu_file = out / ARMS_DIR / f"{OTSU}.json"
    otsu = (read_arm(otsu_file) or {}).get("rows")
    if otsu is None:
        otsu = otsu_rows(cases)
        write_json(otsu_file, {"key": OTSU, "rows": otsu})

    arms = plan.arms()
    todo = [a for a in arms if read_arm(arm_path(plan, a)) is None]
    done = {a.key for a in arms} - {a.key for a in todo}
    result.skipped = [a.key for a in arms if a.key in done]
    log(f"[study] {len(arms)} arms ({len(plan.structures)} structures × {len(plan.inits())} inits × "
        f"{len(plan.modes)} modes × {len(plan.labels)} budgets × {len(plan.seeds)} seeds); "
        f"{len(done)} already done, {len(todo)} to run; {len(cases)} test cases")

    encoders: dict[str, Path] = {}
    for method in dict.fromkeys(a.method for a in todo if a.pretrained):
        t0, cpu0 = time.perf_counter(), time.process_time()
        if method not in plan.encoders:
            log(f"[study] pretraining {method} ({plan.model_for(method)}, {plan.pretrain_steps} steps) ...")
        encoders[method], ran = ensure_encoder(plan, method)
        if ran:
            result.pretrained.append(method)
        log(f"[study] {method} encoder: {encoders[method]} ({format_duration(time.perf_counter() - t0)}, "
            f"cpu {time.process_time() - cpu0:.1f} s)")

    durations = []
    for index, arm in enumerate(todo, start=1):
        t0, cpu0 = time.perf_counter(), time.process_time()
        record = run_arm(plan, arm, encoders.get(arm.method), cases)
        write_json(arm_path(plan, arm), record)
        result.ran.append(arm.key)
        durations.append(time.perf_counter() - t0)
        eta = float(np.mean(durations)) * (len(todo) - index)
        dice = np.mean([r["dice"] for r in record["rows"]]) if record["rows"] else float("nan")
        log(f"[study] arm {len(done) + index}/{len(arms)} {arm.key}: dice {dice:.3f} on {len(record['rows'])} "
            f"cases ({durations[-1]:.1f} s, cpu {time.process_time() - cpu0:.1f} s) · elapsed {format_duration(time.perf_counter() - started)} "
            f"· ETA {format_duration(eta)}")

    for arm in arms:
        result.rows.extend(read_arm(arm_path(plan, arm))["rows"])
    result.rows.extend(otsu)
    write_results(out, result.rows)
    return result


RESULT_FIELDS = ("structure", "method", "model", "mode", "labels", "seed", "split", "case", "test_structure",
                 "type", "dice", "cldice", "betti0_error", "betti1_error")


def write_results(out: Path, rows: list[dict]) -> None:
    """``results.json`` and ``results.csv``: one row per (arm, test case), Otsu rows included."""
    import csv
    import io

    write_json(out / "results.json", rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in RESULT_FIELDS})
    atomic_write(out / "results.csv", buffer.getvalue())
