"""The Serve endpoint: request parsing, the run folder, the generator, and the app on Ray Serve.

The app tests serve a run folder trained here (simulated backend, brightness reward) on the
shared test Ray, over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from find_ray import cli
from find_ray.algo.gaussian import project_to_shell
from find_ray.algo.noise import normals_by_index
from find_ray.algo.policy_files import load_policy
from find_ray.config import load_config
from find_ray.errors import FindRayError, ModelPathError
from find_ray.runs.folder import load_run_policy, newest_policy_version
from find_ray.runs.in_process import train_in_process
from find_ray.serve.generator import AlignedGenerator
from find_ray.serve.schema import MAX_BODY_BYTES, RequestError, ServeArgs, parse_generate

TRAINED = ["p one", "p two"]
RUN = [
    "model.backend=simulated",
    "reward.name=brightness",
    f"train.prompts=[{','.join(TRAINED)}]",
    "train.samples_per_prompt=16",
    "train.iterations=10",
    "eval.samples_per_prompt=4",
    "learner.loss.drcm_hidden=8",
    "learner.learn_sigma=false",
    "learner.loss.policy_lr=1.0",
    "learner.loss.normalise_advantages=true",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished run folder: FIND on the simulated backend learns to brighten its images."""
    out = tmp_path_factory.mktemp("serve") / "run"
    train_in_process(load_config(None, [*RUN, f"train.out_dir={out}"]))
    return out


# -- request parsing (no Ray) --------------------------------------------------------------------

MALFORMED = [
    (b"", 400, None),
    (b"hello", 400, None),
    (b"{", 400, None),
    (b"[1, 2]", 422, None),
    (b'"a red circle"', 422, None),
    (b"{}", 422, "prompt"),
    (b'{"prompt": ""}', 422, "prompt"),
    (b'{"prompt": 5}', 422, "prompt"),
    (json.dumps({"prompt": "x" * 301}).encode(), 422, "prompt"),
    (b'{"prompt": "p one", "n": 0}', 422, "n"),
    (b'{"prompt": "p one", "n": 17}', 422, "n"),
    (b'{"prompt": "p one", "n": "3"}', 422, "n"),
    (b'{"prompt": "p one", "n": true}', 422, "n"),
    (b'{"prompt": "p one", "n": 2.5}', 422, "n"),
    (b'{"prompt": "p one", "seed": -1}', 422, "seed"),
    (b'{"prompt": "p one", "steps": 0}', 422, "steps"),
    (b'{"prompt": "p one", "steps": 1000}', 422, "steps"),
    (b'{"prompt": "p one", "guidance": -1}', 422, "guidance"),
    (b'{"prompt": "p one", "guidance": "high"}', 422, "guidance"),
    (b'{"prompt": "p one", "format": "jpeg"}', 422, "format"),
    (b'{"prompt": "p one", "policy": "best"}', 422, "policy"),
    (b'{"prompt": "p one", "best_of": 0}', 422, "best_of"),
    (b'{"prompt": "p one", "best_of": 17}', 422, "best_of"),
    (b'{"prompt": "p one", "colour": "red"}', 422, "colour"),
    (json.dumps({"prompt": "p " * MAX_BODY_BYTES}).encode(), 413, None),
]


@pytest.mark.parametrize(("body", "status", "field"), MALFORMED)
def test_malformed_bodies_are_refused_naming_the_field(body, status, field):
    with pytest.raises(RequestError) as caught:
        parse_generate(body)
    e = caught.value
    assert (e.status, e.field) == (status, field)
    assert "\n" not in e.detail and (field is None or f"'{field}'" in e.detail)


def test_a_good_body_parses_with_defaults():
    request = parse_generate(b'{"prompt": "a red circle", "guidance": 2}')
    assert (request.prompt, request.n, request.seed, request.guidance) == (
        "a red circle",
        1,
        None,
        2,
    )
    assert (request.policy, request.format) == ("auto", "base64")


# -- run folder and generator (no Ray) -----------------------------------------------------------


def test_run_folder_errors_name_the_file(run_dir, tmp_path):
    with pytest.raises(ModelPathError, match="run folder not found"):
        AlignedGenerator(str(tmp_path / "nope"))
    (tmp_path / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    with pytest.raises(ModelPathError, match="no noise policy in"):
        load_run_policy(tmp_path)
    (tmp_path / "policy.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelPathError, match=str(tmp_path / "policy.safetensors")):
        load_run_policy(tmp_path)


def test_cli_serve_fails_in_one_line_on_a_bad_run_folder(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("model:\n  no_such_key: 1\n")
    assert cli.main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.yaml" in err and "no_such_key" in err


def test_trained_and_base_images_share_their_noise(run_dir):
    gen = AlignedGenerator(str(run_dir))
    info = gen.describe()
    assert info.prompts == TRAINED and info.version == 10 and info.policies == ["trained", "base"]
    trained, base = info.job("p one", 4, 7), info.job("p one", 4, 7, policy="base")
    untrained = info.job("something new", 4, 7)
    assert (trained.policy, base.policy, untrained.policy) == ("trained", "base", "base")
    assert trained.calls_per_image == info.steps * 2  # CFG 1.5 doubles each step
    eps = normals_by_index(gen.backend.latent_shape, range(7, 11))
    mu, sigma = gen.run.policy.mean_std(torch.tensor([0]))
    torch.testing.assert_close(gen.noise(base, gen.run), eps)
    on_shell = project_to_shell(mu + sigma * eps)  # the default policy.shell: project
    torch.testing.assert_close(gen.noise(trained, gen.run), on_shell)


def test_an_amortized_run_serves_prompts_it_never_trained(tmp_path):
    out = tmp_path / "amortized"
    amortized = [
        "policy.kind=amortized",
        "learner.optimizer=adamw",
        "learner.loss.policy_lr=0.01",
        "train.iterations=3",
    ]
    train_in_process(load_config(None, [*RUN, *amortized, f"train.out_dir={out}"]))
    gen = AlignedGenerator(str(out))
    info = gen.describe()
    assert info.amortized and info.prompts == TRAINED
    job = info.job("something new", 3, 7)
    assert job.policy == "trained"  # an amortized policy covers any prompt
    eps = normals_by_index(gen.backend.latent_shape, range(7, 10))
    with torch.no_grad():
        mu, sigma = gen.run.policy.mean_std_of(gen.backend.encode_prompts(["something new"]))
    assert mu.abs().max() > 0  # it moved from N(0, I), also for this prompt
    torch.testing.assert_close(gen.noise(job, gen.run), project_to_shell(mu + sigma * eps))
    (result,) = gen.generate([job])
    assert result.images.shape[0] == 3 and result.policy_version == 3


def test_best_of_keeps_the_rewards_pick_and_counts_its_calls(run_dir):
    """best_of 4: each image is the best-rewarded of its 4 candidates, which are the plain
    request's images for the seeds `candidate_seeds` names; 4x the denoiser calls."""
    gen = AlignedGenerator(str(run_dir))
    info = gen.describe()
    one, best = info.job("p one", 3, 20), info.job("p one", 3, 20, best_of=4)
    assert best.calls_per_image == 4 * one.calls_per_image
    assert best.candidate_seeds() == [20 + i + 3 * j for i in range(3) for j in range(4)]
    (picked,) = gen.generate([best])
    for i in range(3):
        seeds = best.candidate_seeds()[4 * i : 4 * i + 4]
        candidates = [gen.generate([info.job("p one", 1, s)])[0].rewards[0] for s in seeds]
        assert picked.rewards[i] == pytest.approx(max(candidates))
        assert picked.seeds[i] == seeds[int(np.argmax(candidates))]
    assert "shell" in picked.metrics[0]  # ||z_T||^2 / d of each served image
    unscored = AlignedGenerator(str(run_dir), score=False).describe()
    with pytest.raises(RequestError, match="best_of"):
        unscored.job("p one", 1, 0, best_of=2)


def test_batched_jobs_equal_single_jobs(run_dir):
    gen = AlignedGenerator(str(run_dir))
    info = gen.describe()
    jobs = [info.job("p one", 2, 0), info.job("p two", 3, 5, steps=4), info.job("x", 1, 9)]
    together = gen.generate(jobs)
    for job, result in zip(jobs, together, strict=True):
        alone = gen.generate([job])[0]
        torch.testing.assert_close(result.images, alone.images)
        assert result.rewards == alone.rewards and len(result.rewards) == job.n


def test_reload_takes_a_newer_policy_only(run_dir, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("config.yaml", "policy.safetensors"):
        (folder / name).write_bytes((run_dir / name).read_bytes())
    gen = AlignedGenerator(str(folder))
    assert not gen.reload() and gen.version == 10
    newer = load_policy(folder / "policy.safetensors")
    (folder / "checkpoint").mkdir()
    newer.save(folder / "checkpoint" / "policy.safetensors", 12, TRAINED)
    assert newest_policy_version(folder) == 12
    assert gen.reload() and gen.version == 12
    (folder / "checkpoint" / "policy.safetensors").write_bytes(b"half-written")
    assert not gen.reload() and gen.version == 12  # keeps serving what it has


# -- the app on Ray Serve --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_local, run_dir):
    """The app on the shared Ray, bound to 127.0.0.1; yields (base URL, ServeArgs)."""
    import httpx
    from ray import serve

    from find_ray.serve.launch import deploy

    args = ServeArgs(run_dir=str(run_dir), num_cpus=0.5, max_batch_size=4)
    port = free_port()
    url, args = deploy(args, "127.0.0.1", port)
    assert url == f"http://127.0.0.1:{port}/" and args.policy_version == 10
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client, args
    serve.shutdown()


def generate(client, **body):
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def mean_reward(data) -> float:
    return float(np.mean([image["reward"] for image in data["images"]]))


@pytest.mark.ray
def test_routes_and_policy_labels(served):
    client, _ = served
    assert client.get("/healthz").json() == {"status": "ok", "policy_version": 10}
    prompts = client.get("/prompts").json()
    assert prompts["prompts"] == TRAINED and prompts["policies"] == ["trained", "base"]
    assert "<form" in client.get("/").text and client.get("/docs").status_code == 200
    trained = generate(client, prompt="p one", n=3, seed=11)
    other = generate(client, prompt="an untrained prompt", n=2, seed=11)
    assert [i["policy"] for i in trained["images"]] == ["trained"] * 3
    assert [i["policy"] for i in other["images"]] == ["base"] * 2
    assert [i["seed"] for i in trained["images"]] == [11, 12, 13]
    image = Image.open(io.BytesIO(base64.b64decode(trained["images"][0]["png_base64"])))
    assert image.size == (8, 8) and trained["policy_version"] == 10
    best = generate(client, prompt="p one", n=2, seed=11, best_of=3)
    assert [i["best_of"] for i in best["images"]] == [3, 3]
    assert {i["picked_by"] for i in best["images"]} == {"brightness"}
    assert best["images"][0]["denoiser_calls"] == 3 * trained["images"][0]["denoiser_calls"]
    assert best["images"][0]["reward"] >= trained["images"][0]["reward"]  # seed 11 a candidate
    png = client.post("/generate", json={"prompt": "p two", "n": 4, "format": "png"})
    assert png.headers["content-type"] == "image/png" and png.headers["x-policy"] == "trained"
    assert len(png.headers["x-rewards"].split(",")) == 4


@pytest.mark.ray
def test_trained_prompt_scores_higher_than_base_on_the_same_seeds(served):
    client, _ = served
    trained = [generate(client, prompt="p one", n=16, seed=s) for s in (100, 116)]
    base = [generate(client, prompt="p one", n=16, seed=s, policy="base") for s in (100, 116)]
    gains = [
        t["reward"] - b["reward"]
        for tr, ba in zip(trained, base, strict=True)
        for t, b in zip(tr["images"], ba["images"], strict=True)
    ]
    assert len(gains) == 32 and np.mean(gains) > 0.05 and np.mean(np.array(gains) > 0) > 0.9


@pytest.mark.ray
def test_200_malformed_requests_get_4xx_and_the_replica_lives(served):
    client, _ = served
    kinds = [body for body, _, _ in MALFORMED] + [
        b'{"prompt": "p one", "policy": "trained", "n": 99}',
        b'{"prompt": "something new", "policy": "trained"}',
    ]
    statuses = []
    for i in range(200):
        body = kinds[i % len(kinds)]
        content_type = ["application/json", "text/plain", "application/x-www-form-urlencoded"][
            i % 3
        ]
        response = client.post("/generate", content=body, headers={"content-type": content_type})
        statuses.append(response.status_code)
        assert 400 <= response.status_code < 500, (body[:80], response.text)
        assert response.json()["detail"]
    assert {400, 413, 422} <= set(statuses)
    assert client.get("/generate").status_code == 405
    assert generate(client, prompt="p one", n=1, seed=0)["images"][0]["policy"] == "trained"


@pytest.mark.ray
def test_a_reload_mid_stream_changes_the_version_and_loses_no_request(served, run_dir):
    """--follow's redeploy is a lightweight update: the same replica loads the new policy."""
    from ray import serve

    from find_ray.serve.launch import APP_NAME, follow

    client, args = served
    replica = serve.get_deployment_handle("Generator", APP_NAME)
    before = replica.actor_id.remote().result()
    seen: list[tuple[int, int]] = []  # (status, policy version)
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            response = client.post("/generate", json={"prompt": "p one", "n": 2, "seed": 3})
            version = (
                response.json().get("policy_version", -1) if response.status_code == 200 else -1
            )
            seen.append((response.status_code, version))

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        while len(seen) < 3:
            time.sleep(0.05)
        policy = load_policy(run_dir / "policy.safetensors")
        (run_dir / "checkpoint").mkdir(exist_ok=True)
        policy.save(run_dir / "checkpoint" / "policy.safetensors", 11, TRAINED)
        follow(args, poll_s=0.2, until=time.monotonic() + 1.0)  # sees version 11, redeploys
        deadline = time.monotonic() + 60
        while not any(v == 11 for _, v in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        count = len(seen)
        while len(seen) < count + 3:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    assert all(status == 200 for status, _ in seen), seen
    versions = [v for _, v in seen]
    assert versions[0] == 10 and versions[-1] == 11
    assert versions == sorted(versions)  # once a replica serves 11, it never goes back
    assert replica.actor_id.remote().result() == before  # reconfigured in place, not replaced


# -- Serve config files --------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def serve_applications() -> list[tuple[str, dict]]:
    """(source, application) for configs/serve.yaml and cluster/rayservice.yaml's serveConfigV2."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    local = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    service = yaml.safe_load((ROOT / "cluster" / "rayservice.yaml").read_text())
    cluster = yaml.safe_load(service["spec"]["serveConfigV2"])
    for config in (local, cluster):
        ServeDeploySchema.model_validate(config)  # what `serve run` / KubeRay validate against
    assert local["http_options"]["host"] == "127.0.0.1"
    return [("configs/serve.yaml", app) for app in local["applications"]] + [
        ("cluster/rayservice.yaml", app) for app in cluster["applications"]
    ]


@pytest.mark.parametrize(("source", "application"), serve_applications())
def test_serve_configs_build_the_app(source, application, run_dir):
    import importlib

    from ray.serve import Application

    module, name = application["import_path"].split(":")
    builder = getattr(importlib.import_module(module), name)
    args = application["args"]
    ServeArgs.model_validate(args)  # every key is one the app knows
    assert isinstance(builder({**args, "run_dir": str(run_dir)}), Application)
    assert {d["name"] for d in application.get("deployments", [])} <= {"Generator", "Ingress"}
    with pytest.raises(FindRayError, match="run folder not found"):
        builder({**args, "run_dir": "/no/such/run"})


def test_rayservice_reads_the_run_from_a_mounted_volume():
    import yaml

    service = yaml.safe_load((ROOT / "cluster" / "rayservice.yaml").read_text())
    run_dir = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["run_dir"]
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    for group in [service["spec"]["rayClusterConfig"]["headGroupSpec"], *workers]:
        mounts = group["template"]["spec"]["containers"][0]["volumeMounts"]
        assert any(run_dir.startswith(m["mountPath"] + "/") for m in mounts)


@pytest.mark.ray
def test_the_page_in_headless_chromium(served, tmp_path):
    """Type a prompt, click Generate, see trained and base images with their labels."""
    from find_ray.experiments import serve_page as page

    if page.chromium_path() is None:
        pytest.skip("chromium is not installed (make test installs it with apt-get when root)")
    client, _ = served
    try:
        seen = page.try_page(str(client.base_url), "p one", tmp_path / "page.png", n=3, seed=5)
    except Exception as e:  # a browser that cannot start here is a skip, said plainly
        if "launch" in str(e).lower() or "executable" in str(e).lower():
            pytest.skip(f"chromium did not start: {str(e).splitlines()[0]}")
        raise
    assert len(seen["labels"]) == 6  # 3 trained + 3 base, same seeds
    assert [label.split(" · ")[:2] for label in seen["labels"][:3]] == [
        ["trained", f"seed {s}"] for s in (5, 6, 7)
    ]
    assert all(label.startswith("base · seed") for label in seen["labels"][3:])
    assert seen["rows"][0].startswith("trained policy") and seen["rows"][1].startswith("base")
    assert Image.open(tmp_path / "page.png").size[0] >= 1000
