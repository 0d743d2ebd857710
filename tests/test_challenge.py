"""Scoring folders of NIfTI predictions (``selma3d evaluate``) and ranking teams (``selma3d leaderboard``)."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest

from cli_helpers import run_cli

from selma3d.errors import InputError
from selma3d.evaluation import metrics as M
from selma3d.evaluation.challenge import evaluate, match_cases, summarize
from selma3d.evaluation.leaderboard import rank_teams, run_leaderboard, to_csv, to_latex, to_markdown
from selma3d.io.nifti import read_nifti_array, write_nifti

SHAPE = (10, 12, 11)


def _tree(seed: int) -> np.ndarray:
    """A small branching tube with a loop (β1 = 1) plus a random stub, labelled 255."""
    rng = np.random.default_rng(seed)
    m = np.zeros(SHAPE, np.uint8)
    m[2:8, 2:4, 2:9] = 255
    m[3:7, 2:4, 4:7] = 0  # a window through the slab: a loop
    z, y = int(rng.integers(1, 9)), int(rng.integers(5, 11))
    m[z, 3:y, 5] = 255
    return m


def _spots(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros(SHAPE, np.uint8)
    for _ in range(4):
        z, y, x = rng.integers(1, np.array(SHAPE) - 3)
        m[z: z + 2, y: y + 2, x: x + 2] = 1
    return m


def _perturb(mask: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = mask.copy()
    flip = rng.random(mask.shape) < 0.04
    out[flip] = np.where(out[flip] > 0, 0, 255)
    return out


@pytest.fixture()
def folders(tmp_path):
    """GT for three microglia and two c-Fos cases; predictions named in the three allowed ways."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    arrays = {}
    for i in range(3):
        arrays[f"microglia_{i:03d}"] = _tree(i)
    for i in range(2):
        arrays[f"cfos_{i:03d}"] = _spots(10 + i)
    names = {"microglia_000": "microglia_000", "microglia_001": "microglia_001_label",
             "microglia_002": "microglia_002_pred", "cfos_000": "cfos_000", "cfos_001": "cfos_001_pred"}
    preds = {}
    for k, (case, gt) in enumerate(arrays.items()):
        write_nifti(gt_dir / f"{case}_label.nii.gz", gt)
        write_nifti(gt_dir / f"{case}_img.nii.gz", gt.astype(np.int16) * 7)  # images next to labels: skipped
        preds[case] = _perturb(gt, 100 + k)
        write_nifti(pred_dir / f"{names[case]}.nii.gz", preds[case])
    return gt_dir, pred_dir, arrays, preds


def test_folder_scoring_matches_metrics_and_schema(folders, tmp_path):
    gt_dir, pred_dir, arrays, preds = folders
    result = evaluate(pred_dir, gt_dir, jobs=2, progress=True)  # the bar goes to stderr
    assert result["failures"] == [] and result["unmatched_predictions"] == []
    assert [c["case"] for c in result["cases"]] == sorted(arrays)
    for case in result["cases"]:
        gt, pred = arrays[case["case"]], preds[case["case"]]
        if case["case"].startswith("microglia"):
            assert case == {"case": case["case"], "structure": "microglia", "type": "tree",
                            **M.tree_metrics(gt, pred, terms=True), "warnings": []}
        else:
            assert {k: v for k, v in case.items() if k != "instances"} == {
                "case": case["case"], "structure": "cfos", "type": "spot", **M.spot_metrics(gt, pred),
                "warnings": []}
            assert case["instances"]["true_objects"] >= 1
    tree = [c for c in result["cases"] if c["type"] == "tree"]
    for metric in M.TREE_METRICS:
        values = [c[metric] for c in tree]
        stats = result["summary"]["tree"][metric]
        assert stats["n"] == 3
        assert stats["mean"] == pytest.approx(np.mean(values))
        assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    assert set(result["summary"]["spot"]) == set(M.SPOT_METRICS)
    # JSON round trip keeps the schema
    text = json.dumps(result)
    assert json.loads(text)["summary"]["spot"]["dice"]["n"] == 2


def test_single_case_has_null_std_and_single_files_work(folders, tmp_path):
    gt_dir, pred_dir, arrays, preds = folders
    result = evaluate(pred_dir / "microglia_002_pred.nii.gz", gt_dir / "microglia_002_label.nii.gz",
                      jobs=1, progress=False)
    assert [c["case"] for c in result["cases"]] == ["microglia_002"]
    assert all(s["std"] is None and s["n"] == 1 for s in result["summary"]["tree"].values())
    assert "spot" not in result["summary"]
    # a single prediction file against a GT folder picks the case of the same name
    result = evaluate(pred_dir / "cfos_000.nii.gz", gt_dir, jobs=1, progress=False)
    assert [c["case"] for c in result["cases"]] == ["cfos_000"]
    assert summarize([]) == {}


def test_ground_truth_without_label_suffix_and_exact_names(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_nifti(gt_dir / "vessel_a.nii.gz", _tree(0))  # no *_label file anywhere: any NIfTI is GT
    write_nifti(gt_dir / "cfos_b_pred.nii.gz", _spots(1))  # a case whose own name ends in _pred
    write_nifti(pred_dir / "vessel_a_label.nii.gz", _tree(0))
    write_nifti(pred_dir / "cfos_b_pred.nii.gz", _spots(1))
    result = evaluate(pred_dir, gt_dir, jobs=1, progress=False)
    assert [(c["case"], c["structure"], c["dice"]) for c in result["cases"]] == [
        ("cfos_b_pred", "cfos", 1.0), ("vessel_a", "vessel", 1.0)]
    # a mask written by `selma3d predict` keeps the image's name: <case>_img
    write_nifti(tmp_path / "predicted" / "vessel" / "vessel_a_img.nii.gz", _tree(0))
    result = evaluate(tmp_path / "predicted", gt_dir, jobs=1, progress=False)
    assert [c["case"] for c in result["cases"]] == ["vessel_a"] and result["cases"][0]["dice"] == 1.0
    write_nifti(pred_dir / "vessel_a.nii.gz", _tree(0))  # now two predictions for vessel_a
    result = evaluate(pred_dir, gt_dir, jobs=1, progress=False)
    assert "several predictions" in result["failures"][0]["error"]
    assert result["failures"][0]["case"] == "vessel_a"


def test_dataset_json_decides_the_structure(tmp_path):
    gt_dir, pred_dir = tmp_path / "data" / "annotated" / "final_test", tmp_path / "pred"
    meta = {"structures": {"microglia": {"type": "tree"}, "cfos": {"type": "spot"}},
            "splits": {"final_test": {"microglia": ["sample_a", "cfos_like_name"], "cfos": ["sample_b"]}}}
    (tmp_path / "data").mkdir(parents=True)
    (tmp_path / "data" / "dataset.json").write_text(json.dumps(meta))
    for case, mask in (("sample_a", _tree(0)), ("cfos_like_name", _tree(1)), ("sample_b", _spots(2))):
        write_nifti(gt_dir / f"{case}_label.nii.gz", mask)
        write_nifti(pred_dir / f"{case}.nii.gz", mask)
    result = evaluate(pred_dir, gt_dir, jobs=1, progress=False)
    by_case = {c["case"]: c for c in result["cases"]}
    assert by_case["sample_a"]["structure"] == "microglia" and by_case["sample_a"]["type"] == "tree"
    assert by_case["cfos_like_name"]["type"] == "tree"  # dataset.json wins over the file name
    assert by_case["sample_b"]["type"] == "spot" and "cldice" not in by_case["sample_b"]
    assert by_case["sample_a"]["dice"] == by_case["sample_a"]["cldice"] == 1.0


def test_bad_inputs_are_listed_per_case_and_the_rest_is_scored(folders):
    gt_dir, pred_dir, arrays, preds = folders
    write_nifti(pred_dir / "microglia_000.nii.gz", np.ones((4, 4, 4), np.uint8))  # shape mismatch
    (pred_dir / "microglia_001_label.nii.gz").write_bytes(b"not a nifti file")  # unreadable
    (pred_dir / "microglia_002_pred.nii.gz").unlink()  # missing
    nan = preds["cfos_000"].astype(np.float32)
    nan[0, 0, 0] = np.nan
    write_nifti(pred_dir / "cfos_000.nii.gz", nan)  # NaN values
    write_nifti(pred_dir / "stray_999.nii.gz", preds["cfos_001"])  # matches no case
    result = evaluate(pred_dir, gt_dir, jobs=2, progress=False)
    assert [c["case"] for c in result["cases"]] == ["cfos_001"]
    errors = {f["case"]: f["error"] for f in result["failures"]}
    assert set(errors) == {"microglia_000", "microglia_001", "microglia_002", "cfos_000"}
    for case, error in errors.items():
        assert error.startswith(f"case {case}:") and "\n" not in error
    assert "shape mismatch" in errors["microglia_000"]
    assert "cannot read NIfTI" in errors["microglia_001"]
    assert "no prediction found" in errors["microglia_002"]
    assert "NaN" in errors["cfos_000"]
    assert result["unmatched_predictions"][0].endswith("stray_999.nii.gz")


def test_empty_folders(tmp_path, folders):
    gt_dir, _, arrays, _ = folders
    (tmp_path / "empty").mkdir()
    result = evaluate(tmp_path / "empty", gt_dir, jobs=1, progress=False)
    assert result["cases"] == [] and len(result["failures"]) == len(arrays)
    assert all("no prediction found" in f["error"] for f in result["failures"])
    with pytest.raises(InputError, match="no ground-truth NIfTI"):
        evaluate(gt_dir, tmp_path / "empty", jobs=1, progress=False)
    with pytest.raises(InputError, match="not found"):
        match_cases(tmp_path / "missing", gt_dir)




def test_evaluate_command_outputs_and_one_line_errors(folders, tmp_path, monkeypatch, capsys):
    gt_dir, pred_dir, arrays, preds = folders
    (pred_dir / "microglia_001_label.nii.gz").write_bytes(b"garbage")
    out, table = tmp_path / "m.json", tmp_path / "m.csv"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "evaluate", pred_dir, gt_dir, "--out", out,
                                "--csv", table, "--jobs", 1, "--quiet")
    assert code == 0
    assert [line for line in stderr.splitlines() if line.startswith("failed:")] == [
        line for line in stderr.splitlines() if "microglia_001" in line]
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert "4 cases scored, 1 failed" in stdout
    saved = json.loads(out.read_text())
    assert len(saved["cases"]) == 4 and saved["failures"][0]["case"] == "microglia_001"
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [r["case"] for r in rows] == [c["case"] for c in saved["cases"]]
    assert rows[0]["type"] == "spot" and rows[0]["cldice"] == ""
    # the values, JSON and CSV alike, are the metrics of the arrays written
    for case, row in zip(saved["cases"], rows):
        gt, pred = arrays[case["case"]], preds[case["case"]]
        expected = M.tree_metrics(gt, pred) if case["type"] == "tree" else M.spot_metrics(gt, pred)
        assert {k: case[k] for k in expected} == pytest.approx(expected)
        assert {k: float(row[k]) for k in expected} == pytest.approx(expected)
    assert len({c["dice"] for c in saved["cases"]}) == 4  # distinct: a row mix-up would show

    (tmp_path / "nothing").mkdir()
    code, stdout, stderr = run_cli(monkeypatch, capsys, "evaluate", tmp_path / "nothing", gt_dir,
                                "--out", tmp_path / "n.json", "--quiet")
    assert code == 1 and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: no case could be scored")
    assert len(lines) == len(arrays) + 1 and all(line.startswith("failed: case ") for line in lines[:-1])

    code, _, stderr = run_cli(monkeypatch, capsys, "evaluate", pred_dir, tmp_path / "no_gt", "--quiet")
    assert code == 1 and stderr.strip().count("\n") == 0 and stderr.startswith("error: ")


# ----------------------------------------------------------------------------- leaderboard
def _result(rows):
    cases = [{"case": case, "type": kind, **values} for case, kind, values in rows]
    return {"cases": cases, "summary": summarize(cases), "failures": []}


def test_rank_then_aggregate_on_a_hand_computed_example():
    case_types = {"c1": "spot", "c2": "spot", "m1": "tree"}
    results = {
        "A": _result([("c1", "spot", {"dice": 0.9, "betti0_error": 0}), ("c2", "spot", {"dice": 0.5, "betti0_error": 3}),
                      ("m1", "tree", {"dice": 0.6, "cldice": 0.7, "betti0_error": 1, "betti1_error": 2})]),
        "B": _result([("c1", "spot", {"dice": 0.8, "betti0_error": 1}), ("c2", "spot", {"dice": 0.7, "betti0_error": 3}),
                      ("m1", "tree", {"dice": 0.8, "cldice": 0.9, "betti0_error": 1, "betti1_error": 0})]),
        "C": _result([("c1", "spot", {"dice": 0.9, "betti0_error": 2}),  # c2 failed: ranks last there
                      ("m1", "tree", {"dice": 0.7, "cldice": 0.8, "betti0_error": 0, "betti1_error": 0})]),
    }
    results["C"]["failures"] = [{"case": "c2", "error": "case c2: no prediction found"}]
    standings = {s.team: s for s in rank_teams(case_types, results)}
    # By hand: per case ranks (ties share the mean), averaged per column.
    expected = {
        "A": {"spot/dice": (1.5 + 2) / 2, "spot/betti0_error": (1 + 1.5) / 2, "tree/dice": 3, "tree/cldice": 3,
              "tree/betti0_error": 2.5, "tree/betti1_error": 3},
        "B": {"spot/dice": (3 + 1) / 2, "spot/betti0_error": (2 + 1.5) / 2, "tree/dice": 1, "tree/cldice": 1,
              "tree/betti0_error": 2.5, "tree/betti1_error": 1.5},
        "C": {"spot/dice": (1.5 + 3) / 2, "spot/betti0_error": (3 + 3) / 2, "tree/dice": 2, "tree/cldice": 2,
              "tree/betti0_error": 1, "tree/betti1_error": 1.5},
    }
    for team, columns in expected.items():
        assert standings[team].column_ranks == pytest.approx(columns)
    assert standings["A"].score == pytest.approx(14.5 / 6)
    assert standings["B"].score == pytest.approx(9.75 / 6)
    assert standings["C"].score == pytest.approx(11.75 / 6)
    assert [standings[t].rank for t in "BCA"] == [1, 2, 3]
    assert [s.team for s in rank_teams(case_types, results)] == ["B", "C", "A"]
    # identical teams share the better position
    results["B2"] = results["B"]
    positions = {s.team: s.rank for s in rank_teams(case_types, results)}
    assert positions == {"B": 1, "B2": 1, "C": 3, "A": 4}


def test_leaderboard_end_to_end(folders, tmp_path, monkeypatch, capsys):
    gt_dir, pred_dir, arrays, preds = folders
    perfect = tmp_path / "perfect"
    for case, gt in arrays.items():
        write_nifti(perfect / f"{case}.nii.gz", gt)
    standings, results = run_leaderboard(gt_dir, {"noisy": pred_dir, "perfect": perfect}, jobs=1, progress=False)
    assert [s.team for s in standings] == ["perfect", "noisy"] and standings[0].score < standings[1].score
    markdown = to_markdown(standings)
    assert "| Team | Dice | clDice | β0 error | β1 error |" in markdown
    assert "| perfect | 1.0000 ± 0.0000 | 1.0000 ± 0.0000 | 0.00 ± 0.00 | 0.00 ± 0.00 |" in markdown
    assert r"$\pm$" in to_latex(standings) and r"\begin{tabular}" in to_latex(standings)
    rows = list(csv.DictReader(io.StringIO(to_csv(standings))))
    assert [r["team"] for r in rows] == ["perfect", "noisy"] and float(rows[0]["tree_dice_mean"]) == 1.0

    out = tmp_path / "board"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "leaderboard", gt_dir, f"noisy={pred_dir}",
                                f"perfect={perfect}", "--out", out, "--jobs", 1, "--quiet")
    assert code == 0, stderr
    assert "| 1 | perfect |" in stdout and "| 2 | noisy |" in stdout
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex"):
        assert (out / name).is_file()
    # the noisy team's saved cases and aggregate are the metrics of its predictions
    noisy = json.loads((out / "teams" / "noisy.json").read_text())
    for case in noisy["cases"]:
        assert case["dice"] == pytest.approx(M.dice(arrays[case["case"]], preds[case["case"]]))
    assert json.loads((out / "teams" / "perfect.json").read_text())["summary"]["tree"]["dice"]["mean"] == 1.0
    tree_dice = [M.dice(arrays[c], preds[c]) for c in arrays if c.startswith("microglia")]
    board = {r["team"]: r for r in csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text()))}
    assert float(board["noisy"]["tree_dice_mean"]) == pytest.approx(np.mean(tree_dice), abs=1e-4)
    code, _, stderr = run_cli(monkeypatch, capsys, "leaderboard", gt_dir, "missing_equals_sign", "--quiet")
    assert code == 1 and stderr.startswith("error: submission 'missing_equals_sign'")


# ----------------------------------------------------------------------------- synthetic dataset
def test_evaluate_and_leaderboard_on_the_tiny_dataset_test_splits(tiny_dataset, tmp_path, monkeypatch, capsys):
    for split in ("preliminary_test", "final_test"):
        gt_dir = tiny_dataset / "annotated" / split
        copy, noisy = tmp_path / split / "copy", tmp_path / split / "noisy"
        labels = sorted(gt_dir.rglob("*_label.nii.gz"))
        assert labels
        copy.mkdir(parents=True)
        for k, label in enumerate(labels):
            case = label.name[: -len("_label.nii.gz")]
            shutil.copy(label, copy / label.name)
            write_nifti(noisy / f"{case}_pred.nii.gz", _perturb(read_nifti_array(label), 7 + k))
        exact = evaluate(copy, gt_dir, jobs=1, progress=False)
        assert not exact["failures"] and {c["structure"] for c in exact["cases"]} == {"cfos", "microglia"}
        assert {c["type"] for c in exact["cases"]} == {"spot", "tree"}
        assert all(c["dice"] == 1.0 and c["betti0_error"] == 0 for c in exact["cases"])
        assert all(c["cldice"] == 1.0 and c["betti1_error"] == 0 for c in exact["cases"] if c["type"] == "tree")
        out = tmp_path / split / "board"
        code, stdout, stderr = run_cli(monkeypatch, capsys, "leaderboard", gt_dir, f"copy={copy}", f"noisy={noisy}",
                                    "--out", out, "--jobs", 1, "--quiet")
        assert code == 0, stderr
        board = json.loads((out / "leaderboard.json").read_text())
        assert [row["team"] for row in board] == ["copy", "noisy"]
        noisy_cases = json.loads((out / "teams" / "noisy.json").read_text())["cases"]
        assert any(c["dice"] < 1.0 for c in noisy_cases)
