"""What a comparison shows (compare.py) and the log lines of a run's verdict: the tables of
siqa.evaluation.comparison's result, rendered beside the run's own reports
(siqa.evaluation.reports).

    compare(...) result --tables-->          the header line, the leaderboard (with the constant
                                             predictor and why a run is a non-learner), the
                                             per-distortion table, and per comparison the
                                             Wilcoxon, corrected t, Pitman-Morgan and scene tables
                                             (Markdown, or LaTeX tabulars)
                        --write_outputs-->   leaderboard.csv (long, LEADERBOARD_COLUMNS),
                                             leaderboard.md, comparison.md (.tex), comparison.json
    judge(run)          --judgement_line-->  a run's last log line ([learned] / [non-learner])
    per_distortion(run) --per_distortion_lines--> its table in the log
"""
import csv
import io
from pathlib import Path

import numpy as np

from siqa.evaluation.comparison import BASELINE_LABEL, MIN_SPLITS_TO_TEST, TITLES
from siqa.evaluation.reports import write_json
from siqa.files import atomic_write_text

NON_LEARNER = "[non-learner]"
PER_DISTORTION_METRICS = ("srocc", "plcc", "rmse")  # the log's per-distortion table


def per_distortion_lines(table) -> list:
    """The log lines of `per_distortion`: a small table, one distortion a row."""
    head = f"  {'distortion':<12}{'pairs':>6}" + "".join(f"{TITLES[m]:>9}" for m in PER_DISTORTION_METRICS)
    rows = [f"  {d:<12}{g['pairs']:>6}" + "".join(f"{_num(g[m], 3 if m == 'rmse' else 4):>9}"
                                                 for m in PER_DISTORTION_METRICS)
            for d, g in table["groups"].items()]
    return [f"per distortion ({table['source']}):", head, *rows]


def judgement_line(judged, label) -> str:
    """The log line of `judge`: compare.py's mark and words for a non-learner, the same
    measures for a run that learned, and what they were judged on."""
    how = (f": judged on {judged['source']} against {judged['constant']}, as compare.py "
           "judges (docs/statistics.md#comparing-runs)")
    if not judged["learned"]:
        return f"{NON_LEARNER} {label} {judged['why']}{how}"
    low, high = judged["srocc_ci"]
    said = [f"has an SROCC interval [{low:.3f}, {high:.3f}] above 0" if low is not None
            else f"has an SROCC of {judged['srocc']:.3f}, above 0 (no interval)"]
    if judged["constant_rmse"] is not None:
        said.insert(0, f"beat the constant predictor (RMSE {judged['rmse']:.4g}, constant "
                       f"{judged['constant_rmse']:.4g})")
    return f"[learned] {label} " + " and ".join(said) + how


def untested_line(judged, label) -> str:
    """The log line of `judge_untested`: a non-learner's mark where the training predictions
    are near constant, else what was not judged and the spread that was measured."""
    spread = judged["spread"]
    if spread.get("fraction") is None:  # fewer than 2 pairs, or equal scores: no spread to tell
        return f"[not judged] {label} {judged['why']}"
    lo, hi = spread["score_range"]
    near = judged["learned"] is False
    measured = (f"its predictions on its training pairs spread {spread['min']:.4g} .. "
                f"{spread['max']:.4g}, {100 * spread['fraction']:.2g} % of the score range "
                f"{lo:.4g} .. {hi:.4g}{'' if near else ', not near constant'} "
                "(docs/usage.md#after-k-fold)")
    return f"{NON_LEARNER if near else '[not judged]'} {label} {judged['why']}; {measured}"


def _num(x, digits=4):
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _p(x):
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.2g}" if x < 0.001 else f"{x:.3f}"


def _render(header, rows, latex, bold):
    """rows of cells; bold(i, j) says which cells to emphasise."""
    if latex:
        esc = _latex_escape
        cell = lambda i, j, s: rf"\textbf{{{esc(s)}}}" if bold(i, j) else esc(s)
        lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\hline",
                 " & ".join(esc(h) for h in header) + r" \\", r"\hline"]
        lines += [" & ".join(cell(i, j, s) for j, s in enumerate(r)) + r" \\"
                  for i, r in enumerate(rows)]
        return "\n".join(lines + [r"\hline", r"\end{tabular}"])
    cell = lambda i, j, s: f"**{s}**" if bold(i, j) else str(s)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(i, j, s) for j, s in enumerate(r)) + " |"
              for i, r in enumerate(rows)]
    return "\n".join(lines)


def _header_line(result) -> str:
    metrics = list(result["runs"][0]["metrics"])
    alpha, n = result["alpha"], result["splits"]
    if result.get("design") == "kfold":
        shown = ("the metric of the pooled out-of-fold predictions (each pair's mean over the "
                 "repetitions) [scene-bootstrap 95 % interval, from 8 scenes on]; the tests "
                 "across splits compare the per-fold values")
    else:
        coverage = result["runs"][0]["metrics"][metrics[0]]["median_ci_coverage"]
        shown = ("median over the splits [" + (
            "one split: no interval of the median, and no test across splits"
            if coverage is None else
            f"distribution-free interval of the median, coverage {_num(100 * coverage, 1)} %")
            + "]")
    floor = result["min_wilcoxon_pvalue"]
    line = (f"{n} split(s) of {result['database']} (pair list {str(result['pairs_sha256'])[:12]}). "
            f"Leaderboard metrics: {shown}; winners only where the "
            f"Holm-adjusted p < {alpha:g} (one family per kind of test, over the "
            f"{len(result['comparisons'])} comparison(s) with {result['reference']}), and only "
            f"between runs that beat the constant predictor. With {n} "
            f"split(s) the smallest possible two-sided Wilcoxon p is 2/2^{n} = {floor:.3g}")
    if floor >= alpha:
        line += f": no difference across splits can be significant at {alpha:g}"
    return line + "."


def _leaderboard_notes(result) -> list:
    """The lines under the leaderboard: why each marked run is a non-learner, and which
    mean the constant predictor uses."""
    notes = [f"{NON_LEARNER} {r['run']} {r['why']}: no winner is called against it."
             for r in result["leaderboard"] if r.get("learned") is False]
    constant = result["constant_baseline"]
    if constant["mean_of"]:
        notes.append(f"{BASELINE_LABEL}: each split's test pairs predicted by the mean of "
                     f"{constant['mean_of']}; its correlations are undefined (—), its RMSE "
                     f"({constant['source']}) is the bar a run must beat.")
    else:
        notes.append(f"{BASELINE_LABEL}: {constant['source']}; runs judged by their SROCC only.")
    return notes


def leaderboard_table(result, latex=False) -> str:
    """The leaderboard as Markdown (or LaTeX): rank, run, one column per metric ("value
    [low, high]", "*" where the run is a significant winner against the reference), the
    constant predictor's row and, under the table, why a run is marked a non-learner."""
    board = result["leaderboard"]
    metrics = list(board[0]["metrics"])
    header = ["rank", "run"] + [TITLES[m] for m in metrics]
    rows = []
    for r in board:
        label = r["run"] + (" (reference)" if r["reference"] else "") + \
            (f" {NON_LEARNER}" if r.get("learned") is False else "")
        cells = []
        for m in metrics:
            c = r["metrics"][m]
            low, high = c["ci"]
            if r.get("baseline") and c["value"] is None:
                cells.append("—" if m != "rmse" else "n/a")
                continue
            text = _num(c["value"]) if low is None else f"{_num(c['value'])} [{_num(low, 3)}, {_num(high, 3)}]"
            cells.append(text + (" *" if c.get("winner") == r["run"] else ""))
        rows.append(["—" if r["rank"] is None else str(r["rank"]), label] + cells)
    table = _render(header, rows, latex, lambda i, j: False)
    notes = _leaderboard_notes(result)
    if latex:
        notes = [_latex_escape(n) + r" \\" for n in notes]
    return "\n".join([table, ""] + notes)


def _latex_escape(text):
    return (str(text).replace("_", r"\_").replace("%", r"\%").replace("−", "$-$")
            .replace("—", "---"))


LEADERBOARD_COLUMNS = ("rank", "run", "reference", "source", "metric", "value", "ci_low",
                       "ci_high", "interval", "test", "pvalue_holm", "winner", "folder",
                       "learned")


def leaderboard_csv(result) -> str:
    """The leaderboard as a long CSV (one row per run and metric, LEADERBOARD_COLUMNS; the
    reference's test cells empty; the constant predictor unranked, its undefined cells
    empty; learned 1 / 0, empty for the constant): what a plotting script or a spreadsheet
    reads."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LEADERBOARD_COLUMNS)
    for r in result["leaderboard"]:
        learned = "" if r.get("learned") is None else int(r["learned"])
        for m, c in r["metrics"].items():
            writer.writerow(["" if r["rank"] is None else r["rank"], r["run"], int(r["reference"]),
                             r["source"], m, _csv(c["value"]), _csv(c["ci"][0]), _csv(c["ci"][1]),
                             c["interval"] or "", c.get("test", ""), _csv(c.get("pvalue_holm")),
                             c.get("winner") or "", r["folder"], learned])
    return buf.getvalue()


def _csv(x):
    return "" if x is None else repr(float(x))


def write_outputs(folder, result, latex=False, per_distortion=False) -> list:
    """leaderboard.csv, leaderboard.md, comparison.md (or .tex; with the per-distortion table
    where asked) and comparison.json in `folder`; returns their paths."""
    folder = Path(folder)
    paths = [folder / "leaderboard.csv", folder / "leaderboard.md",
             folder / ("comparison.tex" if latex else "comparison.md"), folder / "comparison.json"]
    atomic_write_text(paths[0], leaderboard_csv(result))
    atomic_write_text(paths[1], leaderboard_table(result) + "\n")
    atomic_write_text(paths[2], tables(result, latex=latex, per_distortion=per_distortion))
    write_json(paths[3], result)
    return paths


def tables(result, latex=False, per_distortion=False) -> str:
    """Every table of a comparison (Markdown, or LaTeX), the per-distortion one where asked."""
    parts = [_header_line(result)]
    kfold = result.get("design") == "kfold"
    parts.append("Leaderboard, the runs that learned ranked best first by "
                 + TITLES[next(iter(result["leaderboard"][0]["metrics"]))]
                 + (": the pooled out-of-fold metrics [scene bootstrap 95 %]" if kfold else
                    ": the median over the splits [interval of the median]")
                 + f"; * = a significant winner against {result['reference']} (Holm); "
                 f"{NON_LEARNER} = did not beat the constant predictor or its SROCC interval "
                 "reaches 0 (after the runs that learned, unranked):")
    parts.append(leaderboard_table(result, latex))
    if per_distortion:
        parts += per_distortion_parts(result, latex)
    for comp in result["comparisons"]:
        name = f"{comp['label']} vs {comp['baseline']}"
        if comp.get("not_tested"):
            parts.append(f"{name}: not tested: {comp['not_tested']} (p-values below for the "
                         "record, no winner).")
        parts += _wilcoxon_parts(comp, name, latex)
        if comp.get("corrected_t"):
            parts += _corrected_t_parts(result, comp, name, latex)
        parts += _variance_parts(result, comp, name, latex)
        if comp.get("scene_tests"):
            parts += _scene_parts(comp, name, latex)
    return "\n\n".join(parts) + "\n"


def per_distortion_parts(result, latex=False) -> list:
    """The per-distortion table of a comparison: one row per distortion, its pairs and each
    run's value of the leaderboard's first metric, aggregated as the leaderboard aggregates
    (`per_distortion`), the runs in the leaderboard's order."""
    metric = next(iter(result["leaderboard"][0]["metrics"]))
    runs = [r["run"] for r in result["leaderboard"] if not r.get("baseline")]
    tables = result["per_distortion"]
    names = list(dict.fromkeys(d for label in runs for d in tables[label]["groups"]))
    reference = tables[result["reference"]]
    header = ["distortion", "pairs"] + runs
    rows = [[d, str((reference["groups"].get(d) or {}).get("pairs", "—"))]
            + [_num((tables[label]["groups"].get(d) or {}).get(metric)) for label in runs]
            for d in names]
    return [f"Per distortion, {TITLES[metric]} ({reference['source']}, as the leaderboard):",
            _render(header, rows, latex, lambda i, j: False)]


def _verdict(comp, cell) -> str:
    """The verdict cell of a test: the winner, n.s., or why it was not tested (too few
    splits first: then there is no p-value either)."""
    if cell.get("pvalue") is None and str(cell.get("method", "")).startswith("too few"):
        return cell["method"]
    if comp.get("not_tested"):
        return "not tested"
    return cell["winner"] or "n.s."


def _verdict_table(header, rows, winners, latex):
    """A table whose last column is the verdict, bold where a winner is named."""
    return _render(header, rows, latex, lambda i, j: j == len(header) - 1 and winners[i])


def _wilcoxon_parts(comp, name, latex):
    cells = comp["metrics"]
    header = ["metric", "median difference", f"{comp['label']} better / worse on",
              "R+ / R-", "Wilcoxon p", "Holm p", "significant winner"]
    rows = [[TITLES[m], _num(c["median_difference"]),
             f"{c['better_on']}/{c['worse_on']} of {c['n']}",
             f"{_num(c['r_plus'], 1)} / {_num(c['r_minus'], 1)}", _p(c["pvalue"]),
             _p(c["pvalue_holm"]), _verdict(comp, c)] for m, c in cells.items()]
    parts = [f"Paired differences across splits ({name}), Wilcoxon signed-rank test (winner by "
             "the sign of R+ - R-; no test below "
             f"{MIN_SPLITS_TO_TEST} splits), Holm over the metrics and the comparisons:",
             _verdict_table(header, rows, [bool(c["winner"]) for c in cells.values()], latex)]
    dropped = [f"{TITLES[m]}: {c['n']} of {c['splits']} splits ({c['dropped']['count']} "
               f"dropped: {c['dropped']['why']})" for m, c in cells.items() if c.get("dropped")]
    if dropped:
        parts.append("Splits left out of the paired tests: " + "; ".join(dropped) + ".")
    return parts


def _corrected_t_parts(result, comp, name, latex):
    cells = comp["corrected_t"]
    header = ["metric", "mean difference", "t", "df", "p", "Holm p", "significant winner"]
    rows = [[TITLES[m], _num(c["mean_difference"]), _num(c["t"], 3),
             "—" if c["df"] is None else str(c["df"]), _p(c["pvalue"]), _p(c["pvalue_holm"]),
             _verdict(comp, c)] for m, c in cells.items()]
    return [f"Paired differences across splits ({name}), Nadeau-Bengio corrected "
            f"resampled t-test (variance x (1/J + n_test/n_train), n_test/n_train = "
            f"{_num(result['test_train_ratio'], 3)}: the splits share training "
            "pairs), Holm over the metrics and the comparisons:",
            _verdict_table(header, rows, [bool(c["winner"]) for c in cells.values()], latex)]


def _variance_parts(result, comp, name, latex):
    tests = comp["variance_tests"]
    one = result["splits"] == 1
    last = ("smaller residual variance (Holm p < alpha; a description, not a verdict)" if one
            else "significant winner")
    header = ["split", "test pairs", f"residual var {comp['baseline']}",
              f"residual var {comp['label']}", "t", "p", "Holm p", last]
    if one:  # a single split: a description of its test pairs, in plain type
        verdicts = ["not tested" if comp.get("not_tested") else f.get("smaller_variance") or "n.s."
                    for f in tests]
    else:
        verdicts = [_verdict(comp, f) for f in tests]
    rows = [[str(f["split"]), str(f["pairs"]), _num(f["var_baseline"], 3), _num(f["var_other"], 3),
             _num(f["t"], 3), _p(f["pvalue"]), _p(f["pvalue_holm"]), v]
            for f, v in zip(tests, verdicts)]
    return [f"Per split, Pitman-Morgan test of the paired residual variances after each "
            f"run's logistic ({name}), Holm over the splits and the comparisons; it assumes "
            "independent test pairs (pairs of one scene are not): a per-split description:",
            _verdict_table(header, rows, [bool(f["winner"]) for f in tests], latex)]


def _scene_parts(comp, name, latex):
    cells = comp["scene_tests"]
    header = ["metric", f"difference ({comp['label']} - {comp['baseline']})", "scenes",
              "p", "Holm p", "significant winner"]
    rows = [[TITLES[m], _num(c["difference"]), str(c["scenes"]), _p(c["pvalue"]),
             _p(c["pvalue_holm"]), _verdict(comp, c)] for m, c in cells.items()]
    return [f"Pooled out-of-fold predictions (k-fold, mean over the repetitions), "
            f"paired scene permutation test ({name}), Holm over the metrics; the "
            "test to quote for a k-fold comparison:",
            _verdict_table(header, rows, [bool(c["winner"]) for c in cells.values()], latex)]
