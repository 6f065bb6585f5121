"""Does a noise that works for one prompt work for another? The ceiling of amortized transfer.

Every prompt of the train and held-out suites is sampled by the base model from the *same* k
noises z_1..z_k (the config's sampler), giving exact-match outcomes E[prompt, n] in {0, 1}. For
a held-out prompt h and a train prompt t, the exact match of h on the noises that worked for t,
P(E_h = 1 | E_t = 1), is what a policy would reach that put all its mass on t's good noises:
the most that what FIND learns on t can pass to h. Its lift over h's base rate P(E_h = 1) is
reported for three choices of t:

- nearest: the train prompt nearest to h by text embedding (what an amortized policy sees);
- same counts: the nearest train prompt with the same object counts (e.g. "two ... and a ...");
- random: a random train prompt (the control: the lift of a noise that is good in general).

and, as a reference, train -> train (each train prompt's nearest other train prompt). Each lift
comes with a 95 % bootstrap CI over prompts; phi is the correlation of E_h and E_t over noises.

    python benchmarks/noise_transfer.py --config configs/find-shapes-amortized.yaml --samples 64

Writes benchmarks/results/alignment/noise_transfer.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from find_ray.algo.noise import seeded_normal
from find_ray.backends import make_backend
from find_ray.config import load_config
from find_ray.eval.evaluate import evaluate
from find_ray.eval.report import ci_cell, md_table, publish, write_json
from find_ray.prompts import load_suite
from find_ray.rewards import make_reward
from find_ray.shapes.captions import parse_caption

RESULTS = Path("benchmarks/results") / "alignment"


def counts_of(prompt: str) -> tuple[int, ...]:
    """A caption's object counts, sorted: "two red circles and a blue square" -> (1, 2)."""
    return tuple(sorted(parse_caption(prompt).values()))


def conditional_rate(outcomes_h: np.ndarray, outcomes_t: np.ndarray) -> float:
    """P(E_h = 1 | E_t = 1) over the shared noises (NaN when t never succeeded)."""
    good = outcomes_t > 0.5
    return float(outcomes_h[good].mean()) if good.any() else float("nan")


def phi(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two outcome vectors (NaN when either is constant)."""
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def pick_partners(
    rule: str, targets: list[int], sources: list[int], sim: np.ndarray, prompts: list[str]
) -> dict[int, int]:
    """For each target prompt, the source prompt a rule picks (targets without one are left out)."""
    rng = np.random.default_rng(0)
    partners = {}
    for h in targets:
        candidates = [t for t in sources if t != h]
        if rule == "same counts":
            candidates = [t for t in candidates if counts_of(prompts[t]) == counts_of(prompts[h])]
        if not candidates:
            continue
        if rule == "random":
            partners[h] = int(rng.choice(candidates))
        else:
            partners[h] = max(candidates, key=lambda t: sim[h, t])
    return partners


def transfer_row(name: str, partners: dict[int, int], exact: np.ndarray, n_boot: int = 2000):
    """Base rate, rate on the partner's good noises and their difference with a bootstrap CI
    over target prompts."""
    pairs = [(h, t) for h, t in partners.items() if exact[t].any()]
    base = np.array([exact[h].mean() for h, _ in pairs])
    given = np.array([conditional_rate(exact[h], exact[t]) for h, t in pairs])
    lift = given - base
    rng = np.random.default_rng(0)
    boot = [lift[rng.integers(0, len(lift), len(lift))].mean() for _ in range(n_boot)]
    phis = [phi(exact[h], exact[t]) for h, t in pairs]
    return {
        "rule": name,
        "pairs": len(pairs),
        "base": float(base.mean()),
        "on_partner_good_noises": float(given.mean()),
        "lift": float(lift.mean()),
        "low": float(np.quantile(boot, 0.025)),
        "high": float(np.quantile(boot, 0.975)),
        "phi": float(np.nanmean(phis)) if not np.isnan(phis).all() else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/find-shapes-amortized.yaml")
    parser.add_argument("--samples", type=int, default=64, help="shared noises k")
    parser.add_argument("--seed", type=int, default=4321)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("overrides", nargs="*", help="config overrides (model.*)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    train, heldout = load_suite("train"), load_suite("heldout")
    prompts = train + heldout
    backend, reward = make_backend(cfg.model), make_reward(cfg.reward)
    shared = seeded_normal((args.samples, *backend.latent_shape), args.seed, 0)
    results = evaluate(
        backend,
        reward,
        prompts,
        args.samples,
        args.seed,
        cfg.eval.batch_size,
        transform=lambda _prompt, _eps: shared,  # every prompt gets the same k noises
    )
    exact = np.stack([r.exact for r in results]).astype(float)
    emb = torch.nn.functional.normalize(backend.encode_prompts(prompts), dim=1)
    sim = (emb @ emb.T).numpy()
    train_ids = list(range(len(train)))
    held_ids = list(range(len(train), len(prompts)))
    rows = [
        transfer_row(f"held-out <- {rule} train prompt", pick, exact)
        for rule in ("nearest", "same counts", "random")
        for pick in [pick_partners(rule, held_ids, train_ids, sim, prompts)]
    ]
    rows.append(
        transfer_row(
            "train <- nearest other train prompt",
            pick_partners("nearest", train_ids, train_ids, sim, prompts),
            exact,
        )
    )
    command = "python benchmarks/noise_transfer.py " + " ".join(
        ["--config", args.config, "--samples", str(args.samples), *args.overrides]
    )
    setting = (
        f"Model: {cfg.model.path}, {cfg.model.steps} steps, CFG {cfg.model.guidance}; "
        f"{len(train)} train + {len(heldout)} held-out prompts, each on the same "
        f"{args.samples} noises."
    )
    lines = [f"`{command}`", "", setting, "", *transfer_table(rows, exact)]
    out = Path(args.out)
    data = {"command": command, "rows": rows, "prompts": prompts, "exact": exact.tolist()}
    write_json(out / "noise_transfer.json", data)
    publish(out / "noise_transfer.md", lines)


def transfer_table(rows: list[dict], exact: np.ndarray) -> list[str]:
    """The transfer rows, and how much a noise's success varies across prompts."""
    header = ["target <- partner", "pairs", "base exact", "exact on partner's good noises"]
    header += ["lift [95 % CI]", "phi"]
    cells = [
        [r["rule"], r["pairs"], f"{r['base']:.3f}", f"{r['on_partner_good_noises']:.3f}"]
        + [ci_cell(r["lift"], r["low"], r["high"]), f"{r['phi']:+.3f}"]
        for r in rows
    ]
    general = exact.mean(0)  # how good each noise is across all prompts
    binomial = np.sqrt(exact.mean() * (1 - exact.mean()) / exact.shape[0])
    return [
        *md_table(header, cells, "lrrrlr"),
        "",
        f"A noise's exact-match rate over all {exact.shape[0]} prompts ranges "
        f"{general.min():.2f} to {general.max():.2f} (std {general.std():.3f}; a binomial "
        f"spread alone would give {binomial:.3f}).",
    ]


if __name__ == "__main__":
    main()
