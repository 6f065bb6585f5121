"""cluster/: the launcher configs, KubeRay manifests and submit.sh hold what they must."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
SUBMIT = CLUSTER / "submit.sh"
MAKEFILE = ROOT / "Makefile"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.mark.parametrize("name, provider", [("aws.yaml", "aws"), ("gcp.yaml", "gcp")])
def test_launcher_config(name, provider, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    ray_autoscaler = pytest.importorskip("ray.autoscaler")
    cfg = load(name)
    schema = json.loads((Path(ray_autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)  # the schema `ray up` checks against

    assert cfg["cluster_name"] and cfg["provider"]["type"] == provider
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU", 0) >= 1 and not head["resources"].get("GPU")
    gpu_workers = [
        t for n, t in types.items() if n != cfg["head_node_type"] and t["resources"].get("GPU", 0)
    ]
    assert gpu_workers and all(t["max_workers"] >= 1 for t in gpu_workers)
    assert cfg["max_workers"] >= 1

    # what the commands do, run with stand-in `pip` and `ray` that record their calls
    calls = run_commands(cfg["setup_commands"], tmp_path / "setup")
    pins = re.search(r"pip install -q (torch==\S+ torchvision==\S+)", MAKEFILE.read_text())[1]
    installs = [c for c in calls if c.tool == "pip"]
    assert [c.args for c in installs] == [f"install {pins}", "install -e ."]  # the Makefile's
    assert installs[-1].cwd.name == "find-ray"  # the checkout the file mounts put there
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    head = run_commands(cfg["head_start_ray_commands"], tmp_path / "head")
    worker = run_commands(cfg["worker_start_ray_commands"], tmp_path / "worker")
    for started, flag in ((head, "--head"), (worker, "--address=10.0.0.1:6379")):
        (start,) = [c for c in started if c.args.startswith("start")]
        assert flag in start.args.split() and start.auth_mode == "token"


class Call(NamedTuple):
    tool: str
    cwd: Path
    auth_mode: str  # RAY_AUTH_MODE as the tool saw it
    args: str


def run_commands(commands: list[str], folder: Path) -> list[Call]:
    """Runs a launcher's shell commands in a scratch home (with a `find-ray` checkout) with
    stand-ins for `pip` and `ray` on PATH; returns their calls in order."""
    tools, home, log = folder / "bin", folder / "home", folder / "calls"
    (home / "find-ray").mkdir(parents=True)
    tools.mkdir()
    for tool in ("pip", "ray"):
        (tools / tool).write_text(
            f'#!/usr/bin/env bash\nprintf "{tool}\\t%s\\t%s\\t%s\\n" "$PWD" '
            f'"${{RAY_AUTH_MODE:-}}" "$*" >> {log}\n'
        )
        (tools / tool).chmod(0o755)
    env = {"PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "HOME": str(home)}
    for command in commands:
        subprocess.run(
            ["bash", "-c", command], env={**env, "RAY_HEAD_IP": "10.0.0.1"}, cwd=home, check=True
        )
    lines = log.read_text().splitlines() if log.is_file() else []
    return [Call(t, Path(cwd), mode, args) for t, cwd, mode, args in (x.split("\t") for x in lines)]


def gpu_limit(group: dict) -> int:
    return sum(
        int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        for c in group["template"]["spec"]["containers"]
    )


def check_ray_cluster(spec: dict) -> None:
    """GPU worker group; token auth on, from one Secret, on the head and every worker."""
    assert spec["authOptions"]["mode"] == "token"
    secret = spec["authOptions"]["secretName"]
    assert any(gpu_limit(g) >= 1 for g in spec["workerGroupSpecs"])
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret, "key": "auth_token"}


def test_rayjob():
    job = load("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "find_ray", "train"]
    assert (ROOT / argv[argv.index("--config") + 1]).is_file()
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] >= 0
    check_ray_cluster(job["spec"]["rayClusterSpec"])


def test_rayservice():
    service = load("rayservice.yaml")
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    apps = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert [app["import_path"] for app in apps] == ["find_ray.serve:app"]
    check_ray_cluster(service["spec"]["rayClusterConfig"])


def test_submit_script_is_an_executable_with_usage():
    assert os.access(SUBMIT, os.X_OK)
    usage = subprocess.run([str(SUBMIT), "-h"], capture_output=True, text=True, check=True)
    assert usage.stdout.startswith("Usage:")


def test_submit_script_runs_ray_job_submit(tmp_path):
    """With a stand-in `ray` on PATH: the exact command, from the repo root, auth passed on."""
    fake = tmp_path / "ray"
    fake.write_text(
        '#!/usr/bin/env bash\npwd > "$OUT/cwd"\nprintf "%s\\n" "$@" > "$OUT/argv"\n'
        'echo "${RAY_AUTH_MODE:-}" > "$OUT/mode"\nls -a > "$OUT/files"\n'
    )
    fake.chmod(0o755)
    env = {
        k: v for k, v in os.environ.items() if k not in {"RAY_ADDRESS", "CONFIG", "RAY_AUTH_MODE"}
    }
    env.update(PATH=f"{tmp_path}{os.pathsep}{env['PATH']}", OUT=str(tmp_path))
    env["RAY_AUTH_TOKEN"] = "not-a-real-token"
    subprocess.run([str(SUBMIT), "model.steps=5"], env=env, cwd=tmp_path, check=True)

    snapshot = Path((tmp_path / "cwd").read_text().strip())  # a copy of the checkout, gone now
    assert snapshot != ROOT and snapshot.name.startswith("find-ray-submit.")
    assert not snapshot.exists()
    assert (tmp_path / "argv").read_text().splitlines() == [
        "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", ".",
        "--runtime-env-json", '{"excludes": [".venv", "runs", ".git"]}',
        "--", "python", "-m", "find_ray", "train", "--config", "configs/shapes.yaml",
        "model.steps=5",
    ]  # fmt: skip
    assert (tmp_path / "mode").read_text().strip() == "token"
    files = (tmp_path / "files").read_text().split()
    assert {"find_ray", "configs", "pyproject.toml"} <= set(files)
    assert not {".venv", "runs", ".git"} & set(files)

    env["CONFIG"] = "configs/missing.yaml"
    missing = subprocess.run([str(SUBMIT)], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "configs/missing.yaml" in missing.stderr
