"""The bench's table (markdown), its two-panel plot and its before/after image figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

from find_ray.bench.bench import Point
from find_ray.bench.cells import SHOWN, Cell
from find_ray.bench.config import LINES
from find_ray.bench.schedule import TRAINED, Tuning
from find_ray.eval.report import ci_cell, fmt, md_table, score_labels
from find_ray.images import image_grid, stack


def markdown(points: list[Point], prompts: list[str], surrogate: dict) -> list[str]:
    """The bench table: one row per point, every gain paired with the base on the same noise,
    its mean over `seeds` training seeds and their spread."""
    header = [
        *("method", "point", "seeds", "exact", "exact gain vs base [95 % CI]", "gain sd"),
        *("score", "score gain [95 % CI]", "train reward", "train NFE", "inference NFE / image"),
        "wall s",
        *("KL to N(0, I)", "diversity ratio", "quality", "quality change [95 % CI]"),
        "‖z_T‖² / d",
    ]
    rows = [
        [
            *(p.method, p.label, p.seeds, fmt(p.exact), ci_cell(*p.exact_gain)),
            *(fmt(p.exact_gain_sd), f"{p.score:.3f}", ci_cell(*p.score_gain)),
            *(fmt(p.train_reward), p.train_nfe, f"{p.inference_nfe:.0f}", f"{p.wall_s:.0f}"),
            fmt(p.kl, ".3g"),
            *(fmt(p.diversity_ratio, ".2f"), fmt(p.quality, ".4f")),
            *(ci_cell(*p.quality_gain, "+.4f"), fmt(p.shell)),
        ]
        for p in points
    ]
    lines = [f"Prompts ({len(prompts)}): " + "; ".join(prompts), ""]
    lines += md_table(header, rows, "llrrlrrlrrrrrrrlr")
    if any(math.isfinite(p.train_reward) for p in points):
        lines += [
            "",
            "Train reward: the mean reward of a method's own training samples since its previous "
            "point (FIND's policy draws, DDPO's η = 1 chain, Flow-GRPO's SDE; DRTune's is the "
            "surrogate's), beside the score of the deterministic eval samples.",
        ]
    held = surrogate.get("heldout")
    if held:
        lines += [
            "",
            f"Surrogate reward (DNO, DRTune) on held-out base images: MAE {held['mae']:.3f} "
            f"(constant predictor {surrogate['mae_constant']:.3f}), Pearson "
            f"{held['pearson']:.3f}, exact recall {held['exact_recall']:.2f}.",
        ]
    return lines


def tuning_table(tuning: Tuning) -> list[str]:
    """Each grid point's exact match and score on the tuning prompts at the tuning budget, and
    its exact match at smaller budgets where a cell has them; the chosen one bold."""
    rows = []
    for method, points in tuning.rows.items():
        for params, exact, score in points:
            chosen = tuning.chosen.get(method) == params and method != "base"
            knobs = ", ".join(f"{k}={v}" for k, v in params) or "N(0, I)"
            earlier = "; ".join(f"{label}: {e:.3f}" for label, e in tuning.earlier[method, params])
            rows.append(
                [method, f"**{knobs}**" if chosen else knobs, fmt(exact), f"{score:.3f}", earlier]
            )
    header = [
        *("method", "grid point (chosen in bold)", "exact (tuning prompts)", "score"),
        "exact at smaller budgets",
    ]
    return ["Tuning grid:", "", *md_table(header, rows, "llrrl")]


def cells_table(cells: dict[str, list[Cell]], tuning: Tuning) -> list[str]:
    """The ledger: each cell's evaluated points and wall-clock time, and the total."""
    every = [*tuning.cells, *(c for mine in cells.values() for c in mine)]
    rows = [
        [c.key.name, ", ".join(e.label for e in c.evaluations), f"{c.elapsed_s / 60:.1f}"]
        for c in every
    ]
    total = sum(c.elapsed_s for c in every) / 3600
    return [
        f"Cells: {len(every)}, {total:.2f} h of wall-clock time in all on this machine.",
        "",
        *md_table(["cell", "points", "minutes"], rows, "llr"),
    ]


def headline(points: list[Point]) -> str:
    """The metric the plot shows: exact match where the reward gives it, else the score."""
    return "exact" if all(math.isfinite(p.exact) for p in points) else "score"


def knob_points(out: Path) -> list[Point]:
    """The base under other sampler settings, as `benchmarks/sampler_knobs.py` saved them in
    `out`/knobs/knobs.json (without its first row, the bench's own setting); [] if none."""
    path = out / "knobs" / "knobs.json"
    if not path.is_file():
        return []
    return [Point(**p) for p in json.loads(path.read_text())["points"][1:]]


def plot(points: list[Point], path: Path, budgets: list[int] = (), knobs: list[Point] = ()) -> None:
    """The headline metric against training NFE (trained methods, ticks at `budgets`) and
    against inference NFE per image (base, best-of-N, DNO, ReNO, the trained methods at
    their final budget, and the base under other sampler settings: `knobs`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = headline(points)
    colours = dict(zip(LINES, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, (train_ax, infer_ax) = plt.subplots(1, 2, figsize=(12.5, 4.2))
    for method in TRAINED:
        mine = [p for p in points if p.method == method]
        if mine:
            _training_line(train_ax, mine, metric, colours[method])
            last = mine[-1]
            infer_ax.scatter(
                [last.inference_nfe],
                [getattr(last, metric)],
                marker="s",
                label=method,
                color=colours[method],
            )
    for method in ("best_of_n", "find_best_of_n", "dno", "reno"):
        mine = sorted((p for p in points if p.method == method), key=lambda p: p.inference_nfe)
        if mine:
            infer_ax.plot(
                [p.inference_nfe for p in mine],
                [getattr(p, metric) for p in mine],
                marker="o",
                label=method,
                color=colours[method],
            )
    if knobs:  # the base under other sampler settings (knobs/knobs.md names each)
        x, y = [p.inference_nfe for p in knobs], [getattr(p, metric) for p in knobs]
        infer_ax.scatter(x, y, marker="x", color="black", label="base, other steps / CFG")
    base = [getattr(p, metric) for p in points if p.method == "base"]
    label = "eval exact match" if metric == "exact" else "eval reward score"
    for ax in (train_ax, infer_ax):
        _log_nfe_axis(ax, base[0] if base else None, label)
    if budgets:  # ticks at the budgets: within a decade a log axis would show none
        train_ax.set_xticks(budgets, [f"{b / 1000:g}k" for b in budgets])
    train_ax.set(
        xlabel="training NFE",
        title="Training budget\n(bars: the gain's paired 95 % CI; band: ± sd over seeds)",
    )
    infer_ax.set(xlabel="inference NFE per image", title="Inference budget")
    train_ax.legend(fontsize=8)
    infer_ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: lines cross
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _training_line(ax, mine: list[Point], metric: str, colour) -> None:
    """A trained method's points against training NFE: the paired CI of each gain as bars,
    and where several seeds stand behind a point, ± the sd of their gains as a band."""
    nfe, y = [p.train_nfe for p in mine], [getattr(p, metric) for p in mine]
    gains = [getattr(p, f"{metric}_gain") for p in mine]
    yerr = [[g - low for g, low, _ in gains], [high - g for g, _, high in gains]]
    ax.errorbar(nfe, y, yerr=yerr, marker="o", capsize=3, label=mine[0].method, color=colour)
    spread = [p for p in mine if p.seeds > 1 and metric == "exact"]  # another seed's change
    if spread:
        ax.fill_between(
            [p.train_nfe for p in spread],
            [p.exact - p.exact_gain_sd for p in spread],
            [p.exact + p.exact_gain_sd for p in spread],
            color=colour,
            alpha=0.15,
            linewidth=0,
        )


def _log_nfe_axis(ax, base: float | None, label: str) -> None:
    """An NFE axis on a log scale with plain tick labels, the base as a dashed line (labelled
    for the legend)."""
    import matplotlib.ticker

    if base is not None:
        ax.axhline(base, color="gray", linestyle="--", label="base")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylabel(label)


def before_after(prompts: list[str], base: Cell, cell: Cell):
    """Per prompt, the base's first eval images above the images from the same noise at
    `cell`'s last point (largest budget, else most inference NFE), captioned with their scores
    ("ok": an exact match); None when either has no saved images."""
    (before,) = base.evaluations
    after = max(cell.evaluations, key=lambda e: (e.budget, e.inference_nfe))
    shown = [base.images(before.label), cell.images(after.label)]
    if any(images is None for images in shown):
        return None
    blocks = []
    for i, prompt in enumerate(prompts):
        images, labels = [], []
        for evaluation, saved in zip((before, after), shown, strict=True):
            images += list(saved[i])
            n = len(saved[i])
            labels += score_labels(evaluation.scores[i][:n], evaluation.exact[i][:n])
        title = f"{prompt}   (top: base; bottom: {cell.key.method}, {after.label})"
        blocks.append(image_grid(images, labels, ncols=SHOWN, title=title))
    return stack(blocks)


def write_figures(out: Path, prompts: list[str], cells: dict[str, list[Cell]]) -> list[str]:
    """images/<method>.png: `before_after` for each method's first seed with a cell; returns
    the markdown lines that link them (none without figures)."""
    links = []
    for method, mine in cells.items():
        figure = None if method == "base" else before_after(prompts, cells["base"][0], mine[0])
        if figure is not None:
            (out / "images").mkdir(exist_ok=True)
            figure.save(out / "images" / f"{method}.png")
            links.append(f"[{method}](images/{method}.png)")
    if not links:
        return []
    return ["", f"Images, base above each method on the same eval noise: {', '.join(links)}."]
