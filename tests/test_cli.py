"""The CLI end to end on a tiny random model: outputs written, user errors in one line."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from find_ray import cli


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "find_ray.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_prompt_outside_grammar_exits_2_with_one_line():
    result = run_cli("sample", "--prompt", "seven purple hexagons", "--out", "x.png")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "valid words" in result.stderr


def test_train_with_prompt_outside_grammar_exits_2(tmp_path):
    result = run_cli(
        "train", "--no-ray", "train.prompts=[a purple dog]", f"train.out_dir={tmp_path}"
    )
    assert result.returncode == 2 and "purple" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


def test_bad_config_key_exits_2_naming_it():
    result = run_cli("eval", "model.stepz=3")
    assert result.returncode == 2 and "model.stepz" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_path_exits_2(tmp_path):
    result = run_cli("sample", "--prompt", "a red circle", f"model.path={tmp_path}/none")
    assert result.returncode == 2 and "model_index.json" in result.stderr


@pytest.mark.slow
def test_sample_writes_a_labelled_grid(tiny_shapes_dir, tmp_path):
    out = tmp_path / "grid.png"
    result = run_cli(
        "sample",
        "--prompt",
        "two red circles",
        "--n",
        "4",
        "--out",
        str(out),
        f"model.path={tiny_shapes_dir}",
        "model.steps=2",
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size[0] >= 4 * 96
    assert "mean score" in result.stdout


@pytest.mark.slow
def test_eval_writes_report_table_and_grid(tiny_shapes_dir, tmp_path):
    suite = tmp_path / "suite.txt"
    suite.write_text("# two prompts\na red circle\ntwo blue squares\n")
    out = tmp_path / "eval"
    result = run_cli(
        "eval",
        f"model.path={tiny_shapes_dir}",
        "model.steps=2",
        f"eval.suite={suite}",
        "eval.samples_per_prompt=3",
        f"eval.out_dir={out}",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["prompts"]) == {"a red circle", "two blue squares"}
    assert 0.0 <= metrics["summary"]["mean_score"] <= 1.0
    assert "| a red circle |" in (out / "report.md").read_text()
    assert (out / "grid.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["per_prompt", "amortized"])
def test_eval_run_compares_a_runs_policy_on_another_suite(tiny_shapes_dir, tmp_path, kind):
    """`find-ray eval --run RUN --suite FILE`: a per-prompt run falls back to the base for a
    prompt it never trained (and says so); an amortized run generates for it."""
    run = tmp_path / "run"
    train = [
        "train",
        "--no-ray",
        f"policy.kind={kind}",
        f"model.path={tiny_shapes_dir}",
        "model.steps=2",
        "train.prompts=[a red circle,two blue squares]",
        "train.iterations=2",
        "train.samples_per_prompt=4",
        "train.rollout_batch_size=8",
        "eval.samples_per_prompt=2",
        "learner.optimizer=adamw",
        "learner.loss.policy_lr=0.05",
        "learner.loss.drcm_hidden=8",
        f"train.out_dir={run}",
    ]
    assert cli.main(train) == 0
    suite = tmp_path / "unseen.txt"
    suite.write_text("a red circle\nthree green triangles\n")
    result = run_cli("eval", "--run", str(run), "--suite", str(suite), "eval.samples_per_prompt=3")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "eval-unseen" / "metrics.json").read_text())
    assert metrics["prompts"] == ["a red circle", "three green triangles"]
    assert metrics["policy_kind"] == kind.replace("_", "-")
    assert metrics["diversity"]["ratio"] > 0 and "scores" in metrics["gains"]
    # the quality figures and the shell beside the gains, for seen and unseen prompts alike
    quality = metrics["quality"]
    assert {"quality", "artifacts", "dirty_background", "shell"} <= set(quality)
    assert quality["shell"]["d"] == 3 * 32 * 32 and 0 <= quality["artifacts"]["base"] <= 1
    report = (run / "eval-unseen" / "report.md").read_text()
    assert "| artifacts |" in report
    if kind == "per_prompt":
        assert metrics["base_only"] == ["three green triangles"]
        assert "1 of 2 prompts have no trained policy" in result.stdout
        assert "sampled from the base: three green triangles" in report
        assert len(metrics["kl_to_prior"]) == 1
    else:
        assert metrics["base_only"] == [] and "no trained policy" not in result.stdout
        assert len(metrics["kl_to_prior"]) == 2 and min(metrics["kl_to_prior"]) > 0
