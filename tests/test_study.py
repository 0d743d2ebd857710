"""selma3d study: the arms grid, paired statistics and verdicts, label budgets, the linear probe,
and resumable end-to-end runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from selma3d.errors import InputError, Selma3dError


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


# --------------------------------------------------------------------------- plan
def test_arms_grid_crosses_inits_modes_budgets_seeds():
    from selma3d.study.plan import StudyPlan

    plan = StudyPlan.from_preset("D", "S", "tiny", methods=["byol", "inpainting"], modes=["full", "linear"],
                                 labels=[1, None], seeds=[0, 1, 2], structures=["cfos", "vessel"])
    arms = plan.arms()
    assert len(arms) == 3 * 2 * 2 * 3 * 2  # seeds × structures × budgets × (scratch + 2 methods) × modes
    assert len({a.key for a in arms}) == len(arms)
    # every (structure, budget, seed, mode) has its scratch baseline and every method
    cells = {}
    for a in arms:
        cells.setdefault((a.structure, a.labels, a.seed, a.mode), set()).add(a.method)
    assert all(v == {"scratch", "byol", "inpainting"} for v in cells.values())
    assert [a.seed for a in arms] == sorted(a.seed for a in arms)  # seed-major
    assert arms[0].key == "cfos-scratch-unet3d-full-L1-s0"


def test_methods_on_their_own_backbone_get_their_own_scratch_arms():
    from selma3d.study.plan import StudyPlan

    plan = StudyPlan.from_preset("D", "S", "gpu", seeds=[0], labels=[1], modes=["full"], structures=["cfos"])
    by_method = {a.method: a.model for a in plan.arms() if a.method != "scratch"}
    assert by_method == {"byol": "unet3d", "inpainting": "unet3d", "multitask": "unet3d", "dino": "vit3d",
                         "simclr": "attunet2d", "shape": "unet3d"}
    scratch = sorted(a.model for a in plan.arms() if a.method == "scratch")
    assert scratch == ["attunet2d", "unet3d", "vit3d"]
    assert plan.options_for("vit3d")["img_size"] == plan.patch_size


def test_cpu_preset_sizes_every_backbone_and_the_budget_counts_only_what_the_arms_use(tmp_path):
    """Any method runs at CPU scale (dino on a small vit3d, simclr on attunet2d), and sizing a
    backbone no arm builds does not make an older study folder incomparable."""
    import dataclasses

    from selma3d.study.plan import StudyPlan
    from selma3d.study.runner import check_study_folder

    plan = StudyPlan.from_preset(str(tmp_path), str(tmp_path / "s"), "cpu", methods=["dino", "simclr"])
    assert plan.options_for("vit3d")["hidden_size"] <= 128 and plan.options_for("attunet2d")["features"] == [8, 16, 32]
    assert [init for init, _ in plan.inits()] == ["scratch", "scratch", "scratch", "dino", "simclr"]
    assert set(plan.budget()["model_options"]) == {"unet3d", "vit3d", "attunet2d"}
    assert plan.budget()["method_options"] == {"dino": plan.method_options["dino"]}

    byol = StudyPlan.from_preset(str(tmp_path), str(tmp_path / "b"), "cpu", methods=["byol"])
    assert set(byol.budget()["model_options"]) == {"unet3d"} and byol.budget()["method_options"] == {}
    check_study_folder(byol)
    # a plan.json written before method_options and the other backbones existed still matches
    saved = json.loads((tmp_path / "b" / "plan.json").read_text())
    saved.pop("method_options")
    saved["model_options"] = {"unet3d": saved["model_options"]["unet3d"]}
    (tmp_path / "b" / "plan.json").write_text(json.dumps(saved))
    check_study_folder(byol)
    # ... but a changed backbone of an architecture in use is refused
    with pytest.raises(InputError, match="model_options"):
        check_study_folder(dataclasses.replace(byol, model_options={"unet3d": {"features": [4, 8, 16]}}))


def test_plan_rejects_bad_settings_and_parses_lists():
    from selma3d.study.plan import StudyPlan, parse_labels, parse_seeds

    assert parse_labels("1, 2,4,all") == [1, 2, 4, None]
    assert parse_seeds("0,1,2") == [0, 1, 2]
    with pytest.raises(InputError, match="--labels"):
        parse_labels("1,many")
    for bad in (dict(modes=["full", "bogus"]), dict(methods=["scratch"]), dict(labels=[0]),
                dict(seeds=[1, 1]), dict(methods=["nope"])):
        with pytest.raises(Selma3dError):
            StudyPlan.from_preset("D", "S", "tiny", **bad)
    with pytest.raises(InputError, match="preset"):
        StudyPlan.from_preset("D", "S", "huge")


# --------------------------------------------------------------------------- stats
def test_t_interval_matches_hand_computation():
    from selma3d.study.stats import t_interval

    # mean 0.2, sample sd 0.1, n 3: half width = t(0.975, 2) * 0.1 / sqrt(3) = 4.302653 * 0.057735
    interval = t_interval([0.1, 0.3, 0.2])
    assert interval.mean == pytest.approx(0.2)
    assert interval.high - interval.mean == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert interval.low == pytest.approx(0.2 - 0.248414, abs=1e-5)
    one = t_interval([0.5])
    assert one.low is None and one.high is None and one.n == 1


def test_verdicts_follow_the_interval_and_the_metric_direction():
    from selma3d.study.stats import BETTER, NO_DIFFERENCE, TOO_FEW, WORSE, Interval, verdict

    assert verdict(Interval(0.1, 0.02, 0.18, 3)) == BETTER
    assert verdict(Interval(-0.1, -0.18, -0.02, 3)) == WORSE
    assert verdict(Interval(0.1, -0.02, 0.22, 3)) == NO_DIFFERENCE
    assert verdict(Interval(-2.0, -3.0, -1.0, 3), higher_is_better=False) == BETTER  # fewer Betti errors
    assert verdict(Interval(0.1, None, None, 1)) == TOO_FEW


def _row(method, seed, case, dice, labels=1, structure="cfos"):
    return {"structure": structure, "model": "unet3d", "method": method, "mode": "full", "labels": labels,
            "seed": seed, "case": case, "type": "spot", "dice": dice, "betti0_error": 0.0}


def test_paired_differences_pair_by_seed_and_case():
    from selma3d.study.stats import compare, paired_seed_differences, scratch_comparisons

    ssl = [_row("byol", 0, "a", 0.6), _row("byol", 0, "b", 0.8), _row("byol", 1, "a", 0.5),
           _row("byol", 1, "b", 0.7), _row("byol", 2, "a", 0.9)]
    scratch = [_row("scratch", 0, "a", 0.5), _row("scratch", 0, "b", 0.6), _row("scratch", 1, "a", 0.5),
               _row("scratch", 1, "b", 0.6), _row("scratch", 2, "b", 0.1)]  # seed 2 shares no case
    diffs = paired_seed_differences(ssl, scratch, "dice")
    assert diffs == pytest.approx({0: 0.15, 1: 0.05})
    result = compare(ssl, scratch, "dice")
    half = 12.706205 * np.std([0.15, 0.05], ddof=1) / math.sqrt(2)
    assert result["difference"] == pytest.approx(0.10)
    assert result["low"] == pytest.approx(0.10 - half, rel=1e-5) and result["n_seeds"] == 2
    assert result["verdict"] == "no detectable difference"
    # a baseline without seeds (the threshold) pairs with every seed by case
    otsu = [{"case": "a", "seed": None, "dice": 0.4}, {"case": "b", "seed": None, "dice": 0.4}]
    assert paired_seed_differences(ssl, otsu, "dice") == pytest.approx({0: 0.3, 1: 0.2, 2: 0.5})
    # the same case name in two test splits is two cases
    other_split = [dict(r, split="final_test", dice=0.0) for r in scratch]
    assert paired_seed_differences(ssl, other_split, "dice") == {}
    comparisons = scratch_comparisons(ssl + scratch, ["dice"])
    assert [(c["method"], c["labels"]) for c in comparisons] == [("byol", "1")]


def test_report_says_plainly_when_ssl_does_not_help(tmp_path):
    from selma3d.study.report import analyze

    rows = []
    for seed, (a, b) in enumerate([(0.50, 0.52), (0.60, 0.61), (0.55, 0.50)]):
        rows += [_row("byol", seed, "c1", a), _row("scratch", seed, "c1", b)]
    rows.append({"structure": "", "method": "otsu", "model": "", "mode": "", "labels": "", "seed": None,
                 "case": "c1", "type": "spot", "dice": 0.8, "betti0_error": 1.0})
    for row in rows:
        row.update(split="final_test", test_structure="cfos")
    section = analyze(rows)["sections"][0]
    assert "did NOT help" in section["headline"][0]
    assert "No arm detectably beats an Otsu threshold" in section["headline"][1]
    # and says so when it does: byol clearly better on every seed
    better = [dict(r, dice=r["dice"] + 0.3) if r["method"] == "byol" else r for r in rows]
    assert "helped" in analyze(better)["sections"][0]["headline"][0]
    one_seed = [r for r in rows if r["seed"] in (0, None)]
    assert analyze(one_seed)["sections"][0]["headline"][0].startswith("Cannot tell")


# --------------------------------------------------------------------------- label budgets
def test_label_budget_is_nested_deterministic_and_per_structure(tiny_dataset):
    from selma3d.data.layout import load_dataset
    from selma3d.training.finetune import FinetuneConfig
    from selma3d.training.finetune_data import select_labels

    cases = load_dataset(tiny_dataset).annotated_cases(split="train")
    one = select_labels(cases, 1, seed=3)
    assert sorted(c.structure for c in one) == sorted({c.structure for c in cases})
    assert set(one) <= set(select_labels(cases, 2, seed=3))
    assert select_labels(cases, 1, seed=3) == one
    assert select_labels(cases, None, seed=3) == list(cases)
    picks = {tuple(c.case for c in select_labels(cases, 1, seed=s)) for s in range(8)}
    assert len(picks) > 1  # the seed chooses the patches
    with pytest.raises(InputError, match="--labels"):
        FinetuneConfig(data="D", out="O", labels=0)


# --------------------------------------------------------------------------- linear probe
def test_linear_probe_trains_only_its_head_and_reloads_for_predict(tiny_dataset, tmp_path):
    from selma3d.inference.predict import load_run, predict_path
    from selma3d.models import build_model
    from selma3d.artifacts.encoder import save_encoder
    from selma3d.models.probe import LinearProbe
    from selma3d.training.finetune import FinetuneConfig, finetune

    torch.manual_seed(5)
    encoder_path = save_encoder(build_model("unet3d", features=[4, 8, 16]), tmp_path / "enc.pt")
    saved = torch.load(encoder_path, weights_only=True)["encoder_state"]
    run = finetune(FinetuneConfig(data=str(tiny_dataset), out=str(tmp_path / "run"), pretrained=str(encoder_path),
                                  model_options={"features": [4, 8, 16]}, linear_probe=True, max_steps=3,
                                  batch_size=2, patch_size=(16, 16, 16), structures=["cfos"], labels=1,
                                  val_fraction=0.0, checkpoint_every=50, num_workers=0, progress=False, lr=0.05))
    info = json.loads((run / "run.json").read_text())
    assert info["model"]["name"] == "probe" and len(info["split"]["train"]) == 1
    loaded = load_run(run, device="cpu")
    assert isinstance(loaded.model, LinearProbe)
    state = loaded.model.state_dict()
    for key, value in saved.items():  # the encoder did not move
        assert torch.equal(state[f"base.encoder.{key}"], value), key
    fresh = LinearProbe.around(build_model("unet3d", features=[4, 8, 16]))
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("heads.") for n in trainable)
    torch.manual_seed(0)
    assert any(not torch.equal(state[n], p) for n, p in LinearProbe.around(build_model(
        "unet3d", features=[4, 8, 16])).state_dict().items() if n.startswith("heads."))
    written = predict_path(run, tiny_dataset / "annotated" / "final_test" / "cfos", tmp_path / "pred",
                           device="cpu", progress=False)
    assert written and all(p.is_file() for p in written)


# --------------------------------------------------------------------------- running a study
def _fake_arm(plan, arm, encoder, cases):
    """A stand-in for training: a record like run_arm's, so the runner's bookkeeping is tested alone."""
    rows = [{**arm.fields(), "split": c.split, "case": c.case, "test_structure": c.structure, "type": c.type,
             "dice": 0.5 + 0.01 * arm.seed, "betti0_error": 1.0} for c in cases if c.type == "spot"]
    return {"key": arm.key, "arm": arm.fields(), "train_cases": [], "type": "spot", "seconds": {}, "rows": rows}


def test_runner_resumes_with_the_arms_not_yet_done(tiny_dataset, tmp_path, monkeypatch):
    from selma3d.study import runner
    from selma3d.study.plan import StudyPlan

    calls = []
    monkeypatch.setattr(runner, "run_arm", lambda *a: calls.append(a[1].key) or _fake_arm(*a))
    monkeypatch.setattr(runner, "ensure_encoder", lambda plan, method: (tmp_path / "enc.pt", True))
    plan = StudyPlan.from_preset(str(tiny_dataset), str(tmp_path / "study"), "tiny", structures=["cfos"])
    lines = []
    first = runner.run_study(plan, log=lines.append)
    assert len(first.ran) == len(plan.arms()) == 8 and calls == [a.key for a in plan.arms()]
    assert any("arm 8/8" in line and "ETA" in line for line in lines)
    # a "killed" study: two arms lost their result files
    lost = [plan.arms()[2], plan.arms()[5]]
    for arm in lost:
        runner.arm_path(plan, arm).unlink()
    calls.clear()
    second = runner.run_study(plan, log=lines.append)
    assert calls == [a.key for a in lost] and len(second.skipped) == 6
    assert len(second.rows) == len(first.rows)
    # the training budget of a study folder cannot change under it
    other = StudyPlan.from_preset(str(tiny_dataset), str(tmp_path / "study"), "tiny", structures=["cfos"], steps=9)
    with pytest.raises(InputError, match="training budget"):
        runner.run_study(other, log=lines.append)


@pytest.mark.slow
def test_tiny_study_end_to_end_with_resume(tiny_dataset, tmp_path):
    from typer.testing import CliRunner

    from selma3d.cli import app_typer

    out = tmp_path / "study"
    args = ["study", "--data", str(tiny_dataset), "--out", str(out), "--preset", "tiny", "--methods", "byol",
            "--modes", "full", "--labels", "1,all", "--seeds", "0,1", "--structures", "cfos", "--steps", "2",
            "--pretrain-steps", "2"]
    result = CliRunner().invoke(app_typer, args)
    assert result.exit_code == 0, result.output
    assert "8 arms run now, 0 found finished" in result.output
    assert "[study] arm 8/8" in result.output
    rows = json.loads((out / "results.json").read_text())
    cases = {(r["split"], r["case"]) for r in rows if r["method"] == "otsu"}
    assert len(cases) == 2 and {r["type"] for r in rows} == {"spot"}  # cfos → every spot test case
    assert len([r for r in rows if r["method"] != "otsu"]) == 8 * len(cases)
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header.startswith("structure,method,model,mode,labels,seed,split,case")
    summary = json.loads((out / "summary.json").read_text())
    (section,) = summary["sections"]
    assert section["budgets"] == ["1", "all"] and len(section["versus_scratch"]) == 2 * 2  # 2 budgets × 2 metrics
    assert (out / "curves_cfos.png").stat().st_size > 1000
    page = (out / "index.html").read_text()
    assert "Does self-supervised pretraining pay" in page and "Otsu threshold" in page
    # the same training patches in every arm of one (structure, budget, seed); budgets nested
    def train_cases(key):
        return json.loads((out / "runs" / key / "run.json").read_text())["split"]["train"]
    for seed in (0, 1):
        for budget in ("1", "all"):
            assert train_cases(f"cfos-scratch-unet3d-full-L{budget}-s{seed}") == \
                train_cases(f"cfos-byol-unet3d-full-L{budget}-s{seed}")
        assert len(train_cases(f"cfos-byol-unet3d-full-L1-s{seed}")) == 1
        assert set(train_cases(f"cfos-byol-unet3d-full-L1-s{seed}")) < set(train_cases(f"cfos-byol-unet3d-full-Lall-s{seed}"))
    # each arm's config.yaml repeats it as a plain `selma3d finetune` run: same settings, same weights
    arm = out / "runs" / "cfos-byol-unet3d-full-L1-s1"
    repeat = CliRunner().invoke(app_typer, ["finetune", "--config", str(arm / "config.yaml"), "--out",
                                            str(tmp_path / "repeat")])
    assert repeat.exit_code == 0, repeat.output
    first, second = (json.loads((run / "run.json").read_text()) for run in (arm, tmp_path / "repeat"))
    assert first["training"] | {"out": None} == second["training"] | {"out": None}
    assert first["training"]["labels"] == 1 and first["split"] == second["split"]
    weights = [torch.load(run / "model.pt", weights_only=False)["state_dict"] for run in (arm, tmp_path / "repeat")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # kill simulation: an arm's result and the pretrained encoder are lost; the rerun redoes only them
    (out / "arms" / "cfos-byol-unet3d-full-L1-s1.json").unlink()
    (out / "pretrain" / "byol" / "encoder.pt").unlink()
    kept = (out / "arms" / "cfos-scratch-unet3d-full-L1-s0.json").stat().st_mtime_ns
    again = CliRunner().invoke(app_typer, args)
    assert again.exit_code == 0, again.output
    assert "1 arms run now, 7 found finished" in again.output
    assert (out / "pretrain" / "byol" / "encoder.pt").is_file()
    assert (out / "arms" / "cfos-scratch-unet3d-full-L1-s0.json").stat().st_mtime_ns == kept


def test_study_files_and_their_place_in_the_html_report(tmp_path):
    from selma3d.report.html import build_report
    from selma3d.study.report import write_report

    rows = []
    for seed in (0, 1, 2):
        for case, base in (("c1", 0.5), ("c2", 0.6)):
            for labels in (1, "all"):
                rows += [_row("byol", seed, case, base + 0.1 + 0.01 * seed, labels),
                         _row("scratch", seed, case, base, labels)]
    rows += [{"structure": "", "method": "otsu", "model": "", "mode": "", "labels": "", "seed": None, "case": c,
              "type": "spot", "dice": 0.3, "betti0_error": 2.0} for c in ("c1", "c2")]
    for row in rows:
        row.update(split="final_test", test_structure="cfos")
    study = tmp_path / "study"
    study.mkdir()
    analysis = write_report(study, rows)
    (section,) = analysis["sections"]
    assert [c["verdict"] for c in section["versus_scratch"] if c["metric"] == "dice"] == ["better", "better"]
    assert section["table"][0]["method"] == "scratch"
    assert section["table"][0]["cells"]["1"]["dice"]["mean"] == pytest.approx(0.55)
    lines = (study / "comparisons.csv").read_text().splitlines()
    assert lines[0].startswith("baseline,structure,model,method") and len(lines) == 1 + 2 * 2 + 2 * 2 * 2
    assert (study / "curves_cfos.png").stat().st_size > 1000
    assert "better than scratch" in (study / "index.html").read_text()
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"cases": [], "summary": {}, "failures": []}))
    page = build_report(metrics, tmp_path / "report", study=study).read_text()
    assert "Does self-supervised pretraining pay" in page and "figures/curves_cfos.png" in page
    assert (tmp_path / "report" / "figures" / "curves_cfos.png").is_file()
    with pytest.raises(InputError, match="--study"):
        build_report(metrics, tmp_path / "report2", study=tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # 5–8 min on 2 idle cores; 18.7 min on the shared VM at load ~8
def test_cpu_preset_study_on_the_small_synthetic_set(tmp_path):
    """``--preset cpu`` as shipped (model, crops, steps, pretraining) on ``synth --preset small``,
    with a reduced grid: the full grid takes about 20 minutes on 2 idle cores (BENCHMARKS.md),
    more than CI's per-test timeout."""
    from typer.testing import CliRunner

    from selma3d.cli import app_typer
    from selma3d.data.synthetic import make_dataset

    data = make_dataset(tmp_path / "small", preset="small", seed=0)
    out = tmp_path / "study"
    result = CliRunner().invoke(app_typer, ["study", "--data", str(data), "--out", str(out), "--preset", "cpu",
                                            "--methods", "byol", "--labels", "1,all", "--seeds", "0,1",
                                            "--structures", "cfos", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "[study] arm" not in result.output  # --quiet
    plan = json.loads((out / "plan.json").read_text())
    assert plan["steps"] == 100 and plan["pretrain_steps"] == 200 and plan["patch_size"] == 32
    rows = json.loads((out / "results.json").read_text())
    assert len([r for r in rows if r["method"] != "otsu"]) == 8 * 8  # 8 arms × 8 c-Fos test cases
    (section,) = json.loads((out / "summary.json").read_text())["sections"]
    assert len([c for c in section["versus_scratch"] if c["metric"] == "dice"]) == 2
    assert section["headline"][0].startswith("Self-supervised pretraining")
    # trained for real: every arm segments c-Fos better than chance
    assert all(entry["cells"]["all"]["dice"]["mean"] > 0.2 for entry in section["table"])


def test_a_new_method_is_compared_with_the_best_team_method_overall_and_per_test_structure():
    """``shape`` vs the best of the five team methods (picked per metric, budget and mode), on
    all test cases and on each test structure alone (microglia: never annotated)."""
    from selma3d.study.report import analyze
    from selma3d.study.stats import best_team_comparisons

    rows = []
    for seed in (0, 1, 2):
        for case, test_structure in (("v1", "vessel"), ("m1", "microglia")):
            gain = 0.1 if test_structure == "microglia" else 0.0
            rows += [_row("scratch", seed, case, 0.5), _row("byol", seed, case, 0.55),
                     _row("inpainting", seed, case, 0.60 + 0.001 * seed),
                     _row("shape", seed, case, 0.60 + gain + 0.01 * seed)]
            for row in rows[-4:]:
                row.update(test_structure=test_structure, split="final_test", type="tree", structure="vessel",
                           cldice=row["dice"], betti1_error=1.0)
    found = best_team_comparisons(rows, ["dice"])
    assert [(c["method"], c["baseline_method"]) for c in found] == [("shape", "inpainting")]
    # per seed: mean over the two cases of (shape − inpainting) = 0.05 + 0.009·seed
    assert found[0]["difference"] == pytest.approx(0.05 + 0.009)
    # betti errors: lower is better, so the best team method is the one with the fewest errors
    for row in rows:
        row["betti0_error"] = {"byol": 1.0, "inpainting": 3.0}.get(row["method"], 2.0)
    (errors,) = best_team_comparisons(rows, ["betti0_error"])
    assert errors["baseline_method"] == "byol" and errors["difference"] == pytest.approx(1.0)

    section = analyze(rows)["sections"][0]
    per = section["by_test_structure"]
    assert set(per) == {"microglia", "vessel"}
    microglia = [c for c in per["microglia"]["versus_team"] if c["metric"] == "dice"]
    assert microglia[0]["difference"] == pytest.approx(0.1 + 0.009) and microglia[0]["verdict"] == "better"
    vessel = [c for c in per["vessel"]["versus_team"] if c["metric"] == "dice"]
    assert vessel[0]["verdict"] == "no detectable difference"
    assert any(line.startswith("shape · full · 1 label on microglia vs best team method (inpainting")
               and line.endswith("better") for line in section["headline"])
