"""`find-ray`: sample | eval | train | bench | serve | pretrain-shapes.

Every command takes `--config FILE` and `key=value` overrides; user errors print one line and
exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from find_ray.errors import FindRayError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.steps=10")


def _config(args):
    from find_ray.config import load_config

    return load_config(args.config, args.overrides)


def cmd_sample(args) -> None:
    from find_ray.eval.report import score_labels
    from find_ray.images import image_grid, to_uint8
    from find_ray.runs.sample import describe, sample

    run = None
    if args.run:
        from find_ray.prompts import train_prompts
        from find_ray.runs.folder import load_run_policy, read_run_config
        from find_ray.runs.run_eval import run_config

        cfg = run_config(args.run, args.overrides)
        run = load_run_policy(args.run, train_prompts(read_run_config(args.run)))
    else:
        cfg = _config(args)
    result = sample(cfg, args.prompt, args.n, args.seed, args.best_of, run)
    exact = result.info.get("exact", result.scores * float("nan"))
    labels = score_labels(result.scores.tolist(), exact.tolist())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    image_grid(to_uint8(result.images), labels, title=args.prompt).save(args.out)
    print(f"{args.out}: {describe(result, args.best_of)}")


def cmd_eval(args) -> None:
    from dataclasses import asdict

    if args.best_of > 1:
        args.overrides = [*args.overrides, f"eval.best_of={args.best_of}"]
    if args.run:
        from find_ray.runs.run_eval import evaluate_run

        print(f"report: {evaluate_run(args.run, args.suite, args.overrides, args.out)}")
        return

    from find_ray.backends import make_backend
    from find_ray.eval.evaluate import evaluate
    from find_ray.eval.report import suite_table, write_report
    from find_ray.prompts import load_suite
    from find_ray.rewards import check_prompts, evaluation_reward

    cfg = _config(args)
    if args.suite:
        cfg.eval.suite = args.suite
    if args.out:
        cfg.eval.out_dir = args.out
    prompts = load_suite(cfg.eval.suite)
    check_prompts(cfg.reward, prompts)
    backend = make_backend(cfg.model)
    results = evaluate(
        backend,
        evaluation_reward(cfg),
        prompts,
        cfg.eval.samples_per_prompt,
        cfg.eval.seed,
        cfg.eval.batch_size,
        cfg.eval.grid_samples,
        best_of=cfg.eval.best_of,
    )
    settings = {**asdict(cfg.model), **asdict(cfg.eval)}
    report = write_report(
        results, cfg.eval.out_dir, f"Base policy on the {cfg.eval.suite} suite", settings
    )
    print(suite_table(results))
    print(f"report: {report}")


def cmd_train(args) -> None:
    if args.resume:
        from find_ray.system.driver import resume_with_ray

        print(f"report: {resume_with_ray(args.resume, args.overrides).report}")
        return
    cfg = _config(args)
    if args.no_ray:
        from find_ray.runs.in_process import train_in_process

        print(f"report: {train_in_process(cfg).report}")
        return
    from find_ray.system.driver import train_with_ray

    print(f"report: {train_with_ray(cfg).report}")


def cmd_bench(args) -> None:
    from find_ray.bench import load_bench_config, run_bench

    cfg = load_bench_config(args.config, args.overrides, args.preset)
    print(f"table: {run_bench(cfg, args.methods, max_cells=args.max_cells)}")


def cmd_serve(args) -> None:
    from find_ray.serve.launch import serve_forever
    from find_ray.serve.schema import ServeArgs

    serve_args = ServeArgs(
        run_dir=str(Path(args.run_dir).expanduser().resolve()),
        num_replicas=args.replicas,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        max_batch_size=args.max_batch_size,
        score=args.score,
        request_timeout_s=args.request_timeout_s,
        wedged_after_s=args.wedged_after_s,
        api_key_env=args.api_key_env,
    )
    poll_s = args.poll_s if args.follow else None
    serve_forever(serve_args, args.host, args.port, args.address, poll_s, args.insecure)


def cmd_pretrain_shapes(args) -> None:
    from find_ray.shapes.pretrain import pretrain
    from find_ray.shapes.settings import FLOW_OVERRIDES

    if args.flow:  # the flow model's objective and folders; the user's overrides still win
        args.overrides = [*FLOW_OVERRIDES, *args.overrides]
    cfg = _config(args)
    began = time.monotonic()
    out = pretrain(cfg.pretrain, max_minutes=args.max_minutes)
    print(f"saved {out} after {(time.monotonic() - began) / 60:.1f} min")


def _serve_parser(sub) -> None:
    """`find-ray serve`'s flags."""
    p = sub.add_parser("serve", help="serve a run's noise policy over HTTP (Ray Serve)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `find-ray train`")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1, help="generator replicas")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per generator replica")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per generator replica")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests per pipeline call")
    p.add_argument(
        "--score",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score images with the run's reward (default: only cheap rewards, e.g. shapes)",
    )
    p.add_argument("--address", default="", help="Ray address (default: RAY_ADDRESS or local)")
    p.add_argument("--follow", action="store_true", help="load newer policies as training runs")
    p.add_argument("--poll-s", type=float, default=10.0, help="--follow: seconds between polls")
    p.add_argument(
        "--request-timeout-s", type=float, default=120.0, help="a longer request gets 504"
    )
    p.add_argument(
        "--wedged-after-s",
        type=float,
        default=300.0,
        help="a batch running longer makes its replica unhealthy (Serve replaces it)",
    )
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require 'Authorization: Bearer <key>', the key read from this variable",
    )
    p.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback --host without a key"
    )
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="find-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="sample a prompt, write a grid labelled with rewards")
    p.add_argument("--prompt", required=True)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="image i's noise seed is seed + i")
    p.add_argument("--best-of", type=int, default=1, help="each image the reward's pick of N")
    p.add_argument("--run", metavar="RUN_DIR", help="sample the run's policy (its config)")
    p.add_argument("--out", default="grid.png")
    _common(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="evaluate a prompt suite: markdown table + PNG grid")
    p.add_argument(
        "--run",
        metavar="RUN_DIR",
        help="compare this run's policy with the base on the same noise (its config is used)",
    )
    p.add_argument("--suite", help="train | heldout | a prompt file (--run default: its prompts)")
    p.add_argument("--out", help="output folder (--run default: RUN_DIR/eval-SUITE)")
    p.add_argument("--best-of", type=int, default=1, help="each sample the reward's pick of N")
    _common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="learn per-prompt noise policies with FIND")
    p.add_argument("--no-ray", action="store_true", help="run in one process (no Ray)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a Ray run from its checkpoint")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="FIND and its peers on equal denoiser budgets")
    p.add_argument("--methods", nargs="+", help="run only these (default: bench.methods)")
    p.add_argument("--preset", help="quick: a first look in about 20 minutes (4 prompts, 1 seed)")
    p.add_argument(
        "--max-cells", type=int, help="stop after this many cell steps (resume: run it again)"
    )
    _common(p)
    p.set_defaults(func=cmd_bench)

    _serve_parser(sub)

    p = sub.add_parser("pretrain-shapes", help="train the shipped shapes diffusion model")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this")
    p.add_argument(
        "--flow",
        action="store_true",
        help="the flow-matching model (find_ray/shapes/model_flow/, state in "
        "runs/pretrain-shapes-flow/)",
    )
    _common(p)
    p.set_defaults(func=cmd_pretrain_shapes)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FindRayError as e:
        print(f"find-ray: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
