"""The CLI end to end on a tiny random model: outputs written, user errors in one line."""

import json
import subprocess
import sys

from PIL import Image


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
