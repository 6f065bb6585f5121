"""The `http` reward against scoring services started on 127.0.0.1 by the tests (the example
server of find_ray/rewards/http_server.py, and a socket that never answers): scores in
order, retries, failures as counted drops, and a Ray run that finishes whatever the service
does. No traffic leaves the loopback interface."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer

import pytest
import torch

from find_ray import cli
from find_ray.algo.rollout import score_rollouts
from find_ray.algo.store import Rollout
from find_ray.config import load_config
from find_ray.rewards import make_reward
from find_ray.rewards.http import png_base64
from find_ray.rewards.http_server import answer, brightness, decode, handler, serve
from find_ray.system.driver import RayTrainer

HTTP = ["reward.name=http", "reward.timeout_s=2", "reward.retries=1", "reward.batch_size=2"]


class Recorder:
    """A scoring service's behaviour: the example server's brightness scorer, recording each
    request's prompts; the first `fail` requests get `status` (with Retry-After: 0), and
    `reply`, when given, replaces the scorer's answer."""

    def __init__(self, fail: int = 0, status: int = 503, reply: dict | None = None) -> None:
        self.requests: list[list[str]] = []
        self.fail, self.status, self.reply = fail, status, reply

    def handler(self) -> type:
        recorder = self

        class Recording(handler(brightness)):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                images, prompts = decode(
                    json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                )
                recorder.requests.append(prompts)
                if len(recorder.requests) <= recorder.fail:
                    self.send_response(recorder.status)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.reply(200, recorder.reply or answer(brightness, images, prompts))

        return Recording


@pytest.fixture
def service() -> Iterator[Callable[[Recorder], str]]:
    """start(recorder) -> the URL of a server on 127.0.0.1 (a free port) that behaves so."""
    servers: list[ThreadingHTTPServer] = []

    def start(recorder: Recorder) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), recorder.handler())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/score"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A loopback port whose connections open (the kernel's backlog) and never get an answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/score"
    listener.close()


def http_reward(url: str, *overrides: str):
    return make_reward(load_config(None, [*HTTP, f"reward.url={url}", *overrides]).reward)


def graded_images(n: int) -> torch.Tensor:
    """n flat grey images, image i at level i / (n - 1)."""
    return torch.linspace(0, 1, n).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()


def rollouts(n: int) -> list[Rollout]:
    return [Rollout(i, f"p{i}", torch.zeros(1), 0.0, 0, 0.0) for i in range(n)]


def test_scores_arrive_in_order_one_request_per_batch(service):
    recorder = Recorder()
    prompts = [f"prompt {i}" for i in range(5)]
    scores, info = http_reward(service(recorder))(graded_images(5), prompts)
    expected = (torch.linspace(0, 1, 5) * 255).round() / 255  # uint8 PNGs, exact
    assert torch.allclose(scores, expected, atol=1e-6)
    assert torch.equal(info["exact"], (expected > 0.6).float())  # the service's own figure
    assert recorder.requests == [prompts[0:2], prompts[2:4], prompts[4:]]  # batch_size 2


def test_a_503_is_tried_again(service):
    recorder = Recorder(fail=1)
    scores, _ = http_reward(service(recorder))(graded_images(2), ["a", "b"])
    assert torch.isfinite(scores).all()
    assert recorder.requests == [["a", "b"], ["a", "b"]]  # refused once, then served


@pytest.mark.parametrize(
    ("recorder", "tries"),
    [
        (Recorder(fail=9, status=503), 2),  # a 5xx past reward.retries=1: two tries
        (Recorder(fail=9, status=400), 1),  # a 4xx is not tried again
        (Recorder(reply={"scores": [0.5]}), 1),  # one score for two images
        (Recorder(reply={"scores": ["high", 0.1]}), 1),  # not numbers
        (Recorder(reply={"score": [0.5, 0.5]}), 1),  # not the format
    ],
)
def test_a_failed_request_drops_its_images_as_counted_drops(service, recorder, tries):
    reward = http_reward(service(recorder), "reward.batch_size=4")
    kept, dropped = score_rollouts(reward, rollouts(2), graded_images(2))
    assert kept == [] and dropped == {"bad_reward": [0, 1]}
    assert len(recorder.requests) == tries


def test_non_finite_scores_are_dropped_the_rest_kept(service):
    recorder = Recorder(reply={"scores": [0.4, None, float("nan")]})  # NaN: Python's JSON
    reward = http_reward(service(recorder), "reward.batch_size=4")
    kept, dropped = score_rollouts(reward, rollouts(3), graded_images(3))
    assert [(r.rollout_id, r.reward) for r in kept] == [(0, pytest.approx(0.4))]
    assert dropped == {"bad_reward": [1, 2]}


def test_a_service_that_never_answers_costs_one_request_per_call(silent_url):
    reward = http_reward(silent_url, "reward.timeout_s=0.3", "reward.retries=1")
    began = time.monotonic()
    scores, _ = reward(graded_images(6), ["p"] * 6)  # three batches of 2
    elapsed = time.monotonic() - began
    assert torch.isnan(scores).all()
    # two tries of 0.3 s and a 0.5 s pause; the two later batches are not sent
    assert 1.0 < elapsed < 2.5, elapsed


def test_the_example_server_names_a_malformed_request():
    server = serve(brightness, port=0)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        bodies = {
            b"not json": "Expecting value",
            b'{"prompts": ["a"], "images": []}': "one per prompt",
            b'{"prompts": ["a"], "images": ["bm90IGEgcG5n"]}': "not a base64 PNG",
        }
        for body, says in bodies.items():
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(url + "/score", data=body), timeout=5)
            assert e.value.code == 400 and says in json.loads(e.value.read())["error"]
        image = png_base64((graded_images(1)[0].permute(1, 2, 0) * 255).byte().numpy())
        good = json.dumps({"prompts": ["a"], "images": [image]}).encode()
        reply = json.loads(urllib.request.urlopen(url + "/score", data=good, timeout=5).read())
        assert reply == {"scores": [0.0], "info": {"exact": [0.0]}}
        assert json.loads(urllib.request.urlopen(url + "/healthz", timeout=5).read()) == {
            "ok": True
        }
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("reward.url=''", "config key 'reward.url': must be an http:// or https:// URL"),
        ("reward.url=127.0.0.1:8001", "config key 'reward.url': must be an http:// or https://"),
        ("reward.timeout_s=0", "config key 'reward.timeout_s': must be > 0"),
        ("reward.retries=-1", "config key 'reward.retries': must be >= 0"),
        ("reward.batch_size=0", "config key 'reward.batch_size': must be >= 1"),
    ],
)
def test_a_bad_http_config_is_one_line(tmp_path, capsys, override, says):
    argv = ["train", "model.backend=simulated", "reward.name=http", "reward.url=http://127.0.0.1:1"]
    assert cli.main([*argv, override, f"train.out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"find-ray: error: {says}") and "\n" not in err, err
    assert not (tmp_path / "run").exists()


SIMULATED = [
    "model.backend=simulated",
    "model.latency_s=0.02",
    "train.prompts=[p one,p two]",
    "train.samples_per_prompt=4",
    "train.iterations=3",
    "eval.samples_per_prompt=2",
    "ray.rollouts_per_task=4",
    "learner.loss.drcm_hidden=8",
    "learner.drcm_steps=2",
]


@pytest.mark.ray
@pytest.mark.parametrize("answers", [True, False], ids=["served", "never-answers"])
def test_a_ray_run_scores_over_http_or_counts_its_drops(
    ray_local, service, silent_url, tmp_path, answers
):
    """The reward actors post to the service; one that never answers drops every rollout, each
    counted, and the run still finishes with its accounting whole."""
    recorder = Recorder()
    url = service(recorder) if answers else silent_url
    overrides = [*HTTP, f"reward.url={url}", "reward.timeout_s=0.3", "reward.retries=1"]
    cfg = load_config(None, [*SIMULATED, *overrides, f"train.out_dir={tmp_path / 'run'}"])
    result = RayTrainer(cfg).run()
    totals = json.loads((result.run_dir / "metrics.json").read_text())["rollouts"]
    assert totals["issued"] == totals["stored"] + totals["dropped"] and totals["in_flight"] == 0
    if answers:
        assert totals["dropped"] == 0 and totals["stored"] == 3 * 2 * 4
        assert {p for request in recorder.requests for p in request} == {"p one", "p two"}
        # the simulated image is sigmoid(z): the service scores its brightness, about 0.5
        means = [h["reward_mean"] for h in result.history if "reward_mean" in h]
        assert means and all(0.3 < m < 0.7 for m in means), means
    else:
        assert totals["stored"] == 0 and totals["dropped/bad_reward"] == totals["issued"] > 0
