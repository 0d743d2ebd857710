"""Challenge editions (2024, 2025, 2026): exact agreement with each edition's reference
computation, the pitfall warnings and ``--strict``, and the input checks of ``evaluate``."""

from __future__ import annotations

import json
import math
import os
import statistics
import warnings

import numpy as np
import pytest

from cli_helpers import run_cli

from selma3d.errors import InputError, Selma3dError
from selma3d.evaluation import metrics as M
from selma3d.evaluation.challenge import evaluate, official_metrics
from selma3d.evaluation.editions import get_edition
from selma3d.evaluation.leaderboard import run_leaderboard, to_markdown, write_outputs
from selma3d.io.nifti import write_nifti

panoptica = pytest.importorskip("panoptica")

SHAPE = (14, 15, 16)


# ----------------------------------------------------------------------------- references
def official_2026_dice(prediction: np.ndarray, ground_truth: np.ndarray) -> float:
    """The 2026 scorer's volumetric Dice rules, written out from its description."""
    p, g = prediction.astype(bool), ground_truth.astype(bool)
    if p.sum() == 0 and g.sum() == 0:
        return 1.0
    if p.sum() == 0 or g.sum() == 0:
        return 0.0
    return float(2.0 * int(np.logical_and(p, g).sum()) / (int(p.sum()) + int(g.sum())))


def official_2026_case(name: str, gt: np.ndarray, pred: np.ndarray) -> dict:
    """What the 2026 scorer computes for one case: panoptica on the whole uint8 arrays."""
    from panoptica import (ConnectedComponentsInstanceApproximator, InputType, NaiveThresholdMatching,
                           Panoptica_Evaluator)
    from panoptica.metrics import Metric
    from panoptica.metrics.cldice import _compute_centerline_dice_coefficient

    gt, pred = (gt > 0).astype(np.uint8), (pred > 0).astype(np.uint8)
    result = {"dice": official_2026_dice(pred, gt)}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if name.startswith(("axonalmarker", "blood_vessel", "gutnerve", "lymphatic_vessel", "peripheral_nerve")):
            result["cldice"] = float(_compute_centerline_dice_coefficient(gt, pred))
        else:
            evaluator = Panoptica_Evaluator(
                expected_input=InputType.SEMANTIC,
                instance_approximator=ConnectedComponentsInstanceApproximator(cca_backend=None),
                instance_matcher=NaiveThresholdMatching(matching_threshold=0.3),
                instance_metrics=[Metric.DSC])
            result["panoptic_quality"] = float(evaluator.evaluate(pred, gt, verbose=False)["ungrouped"].pq_dsc)
    return result


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _blobs(rng, n: int, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, bool)
    for _ in range(n):
        z, y, x = (rng.integers(0, s - 2) for s in shape)
        m[z: z + rng.integers(1, 4), y: y + rng.integers(1, 4), x: x + rng.integers(1, 4)] = True
    return m


def _tube(shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[2:12, 6:9, 6:9] = True
    m[6:9, 2:13, 6:9] = True
    return m


def crafted_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Empty, disjoint, touching and border objects (gt, pred)."""
    z = np.zeros(SHAPE, bool)
    cube = z.copy(); cube[3:7, 3:7, 3:7] = True
    far = z.copy(); far[9:12, 10:13, 10:13] = True
    face = z.copy(); face[3:7, 3:7, 3:7] = True; face[3:7, 3:7, 7:10] = True  # two cubes sharing a face
    corner = z.copy(); corner[2:4, 2:4, 2:4] = True; corner[4:6, 4:6, 4:6] = True  # touching by a corner
    split = corner.copy(); split[2:4, 2:4, 2:4] = False
    border = z.copy(); border[0:3, 0:4, :] = True; border[-2:, -3:, -3:] = True  # objects on the faces
    border_pred = np.roll(border, 1, axis=2)
    return {
        "both_empty": (z, z), "empty_pred": (cube, z), "empty_gt": (z, cube), "disjoint": (cube, far),
        "touching_face": (face, cube), "touching_corner": (corner, split), "border": (border, border_pred),
        "tube_cut": (_tube(), np.where(np.arange(SHAPE[0])[:, None, None] == 7, False, _tube())),
        "identical": (face, face),
    }


def random_cases(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        gt = _blobs(rng, int(rng.integers(1, 9)))
        pred = gt ^ (rng.random(SHAPE) < rng.uniform(0.0, 0.06))
        if rng.random() < 0.3:
            pred = np.roll(pred, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 3)))
        cases.append((gt, pred))
    return cases


# ----------------------------------------------------------------------------- 2026
@pytest.mark.parametrize("prefix", ["blood_vessel", "cell_nuclei"])
def test_2026_equals_the_official_computation_on_crafted_and_random_cases(prefix):
    edition = get_edition("2026")
    category = "contiguous" if prefix == "blood_vessel" else "isolated"
    pairs = list(crafted_cases().items()) + [(f"random{i}", c) for i, c in enumerate(random_cases(12))]
    for label, (gt, pred) in pairs:
        ours, _ = edition.score(category, gt, pred)
        ref = official_2026_case(f"{prefix}_{label}", gt, pred)
        for key, value in ref.items():
            assert same(ours[key], value), (label, key, ours[key], value)  # bit-exact (or both NaN)


def test_2026_routing_is_by_prefix_and_case_sensitive():
    route = get_edition("2026").route
    assert route("blood_vessel_003", None, None) == "contiguous"
    assert route("peripheral_nerve_1", None, None) == "contiguous"
    assert route("AD_plaques_12", None, None) == "isolated"
    assert route("microglia_001", None, "tree") == "isolated"  # tree-like in 2024, isolated in 2026
    assert route("ad_plaques_12", None, None) is None  # the scorer's startswith is case-sensitive
    assert route("vessel_000", None, "tree") is None
    assert route("vessel_000", "blood_vessel", "tree") == "contiguous"  # --structure forces it


def _write_cases(folder_gt, folder_pred, cases):
    for name, (gt, pred) in cases.items():
        write_nifti(folder_gt / f"{name}_label.nii.gz", gt.astype(np.uint8))
        if pred is not None:
            write_nifti(folder_pred / f"{name}.nii.gz", pred.astype(np.uint8))


def test_2026_official_metrics_json_matches_statistics_over_official_results(tmp_path):
    rng_cases = random_cases(6, seed=3)
    cases = {f"blood_vessel_{i}": c for i, c in enumerate(rng_cases[:3])}
    cases.update({f"cfos_neuron_{i}": c for i, c in enumerate(rng_cases[3:])})
    _write_cases(tmp_path / "gt", tmp_path / "pred", cases)
    result = evaluate(tmp_path / "pred", tmp_path / "gt", jobs=1, progress=False, edition="2026")
    assert not result["failures"] and result["edition"] == "2026"
    official = official_metrics(result)
    refs = {name: official_2026_case(name, gt, pred) for name, (gt, pred) in sorted(cases.items())}
    assert official["results"] == list(refs.values())
    iso = [r for r in refs.values() if "panoptic_quality" in r]
    con = [r for r in refs.values() if "cldice" in r]
    expected = {
        "iso_dice_mean": statistics.mean(r["dice"] for r in iso), "iso_dice_std": statistics.stdev(r["dice"] for r in iso),
        "iso_panoptic_quality_mean": statistics.mean(r["panoptic_quality"] for r in iso),
        "iso_panoptic_quality_std": statistics.stdev(r["panoptic_quality"] for r in iso),
        "con_dice_mean": statistics.mean(r["dice"] for r in con), "con_dice_std": statistics.stdev(r["dice"] for r in con),
        "con_cldice_mean": statistics.mean(r["cldice"] for r in con),
        "con_cldice_std": statistics.stdev(r["cldice"] for r in con),
    }
    assert official["aggregates"] == expected
    iso_case = next(c for c in result["cases"] if c["type"] == "isolated")
    assert iso_case["instances"]["pq"] == iso_case["panoptic_quality"]


def test_2026_nan_cldice_is_warned_kept_officially_and_zero_when_strict(tmp_path):
    tube = _tube()
    cases = {"blood_vessel_0": (tube, tube), "blood_vessel_1": (tube, np.zeros_like(tube))}
    _write_cases(tmp_path / "gt", tmp_path / "pred", cases)
    result = evaluate(tmp_path / "pred", tmp_path / "gt", jobs=1, progress=False, edition="2026")
    empty = next(c for c in result["cases"] if c["case"] == "blood_vessel_1")
    assert math.isnan(empty["cldice"]) and empty["warnings"][0]["code"] == "nan_cldice"
    assert math.isnan(result["official"]["aggregates"]["con_cldice_mean"])
    assert result["official"]["aggregates"]["con_cldice_std"] is None  # statistics.stdev raises on NaN
    with pytest.raises((AttributeError, ValueError)):
        statistics.stdev([1.0, float("nan")])  # why the official scorer fails on this submission
    assert any("con_cldice" in note and "fails" in note for note in result["official_notes"])
    assert result["summary"]["contiguous"]["cldice"] == {"mean": 1.0, "std": None, "n": 1, "n_nan": 1}
    strict = evaluate(tmp_path / "pred", tmp_path / "gt", jobs=1, progress=False, edition="2026", strict=True)
    empty = next(c for c in strict["cases"] if c["case"] == "blood_vessel_1")
    assert empty["cldice"] == 0.0 and math.isnan(empty["official_values"]["cldice"])
    assert strict["summary"]["contiguous"]["cldice"]["mean"] == 0.5
    assert math.isnan(strict["official"]["aggregates"]["con_cldice_mean"])  # official stays official


def test_instance_scores_count_objects():
    gt = np.zeros(SHAPE, bool)
    gt[1:4, 1:4, 1:4] = gt[7:11, 7:11, 7:11] = gt[1:3, 10:12, 10:12] = True
    pred = np.zeros(SHAPE, bool)
    pred[1:4, 1:4, 1:4] = True  # matched
    pred[7:11, 7:11, 9:13] = True  # IoU 32/96 = 1/3: matched at 0.3 (2026), not at 0.5
    pred[10:12, 1:3, 1:3] = True  # a false positive
    values, _ = get_edition("2026").score("isolated", gt, pred)
    inst = values["instances"]
    assert (inst["true_objects"], inst["predicted_objects"], inst["matched_objects"]) == (3, 3, 2)
    assert inst["precision"] == inst["recall"] == pytest.approx(2 / 3)
    values, _ = get_edition("2024").score("spot", gt, pred)
    assert values["instances"]["matched_objects"] == 1 and values["instances"]["iou_threshold"] == 0.5


# ----------------------------------------------------------------------------- 2024
def test_2024_vacuous_cldice_warned_and_strict_scores_zero(tmp_path, monkeypatch, capsys):
    tube = _tube()
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_nifti(gt_dir / "microglia_000_label.nii.gz", tube.astype(np.uint8))
    write_nifti(pred_dir / "microglia_000.nii.gz", np.zeros(SHAPE, np.uint8))  # empty prediction
    write_nifti(gt_dir / "microglia_001_label.nii.gz", tube.astype(np.uint8))
    write_nifti(pred_dir / "microglia_001.nii.gz", tube.astype(np.uint8))
    result = evaluate(pred_dir, gt_dir, jobs=1, progress=False)
    empty = result["cases"][0]
    assert empty["cldice"] == 1.0 and empty["tprec"] == empty["tsens"] == 0.0  # the official value
    assert empty["cldice"] == M.cldice(tube, np.zeros(SHAPE))
    assert [w["code"] for w in empty["warnings"]] == ["vacuous_cldice"]
    assert result["cases"][1]["warnings"] == []  # a real 1.0 is not warned about
    assert len(result["warnings"]) == 1 and "prediction is empty" in result["warnings"][0]
    assert result["official"]["aggregates"]["micro_cldice"] == 1.0

    code, stdout, stderr = run_cli(monkeypatch, capsys, "evaluate", pred_dir, gt_dir, "--out", tmp_path / "m.json",
                                "--quiet", "--jobs", 1, "--strict")
    assert code == 0, stderr
    assert "warning: case microglia_000: clDice 1 is vacuous" in stderr
    assert "1 case(s) have degenerate official scores" in stderr
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["strict"] and saved["cases"][0]["cldice"] == 0.0
    assert saved["summary"]["tree"]["cldice"]["mean"] == 0.5

    code, _, _ = run_cli(monkeypatch, capsys, "evaluate", pred_dir, gt_dir, "--out", tmp_path / "o.json",
                      "--quiet", "--jobs", 1, "--format", "official")
    assert code == 0
    official = json.loads((tmp_path / "o.json").read_text())
    assert set(official) == {"results", "aggregates"}
    assert official["results"][0] == {"dice": 0.0, "betti_matching_error_0": 1, "betti_matching_error_1": 0,
                                      "centerline_dice": 1.0}
    assert official["aggregates"]["micro_cldice"] == 1.0 and official["aggregates"]["cfos_dice"] is None


def test_2024_edition_scores_as_the_metrics_module_on_crafted_cases():
    edition = get_edition("2024")
    for label, (gt, pred) in crafted_cases().items():
        tree, _ = edition.score("tree", gt, pred)
        assert {k: tree[k] for k in M.TREE_METRICS} == M.tree_metrics(gt, pred), label
        spot, _ = edition.score("spot", gt, pred)
        assert {k: spot[k] for k in M.SPOT_METRICS} == M.spot_metrics(gt, pred), label


# ----------------------------------------------------------------------------- 2025
def _betti_matching_library():
    from selma3d.evaluation.betti_matching import load_betti_matching

    try:
        return load_betti_matching()
    except Selma3dError as exc:
        pytest.skip(str(exc))


def test_2025_betti_matching_counts_unmatched_components():
    _betti_matching_library()
    from selma3d.evaluation.betti_matching import betti_matching_errors

    z = np.zeros(SHAPE, bool)
    three = z.copy(); three[1:3, 1:3, 1:3] = three[6:8, 6:8, 6:8] = three[11:13, 11:13, 11:13] = True
    two = z.copy(); two[1:3, 1:3, 1:3] = two[6:8, 6:8, 6:8] = True
    moved = np.roll(three, 3, axis=2)  # same count, other places
    assert betti_matching_errors(three, three)[:2] == (0, 0)
    assert betti_matching_errors(three, two)[0] == 1
    assert M.betti0_error(three, moved) == 0  # the Betti number error sees nothing wrong ...
    assert betti_matching_errors(three, moved)[0] == 4  # ... the matching sees 2 + 2 unmatched finite bars
    corner = z.copy(); corner[2, 2, 2] = corner[3, 3, 3] = True
    assert betti_matching_errors(corner, two)[0] >= 1  # 6-connected: a corner contact is two components
    one = z.copy(); one[4:7, 4:7, 4:7] = True
    assert betti_matching_errors(one, z)[0] == 0  # the essential interval is never counted (a pitfall)


def test_2025_scores_and_pitfalls():
    _betti_matching_library()
    edition = get_edition("2025")
    tube = _tube()
    shifted = np.roll(tube, 1, axis=2)
    values, pitfalls = edition.score("contiguous", tube, shifted)
    ref = M.tree_metrics(tube, shifted)
    assert values["dice"] == ref["dice"] and values["cldice"] == ref["cldice"]
    assert values["hd95"] == pytest.approx(1.0)  # every surface point is 1 voxel off along x, at most
    assert pitfalls == []
    values, pitfalls = edition.score("contiguous", tube, np.zeros_like(tube))
    assert {p.code for p in pitfalls} == {"vacuous_cldice", "undefined_hd95", "betti_matching_essential"}
    assert values["cldice"] == 1.0 and not math.isfinite(values["hd95"])
    assert set(edition.metrics["isolated"]) == {"dice", "betti_matching_error_0"}


def test_2025_official_metrics_json(tmp_path):
    _betti_matching_library()
    tube, cells = _tube(), np.zeros(SHAPE, bool)
    cells[1:4, 1:4, 1:4] = cells[8:11, 8:11, 8:11] = True
    cases = {"blood_vessel_0": (tube, tube), "blood_vessel_1": (tube, np.roll(tube, 1, axis=1)),
             "cell_nuclei_0": (cells, cells), "cell_nuclei_1": (cells, np.roll(cells, 1, axis=0))}
    _write_cases(tmp_path / "gt", tmp_path / "pred", cases)
    result = evaluate(tmp_path / "pred", tmp_path / "gt", jobs=1, progress=False, edition="2025")
    assert not result["failures"]
    aggregates = official_metrics(result)["aggregates"]
    con = [c for c in result["cases"] if c["type"] == "contiguous"]
    assert aggregates["con_hd95_mean"] == statistics.mean(c["hd95"] for c in con)
    assert aggregates["iso_betti_matching_error_0_mean"] == 0.5 * sum(
        c["betti_matching_error_0"] for c in result["cases"] if c["type"] == "isolated")
    assert set(aggregates) == {f"{prefix}_{m}_{s}" for prefix, cat in (("iso", "isolated"), ("con", "contiguous"))
                               for m in get_edition("2025").metrics[cat] for s in ("mean", "std")}


# ----------------------------------------------------------------------------- input checks


def test_unknown_prefix_is_a_one_line_failure(tmp_path, monkeypatch, capsys):
    tube = _tube()
    _write_cases(tmp_path / "gt", tmp_path / "pred", {"blood_vessel_0": (tube, tube), "vessel_7": (tube, tube)})
    result = evaluate(tmp_path / "pred", tmp_path / "gt", jobs=1, progress=False, edition="2026")
    assert [c["case"] for c in result["cases"]] == ["blood_vessel_0"]
    assert result["failures"][0]["case"] == "vessel_7"
    assert "matches no structure of the 2026 edition" in result["failures"][0]["error"]
    code, _, stderr = run_cli(monkeypatch, capsys, "evaluate", tmp_path / "pred", tmp_path / "gt", "--edition", "2026",
                           "--out", tmp_path / "m.json", "--quiet", "--jobs", 1)
    failed = [line for line in stderr.splitlines() if line.startswith("failed:")]
    assert code == 0 and len(failed) == 1 and "vessel_7" in failed[0] and "Traceback" not in stderr
    code, _, stderr = run_cli(monkeypatch, capsys, "evaluate", tmp_path / "pred", tmp_path / "gt", "--edition", "2023",
                           "--quiet")
    assert code == 1 and stderr.strip().count("\n") == 0 and "unknown edition" in stderr


def test_non_binary_prediction_needs_a_threshold(tmp_path, monkeypatch, capsys):
    tube = _tube()
    rng = np.random.default_rng(0)
    probabilities = np.where(tube, 0.6 + 0.4 * rng.random(SHAPE), 0.3 * rng.random(SHAPE)).astype(np.float32)
    write_nifti(tmp_path / "gt" / "microglia_000_label.nii.gz", tube.astype(np.uint8))
    write_nifti(tmp_path / "pred" / "microglia_000.nii.gz", probabilities)
    result = evaluate(tmp_path / "pred", tmp_path / "gt", jobs=1, progress=False)
    assert not result["cases"] and "not a binary mask" in result["failures"][0]["error"]
    assert "--threshold" in result["failures"][0]["error"]
    image = (1000 + 100 * rng.random(SHAPE)).astype(np.int16)  # a raw image: every voxel non-zero
    write_nifti(tmp_path / "pred" / "microglia_000.nii.gz", image)
    result = evaluate(tmp_path / "pred", tmp_path / "gt", jobs=1, progress=False)
    assert "not a binary mask" in result["failures"][0]["error"]
    write_nifti(tmp_path / "pred" / "microglia_000.nii.gz", probabilities)
    code, _, _ = run_cli(monkeypatch, capsys, "evaluate", tmp_path / "pred", tmp_path / "gt", "--threshold", 0.5,
                      "--out", tmp_path / "m.json", "--quiet", "--jobs", 1)
    saved = json.loads((tmp_path / "m.json").read_text())
    assert code == 0 and saved["threshold"] == 0.5
    assert saved["cases"][0]["dice"] == M.dice(tube, probabilities > 0.5) == 1.0
    labels = tube.astype(np.uint8) * 3
    labels[2:5, 6:9, 6:9] = 7  # a label map (mostly 0, non-negative integers) is accepted
    write_nifti(tmp_path / "pred" / "microglia_000.nii.gz", labels)
    assert evaluate(tmp_path / "pred", tmp_path / "gt", jobs=1, progress=False)["cases"][0]["dice"] == 1.0


def test_ground_truth_as_prediction_is_an_error(tmp_path, monkeypatch, capsys):
    tube = _tube()
    gt_dir = tmp_path / "gt"
    write_nifti(gt_dir / "microglia_000_label.nii.gz", tube.astype(np.uint8))
    with pytest.raises(InputError, match="the ground truth itself"):
        evaluate(gt_dir, gt_dir, jobs=1, progress=False)
    with pytest.raises(InputError, match="the ground truth itself"):
        evaluate(gt_dir / "microglia_000_label.nii.gz", gt_dir / "microglia_000_label.nii.gz", progress=False)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    os.symlink(gt_dir / "microglia_000_label.nii.gz", pred_dir / "microglia_000.nii.gz")  # same file, other name
    with pytest.raises(InputError, match="ground-truth file of case microglia_000"):
        evaluate(pred_dir, gt_dir, jobs=1, progress=False)
    code, stdout, stderr = run_cli(monkeypatch, capsys, "evaluate", gt_dir, gt_dir, "--quiet",
                                "--out", tmp_path / "m.json")
    assert code == 1 and stderr.strip().count("\n") == 0 and stderr.startswith("error: ")
    assert not (tmp_path / "m.json").exists()


def test_official_format_refuses_strict(tmp_path, monkeypatch, capsys):
    code, _, stderr = run_cli(monkeypatch, capsys, "evaluate", tmp_path, tmp_path / "gt", "--format", "official",
                           "--strict")
    assert code == 1 and "cannot be combined" in stderr


# ----------------------------------------------------------------------------- leaderboard
def test_leaderboard_ranks_by_the_2026_edition(tmp_path):
    tube = _tube()
    cells = np.zeros(SHAPE, bool)
    cells[1:4, 1:4, 1:4] = cells[8:11, 8:11, 8:11] = True
    gt_dir = tmp_path / "gt"
    write_nifti(gt_dir / "blood_vessel_0_label.nii.gz", tube.astype(np.uint8))
    write_nifti(gt_dir / "cell_nuclei_0_label.nii.gz", cells.astype(np.uint8))
    good, bad = tmp_path / "good", tmp_path / "bad"
    write_nifti(good / "blood_vessel_0.nii.gz", tube.astype(np.uint8))
    write_nifti(good / "cell_nuclei_0.nii.gz", cells.astype(np.uint8))
    write_nifti(bad / "blood_vessel_0.nii.gz", np.zeros(SHAPE, np.uint8))  # NaN clDice ranks last
    write_nifti(bad / "cell_nuclei_0.nii.gz", np.roll(cells, 2, axis=0).astype(np.uint8))
    standings, results = run_leaderboard(gt_dir, {"bad": bad, "good": good}, jobs=1, progress=False,
                                         edition="2026")
    assert [s.team for s in standings] == ["good", "bad"] and standings[0].edition == "2026"
    assert set(standings[0].column_ranks) == {"isolated/dice", "isolated/panoptic_quality",
                                              "contiguous/dice", "contiguous/cldice"}
    assert standings[0].column_ranks["contiguous/cldice"] == 1.0
    assert "2026 edition" in to_markdown(standings)
    write_outputs(standings, results, tmp_path / "board")
    board = json.loads((tmp_path / "board" / "leaderboard.json").read_text())
    assert {row["edition"] for row in board} == {"2026"}


def test_leaderboard_command_takes_the_edition(tmp_path, monkeypatch, capsys):
    tube = _tube()
    write_nifti(tmp_path / "gt" / "blood_vessel_0_label.nii.gz", tube.astype(np.uint8))
    write_nifti(tmp_path / "gt" / "blood_vessel_1_label.nii.gz", tube.astype(np.uint8))
    write_nifti(tmp_path / "a" / "blood_vessel_0.nii.gz", tube.astype(np.uint8))
    write_nifti(tmp_path / "a" / "blood_vessel_1.nii.gz", tube.astype(np.uint8))
    code, stdout, stderr = run_cli(monkeypatch, capsys, "leaderboard", tmp_path / "gt", f"a={tmp_path / 'a'}",
                                "--edition", "2026", "--quiet", "--jobs", 1, "--out", tmp_path / "board")
    assert code == 0, stderr
    assert "2026 edition" in stdout and "contiguous structures" in stdout
    assert json.loads((tmp_path / "board" / "leaderboard.json").read_text())[0]["edition"] == "2026"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "leaderboard", tmp_path / "gt", f"a={tmp_path / 'a'}",
                                "--quiet", "--jobs", 1)
    assert code == 0 and "2024 edition" in stdout and "tree-like structures" in stdout  # the default


def test_thin_objects_are_warned_but_not_zeroed_by_strict():
    rod = np.zeros(SHAPE, bool)
    rod[2:12, 6:8, 6:8] = True  # 2x2 cross-section: Lee's thinning leaves no skeleton
    values, pitfalls = get_edition("2024").score("tree", rod, rod)
    assert values["cldice"] == 1.0 and [p.code for p in pitfalls] == ["vacuous_cldice"]
    assert pitfalls[0].strict == {}  # a perfect prediction must not be scored 0
    values, pitfalls = get_edition("2026").score("contiguous", rod, rod)
    assert math.isnan(values["cldice"]) and pitfalls[0].code == "nan_cldice" and pitfalls[0].strict == {}
    values, pitfalls = get_edition("2026").score("contiguous", rod, np.zeros_like(rod))
    assert pitfalls[0].strict == {"cldice": 0.0}


def test_missing_betti_matching_library_is_one_clear_error(monkeypatch):
    import importlib

    from selma3d.evaluation import betti_matching

    real_import = importlib.import_module

    def no_library(name, *args):
        if name == "betti_matching":
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(betti_matching.importlib, "import_module", no_library)
    monkeypatch.setattr(betti_matching.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(Selma3dError, match="pip install --no-deps topolosses"):
        betti_matching.load_betti_matching.__wrapped__()


def test_fast_instance_scores_equal_panoptica():
    from selma3d.evaluation.panoptic import instance_metrics, instance_scores, panoptica_result

    pairs = list(crafted_cases().values()) + random_cases(15, seed=7)
    for threshold in (0.5, 0.3):
        for gt, pred in pairs:
            ours = instance_metrics(gt, pred, threshold)
            ref = instance_scores(panoptica_result(gt, pred, threshold, crop=False), threshold)
            for key, value in ref.items():
                if isinstance(value, float) and not math.isnan(value):
                    assert ours[key] == pytest.approx(value, abs=1e-12), key
                else:
                    assert same(ours[key], value) if isinstance(value, float) else ours[key] == value, key
