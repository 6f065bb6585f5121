"""`find-ray eval --run RUN_DIR`: a trained run's policy against the base on a prompt suite.

Both are sampled from the same eval noise (paired), so the report's gains carry paired
bootstrap CIs. An amortized policy generates for every prompt; a per-prompt one only for the
prompts it was trained on, and the others fall back to the base N(0, I) (the report lists them).
"""

from __future__ import annotations

from pathlib import Path

import torch

from find_ray.algo.gaussian import standard_normal_kl
from find_ray.backends import make_backend
from find_ray.config import FindRayConfig, load_saved_config
from find_ray.eval.evaluate import NoiseTransform, PromptResult, evaluate, evaluate_policy
from find_ray.eval.report import write_find_report
from find_ray.prompts import load_suite, train_prompts
from find_ray.rewards import check_prompts, evaluation_reward
from find_ray.runs.folder import RunPolicy, load_run_policy, read_run_config


def run_transform(
    run: RunPolicy, prompts: list[str], encode
) -> tuple[NoiseTransform, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """eps -> the run's latent for it (`RunPolicy.noise`) for the prompts its policy covers
    (eps itself, the base, for the rest), and those prompts' (mu, sigma) by suite index."""
    covered = [i for i, p in enumerate(prompts) if run.covers(p)]
    params = {}
    if covered:
        mu, sigma = run.mean_std([prompts[i] for i in covered], encode)
        params = {i: (mu[n : n + 1], sigma[n : n + 1]) for n, i in enumerate(covered)}

    def transform(prompt_index: int, eps: torch.Tensor) -> torch.Tensor:
        return run.noise(prompts[prompt_index], eps, encode)

    return transform, params


def run_config(run_dir: str | Path, overrides: list[str]) -> FindRayConfig:
    """The run's config.yaml with `overrides`; a missing folder or file is one clear error."""
    read_run_config(run_dir)
    return load_saved_config(Path(run_dir).expanduser() / "config.yaml", overrides)


def evaluate_run(
    run_dir: str | Path,
    suite: str | None,
    overrides: list[str],
    out_dir: str | None = None,
    base: list[PromptResult] | None = None,
) -> Path:
    """Evaluates the run's newest policy and the base on `suite` (None: the run's training
    prompts); writes report.md, metrics.json and before_after.png; returns the report path.
    `base`: the base's results on the same suite and eval settings, if already computed."""
    run_dir = Path(run_dir).expanduser()
    cfg = run_config(run_dir, overrides)
    trained_on = train_prompts(cfg)
    prompts = trained_on if suite is None else load_suite(suite)
    check_prompts(cfg.reward, prompts)
    run = load_run_policy(run_dir, trained_on)
    backend = make_backend(cfg.model)
    reward = evaluation_reward(cfg)
    transform, params = run_transform(run, prompts, backend.encode_prompts)
    base_only = [p for i, p in enumerate(prompts) if i not in params]
    if base_only:
        print(
            f"{len(base_only)} of {len(prompts)} prompts have no trained policy in this "
            "per-prompt run: they are sampled from the base N(0, I)"
        )
    before = base or evaluate_policy(backend, reward, prompts, cfg.eval)
    if [r.prompt for r in before] != prompts:
        raise ValueError("the base results given are for other prompts")
    e = cfg.eval
    after = evaluate(
        backend,
        reward,
        prompts,
        e.samples_per_prompt,
        e.seed,
        e.batch_size,
        e.grid_samples,
        transform=transform,
        best_of=e.best_of,
    )
    kl = [standard_normal_kl(mu, sigma).item() for mu, sigma in params.values()]
    kind = "amortized" if run.amortized else "per-prompt"
    name = Path(suite).stem if suite else "training"
    header = [
        f"# {kind.capitalize()} policy of {run_dir} on the {name} prompts",
        "",
        f"Policy version {run.version} ({run.path}), trained on {len(trained_on)} prompts; "
        f"{len(prompts)} prompts evaluated with {e.samples_per_prompt} samples each on seed "
        f"{e.seed}, base and trained on the same noise.",
    ]
    if base_only:
        header += ["", f"No trained policy, sampled from the base: {', '.join(base_only)}."]
    if kl:
        header += [
            "",
            f"KL(policy || N(0, I)) per prompt, summed over the latent: mean "
            f"{sum(kl) / len(kl):.2f}, max {max(kl):.2f}.",
        ]
    out = Path(out_dir) if out_dir else run_dir / f"eval-{name}"
    out.mkdir(parents=True, exist_ok=True)
    extra = {
        "run": str(run_dir),
        "policy_kind": kind,
        "policy_version": run.version,
        "suite": name,
        "base_only": base_only,
        "kl_to_prior": kl,
    }
    return write_find_report(cfg, prompts, before, after, out, header=header, extra=extra).path
