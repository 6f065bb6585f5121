"""Reports: markdown tables and cells, the suite report, the base-vs-trained report.

One place formats every table the project writes (evaluation, runs, the bench, benchmarks).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from find_ray.config import EvalConfig, FindRayConfig
from find_ray.eval.evaluate import PromptResult
from find_ray.eval.shell import shell_summary
from find_ray.eval.stats import paired_bootstrap_ci
from find_ray.images import image_grid, stack


def fmt(value: float, spec: str = ".3f") -> str:
    """A table cell: the number, or "n/a" for a metric the reward does not give."""
    return "n/a" if math.isnan(value) else format(value, spec)


def ci_cell(gain: float, low: float = math.nan, high: float = math.nan, spec: str = "+.3f") -> str:
    """A gain with its confidence interval, "+0.123 [+0.045, +0.201]"; "n/a" for NaN, the gain
    alone when it has no interval."""
    if math.isnan(gain):
        return "n/a"
    if math.isnan(low):
        return format(gain, spec)
    return f"{gain:{spec}} [{low:{spec}}, {high:{spec}}]"


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> list[str]:
    """A markdown table's lines; `align` has one letter per column, l or r (default: the first
    column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    cells = [f"| {' | '.join(str(c) for c in row)} |" for row in (header, *rows)]
    return [cells[0], rule, *cells[1:]]


def publish(path: Path, lines: list[str]) -> None:
    """Writes a results page (markdown lines) to `path`, with a final newline, and prints it."""
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_json(path: Path, data: object) -> None:
    """`data` as indented JSON with a final newline (every results file is written this way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def summarise(results: list[PromptResult]) -> dict[str, float]:
    """Suite means of the per-prompt metrics."""
    rows = [r.metrics() for r in results]
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def suite_table(results: list[PromptResult]) -> str:
    """Per-prompt means of one policy on a suite, and the suite mean."""
    k = len(results[0].scores)
    header = ["prompt", "mean score", "exact", "colours present", f"best-of-{k} exact"]
    keys = ("mean_score", "exact", "colours_present")
    rows = [
        [r.prompt, *(fmt(r.metrics()[key]) for key in keys), fmt(r.exact.max(), ".0f")]
        for r in results
    ]
    s = summarise(results)
    rows.append(["**mean**", *(f"**{fmt(s[key])}**" for key in (*keys, "best_of_k_exact"))])
    return "\n".join(md_table(header, rows))


def score_labels(scores: list[float], exact: list[float]) -> list[str]:
    """Image captions for grids: the score, and "ok" on exact matches."""
    return [f"{s:.2f}" + (" ok" if e > 0.5 else "") for s, e in zip(scores, exact, strict=True)]


def suite_grid(results: list[PromptResult]):
    """One labelled row of samples per prompt, each image captioned with its score."""
    return stack(
        [
            image_grid(r.images, score_labels(r.scores.tolist(), r.exact.tolist()), title=r.prompt)
            for r in results
        ]
    )


def write_report(
    results: list[PromptResult], out_dir: str | Path, title: str, settings: dict
) -> Path:
    """Writes report.md, metrics.json and grid.png to out_dir; returns the markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suite_grid(results).save(out / "grid.png")
    summary = {"settings": settings, "summary": summarise(results)}
    write_json(
        out / "metrics.json", {**summary, "prompts": {r.prompt: r.metrics() for r in results}}
    )
    settings_line = "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())
    lines = [f"# {title}", "", settings_line, "", suite_table(results), "", "![samples](grid.png)"]
    (out / "report.md").write_text("\n".join([*lines, ""]))
    return out / "report.md"


Gains = dict[str, tuple[float, float, float]]  # metric -> (gain, low, high), paired 95 % CI


def paired_gains(before: list[PromptResult], after: list[PromptResult]) -> Gains:
    """Score and exact-match gains of `after` over `before` (same eval noise) with paired
    bootstrap CIs; a reward without exact match gives the score only."""
    return {
        metric: paired_bootstrap_ci(_matrix(before, metric), _matrix(after, metric))
        for metric in ("scores", "exact")
        if np.isfinite(_matrix(before, metric)).all()
    }


def mean_diversity(before: list[PromptResult], after: list[PromptResult]) -> dict[str, float]:
    """Suite-mean diversity of base and trained images, and their ratio."""
    base = float(np.mean([r.diversity for r in before]))
    trained = float(np.mean([r.diversity for r in after]))
    return {"base": base, "trained": trained, "ratio": trained / base}


MEANS = ("score_before", "score_after", "exact_before", "exact_after")


def quality_and_shell(before: list[PromptResult], after: list[PromptResult]) -> dict:
    """Image quality (the quality scorer's score and figures: base, trained, the paired gain
    with its CI, the relative change) and where the initial noises sit on the Gaussian shell,
    each for base and trained policy on the same eval noise."""
    out: dict = {}
    if before[0].quality is not None and after[0].quality is not None:
        rows = {"quality": ([r.quality for r in before], [r.quality for r in after])}
        for key in before[0].figures:
            rows[key] = ([r.figures[key] for r in before], [r.figures[key] for r in after])
        for key, (b, a) in rows.items():
            base, trained = float(np.mean(b)), float(np.mean(a))
            gain, low, high = paired_bootstrap_ci(np.stack(b), np.stack(a))
            relative = trained / base - 1 if base else math.nan
            out[key] = {"base": base, "trained": trained, "gain": gain, "low": low, "high": high}
            out[key]["relative"] = relative
    if before[0].shell is not None and after[0].shell is not None:
        d = before[0].latent_dim
        out["shell"] = {
            "base": shell_summary(np.concatenate([r.shell for r in before]), d),
            "trained": shell_summary(np.concatenate([r.shell for r in after]), d),
            "d": d,
        }
    return out


SHELL_ROWS = {
    "shell_mean": "‖z_T‖² / d, mean",
    "shell_outside_99": "off the shell (outside χ²_d's central 99 %)",
}


def quality_table(figures: dict) -> list[str]:
    """The report's quality-and-shell table (`quality_and_shell`); no lines when it is empty."""
    rows = []
    for name, f in figures.items():
        if name != "shell":
            change = ci_cell(f["gain"], f["low"], f["high"], "+.4f")
            rows.append([name, fmt(f["base"], ".4f"), fmt(f["trained"], ".4f"), change])
            rows[-1].append(fmt(100 * f["relative"], "+.1f"))
    if "shell" in figures:
        base, trained = figures["shell"]["base"], figures["shell"]["trained"]
        for key, label in SHELL_ROWS.items():
            rows.append([label, fmt(base[key], ".4f"), fmt(trained[key], ".4f"), "", ""])
    header = ["quality and shell", "base", "trained", "change [95 % CI]", "relative %"]
    return md_table(header, rows, "lrrlr") if rows else []


def before_after_table(before: list[PromptResult], after: list[PromptResult]) -> list[str]:
    """Per-prompt score and exact match of base and trained policy, and the suite means."""
    header = ["prompt", "score before", "score after", "exact before", "exact after"]
    rows = [
        [
            b.prompt,
            fmt(b.scores.mean()),
            fmt(a.scores.mean()),
            fmt(b.exact.mean()),
            fmt(a.exact.mean()),
        ]
        for b, a in zip(before, after, strict=True)
    ]
    rows.append(["**mean**", *(f"**{fmt(m)}**" for m in suite_means(before, after))])
    return md_table(header, rows)


def suite_means(before: list[PromptResult], after: list[PromptResult]) -> list[float]:
    """Suite means in the order of MEANS."""
    return [
        float(np.mean([getattr(r, metric).mean() for r in results]))
        for metric in ("scores", "exact")
        for results in (before, after)
    ]


def gain_lines(gains: Gains, diversity: dict[str, float], e: EvalConfig) -> list[str]:
    """The gains with their paired bootstrap CIs and the diversity of both policies."""
    lines = []
    for metric, (gain, low, high) in gains.items():
        ci = f"[{low:+.3f}, {high:+.3f}]"
        lines.append(f"\n**{metric} gain**: {gain:+.3f} (95 % paired bootstrap CI {ci})")
    lines.append(
        f"\n**Diversity** (mean pairwise RMS distance of a prompt's {e.samples_per_prompt} "
        f"images): base {diversity['base']:.3f}, trained {diversity['trained']:.3f}, "
        f"ratio {diversity['ratio']:.2f}"
    )
    return lines


@dataclass
class FindReport:
    path: Path  # report.md
    gains: Gains
    figures: dict  # `quality_and_shell`


def write_find_report(
    cfg: FindRayConfig,
    prompts: list[str],
    before: list[PromptResult],
    after: list[PromptResult],
    out: Path,
    sections: Sequence[str] = (),
    extra: dict | None = None,
    header: list[str] | None = None,
) -> FindReport:
    """Base vs trained policy on the same eval seeds: report.md (table, paired bootstrap CIs,
    image diversity), metrics.json and before_after.png. `header` replaces the training run's
    title and description."""
    e = cfg.eval
    gains, diversity = paired_gains(before, after), mean_diversity(before, after)
    stack([suite_grid(before), suite_grid(after)]).save(out / "before_after.png")
    header = header or [
        "# FIND run",
        "",
        f"{len(prompts)} prompts, {cfg.train.iterations} iterations x "
        f"{cfg.train.samples_per_prompt} samples per prompt; evaluated with "
        f"{e.samples_per_prompt} samples per prompt on seed {e.seed} (same noise before/after).",
    ]
    figures = quality_and_shell(before, after)
    lines = [*header, "", *before_after_table(before, after), *gain_lines(gains, diversity, e)]
    lines += ["", *quality_table(figures)] if figures else []
    lines += [*sections, "", "Top: base policy; bottom: trained policy."]
    lines += ["", "![](before_after.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    means = suite_means(before, after)
    metrics = {
        "gains": {m: dict(zip(("gain", "low", "high"), g, strict=True)) for m, g in gains.items()},
        "means": dict(zip(MEANS, means, strict=True)),
        "diversity": diversity,
        "quality": figures,
        "eval": asdict(e),
        "prompts": prompts,
        "samples": {  # per prompt, per eval sample: for best-of-N and other reanalyses
            f"{metric}_{policy}": _matrix(results, metric).tolist()
            for metric in ("scores", "exact")
            for policy, results in (("before", before), ("after", after))
        },
    }
    write_json(out / "metrics.json", {**metrics, **(extra or {})})
    return FindReport(out / "report.md", gains, figures)


def _matrix(results: list[PromptResult], metric: str) -> np.ndarray:
    return np.stack([getattr(r, metric) for r in results])
