"""Rank several submissions on the same ground truth, "rank then aggregate" as MICCAI challenges do.

Ranking rule:

1. For every ground-truth case and every metric of its type (spot: Dice, β0 error; tree: Dice,
   clDice, β0 error, β1 error), rank the teams: rank 1 is best — the highest Dice/clDice or
   the lowest Betti error. Ties get the mean of the ranks they span (1, 2.5, 2.5, 4). A team
   whose case failed (missing or unreadable prediction...) counts as worse than every scored
   team on that case; several such teams tie.
2. A team's rank for a metric column (type, metric) is its mean rank over that type's cases.
3. Its score is the mean of its metric-column ranks (every column counts the same, whatever
   its number of cases); the final position sorts the scores, lowest first, with equal scores
   sharing the better position (1, 2, 2, 4).

The tables follow the SELMA3D paper's Tables 4 and 5: one row per team and, per structure
type, "mean ± std" of each metric over the cases the team got scored.

The edition (2024 by default, or 2025/2026: :mod:`.editions`) decides the case categories,
the metric columns and which direction is better; the ranking rule above is the same for all.
A NaN score (2026's clDice or PQ of a degenerate case) ranks like a failed case: last.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from ..errors import InputError
from ..utils.atomic import atomic_write
from .challenge import evaluate, ground_truth_cases, write_result
from .editions import DEFAULT_EDITION, get_edition

METRIC_LABELS = {"dice": "Dice", "cldice": "clDice", "betti0_error": "β0 error", "betti1_error": "β1 error",
                 "betti_matching_error_0": "BM error 0", "betti_matching_error_1": "BM error 1",
                 "hd95": "HD95", "panoptic_quality": "PQ"}
METRIC_LATEX = {"dice": "Dice", "cldice": "clDice", "betti0_error": r"$\beta_0$ error",
                "betti1_error": r"$\beta_1$ error", "betti_matching_error_0": r"BM$_0$ error",
                "betti_matching_error_1": r"BM$_1$ error", "hd95": "HD95", "panoptic_quality": "PQ"}
TYPE_LABELS = {"spot": "spot-like", "tree": "tree-like", "isolated": "isolated", "contiguous": "contiguous"}


@dataclass
class TeamStanding:
    team: str
    rank: int
    score: float  # mean of the metric-column ranks
    column_ranks: dict[str, float]  # "tree/dice" -> mean rank over tree cases
    summary: dict  # challenge.summarize() of the team's scored cases
    failures: list[dict] = field(default_factory=list)
    edition: str = DEFAULT_EDITION


def parse_submissions(items: list[str]) -> dict[str, Path]:
    """``["teamA=preds/a", ...]`` → {team: path}; a clear error for malformed or repeated teams."""
    submissions: dict[str, Path] = {}
    for item in items:
        team, sep, path = item.partition("=")
        team = team.strip()
        if not sep or not team or not path:
            raise InputError(f"submission {item!r}: expected TEAM=PRED_DIR")
        if team in submissions:
            raise InputError(f"team {team!r} is given twice")
        submissions[team] = Path(path)
    if not submissions:
        raise InputError("no submissions given (TEAM=PRED_DIR ...)")
    return submissions


def columns_for(case_types: dict[str, str], edition: str = DEFAULT_EDITION) -> list[tuple[str, str]]:
    """(type, metric) columns for the types present among the cases, in table order."""
    present = set(case_types.values())
    return [(kind, metric) for kind, metrics in get_edition(edition).metrics.items() if kind in present
            for metric in metrics]


def _rank_key(case: dict | None, metric: str, sign: float) -> float:
    """Lower is better; a missing case or a NaN score ranks last."""
    if case is None:
        return np.inf
    value = float(case[metric])
    return np.inf if np.isnan(value) else sign * value


def rank_teams(case_types: dict[str, str], results: dict[str, dict],
               edition: str = DEFAULT_EDITION) -> list[TeamStanding]:
    """Rank then aggregate (module docstring). ``results[team]`` is an ``evaluate()`` result."""
    rules = get_edition(edition)
    teams = list(results)
    scored = {team: {c["case"]: c for c in results[team]["cases"]} for team in teams}
    columns = columns_for(case_types, rules.name)
    column_ranks: dict[str, dict[str, float]] = {team: {} for team in teams}
    for kind, metric in columns:
        cases = [case for case, t in case_types.items() if t == kind]
        sign = -1.0 if rules.higher_is_better[metric] else 1.0
        per_case = []
        for case in cases:
            keys = [_rank_key(scored[team].get(case), metric, sign) for team in teams]
            per_case.append(rankdata(keys, method="average"))
        mean = np.mean(per_case, axis=0)
        for team, value in zip(teams, mean):
            column_ranks[team][f"{kind}/{metric}"] = float(value)
    scores = {team: float(np.mean(list(column_ranks[team].values()))) if columns else 0.0 for team in teams}
    positions = rankdata([scores[t] for t in teams], method="min")
    standings = [TeamStanding(team, int(pos), scores[team], column_ranks[team], results[team]["summary"],
                              results[team]["failures"], rules.name) for team, pos in zip(teams, positions)]
    return sorted(standings, key=lambda s: (s.rank, s.team))


def run_leaderboard(gt: str | os.PathLike, submissions: dict[str, Path], jobs: int | None = None,
                    progress: bool = True, structure: str | None = None,
                    edition: str = DEFAULT_EDITION) -> tuple[list[TeamStanding], dict]:
    """Score every submission against GT by an edition's rules and rank them.

    Returns (standings, results per team). Cases the edition does not route are left out of
    the ranking (and reported as failures in every team's results).
    """
    rules = get_edition(edition)
    case_types = {}
    for c in ground_truth_cases(gt, structure):
        category = rules.route(c.case, structure, c.type)
        if category in rules.metrics:
            case_types[c.case] = category
    if not case_types:
        raise InputError(f"{gt}: no ground-truth case that the {rules.name} edition scores ({rules.routing_help})")
    results = {team: evaluate(path, gt, jobs=jobs, progress=progress, structure=structure, edition=rules.name)
               for team, path in submissions.items()}
    return rank_teams(case_types, results, rules.name), results


# ----------------------------------------------------------------------------- tables
def _mean_std(stats: dict | None, digits: int, pm: str) -> str:
    if not stats or stats["mean"] is None:
        return "–"
    if stats["std"] is None:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f}{pm}{stats['std']:.{digits}f}"


def _digits(metric: str) -> int:
    return 4 if metric in ("dice", "cldice") else 2


def _metrics(standings: list[TeamStanding]) -> dict[str, tuple[str, ...]]:
    return get_edition(standings[0].edition if standings else DEFAULT_EDITION).metrics


def _types(standings: list[TeamStanding]) -> list[str]:
    present = {col.split("/")[0] for s in standings for col in s.column_ranks}
    return [kind for kind in _metrics(standings) if kind in present]


def _edition_line(standings: list[TeamStanding]) -> str:
    edition = standings[0].edition if standings else DEFAULT_EDITION
    return f"Ranked by the SELMA3D {edition} edition's metrics (rank then aggregate)."


def to_markdown(standings: list[TeamStanding]) -> str:
    out = [_edition_line(standings) + "\n"]
    for kind in _types(standings):
        metrics = _metrics(standings)[kind]
        out.append(f"### {TYPE_LABELS[kind]} structures (mean ± std)\n")
        out.append("| Team | " + " | ".join(METRIC_LABELS[m] for m in metrics) + " |")
        out.append("|---|" + "---|" * len(metrics))
        for s in standings:
            cells = [_mean_std(s.summary.get(kind, {}).get(m), _digits(m), " ± ") for m in metrics]
            out.append(f"| {s.team} | " + " | ".join(cells) + " |")
        out.append("")
    columns = list(standings[0].column_ranks) if standings else []
    out.append("### Ranking (mean rank per metric; score = mean of those)\n")
    out.append("| Rank | Team | Score | " + " | ".join(columns) + " | Failed cases |")
    out.append("|---|---|---|" + "---|" * len(columns) + "---|")
    for s in standings:
        ranks = " | ".join(f"{s.column_ranks[c]:.2f}" for c in columns)
        out.append(f"| {s.rank} | {s.team} | {s.score:.3f} | {ranks} | {len(s.failures)} |")
    return "\n".join(out) + "\n"


def to_csv(standings: list[TeamStanding]) -> str:
    import csv
    import io

    kinds = _types(standings)
    header = ["rank", "team", "score", "failed_cases"]
    for kind in kinds:
        for m in _metrics(standings)[kind]:
            header += [f"{kind}_{m}_mean", f"{kind}_{m}_std", f"{kind}_{m}_n", f"{kind}_{m}_mean_rank"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for s in standings:
        row = [s.rank, s.team, f"{s.score:.6g}", len(s.failures)]
        for kind in kinds:
            for m in _metrics(standings)[kind]:
                stats = s.summary.get(kind, {}).get(m) or {}
                std = stats.get("std")
                row += [stats.get("mean", ""), "" if std is None else std, stats.get("n", 0),
                        s.column_ranks.get(f"{kind}/{m}", "")]
        writer.writerow(row)
    return buffer.getvalue()


def _latex_escape(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text)


def to_latex(standings: list[TeamStanding]) -> str:
    out = [f"% {_edition_line(standings)}"]
    for kind in _types(standings):
        metrics = _metrics(standings)[kind]
        out += [f"% {TYPE_LABELS[kind]} structures: mean $\\pm$ std per team",
                "\\begin{tabular}{l" + "c" * len(metrics) + "}", "\\hline",
                "Team & " + " & ".join(METRIC_LATEX[m] for m in metrics) + " \\\\", "\\hline"]
        for s in standings:
            cells = [_mean_std(s.summary.get(kind, {}).get(m), _digits(m), " $\\pm$ ") for m in metrics]
            out.append(_latex_escape(s.team) + " & " + " & ".join(cells) + " \\\\")
        out += ["\\hline", "\\end{tabular}", ""]
    out += ["% final ranking (rank then aggregate)", "\\begin{tabular}{clc}", "\\hline",
            "Rank & Team & Score \\\\", "\\hline"]
    out += [f"{s.rank} & {_latex_escape(s.team)} & {s.score:.3f} \\\\" for s in standings]
    out += ["\\hline", "\\end{tabular}", ""]
    return "\n".join(out)


def write_outputs(standings: list[TeamStanding], results: dict[str, dict], out: str | os.PathLike) -> Path:
    """leaderboard.{md,csv,tex,json} and teams/<team>.json (each team's full metrics) under ``out``."""
    out = Path(out)
    atomic_write(out / "leaderboard.md", to_markdown(standings))
    atomic_write(out / "leaderboard.csv", to_csv(standings))
    atomic_write(out / "leaderboard.tex", to_latex(standings))
    atomic_write(out / "leaderboard.json", json.dumps(
        [{"rank": s.rank, "team": s.team, "score": s.score, "edition": s.edition, "column_ranks": s.column_ranks,
          "summary": s.summary, "failures": s.failures} for s in standings], indent=2) + "\n")
    for team, result in results.items():
        write_result(out / "teams" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', team)}.json", result)
    return out
