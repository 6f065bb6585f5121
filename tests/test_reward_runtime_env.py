"""`reward.runtime_env` and `reward.name=module`: a scorer from the user's own module, in the
reward actors' own Ray runtime environment. The config's shape is checked when it loads and
its local paths before any actor starts; the module is imported only where it scores. The
Ray test installs a package that this venv lacks from the package registry into the reward
actors alone (it skips when the registry does not answer)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import ray
import torch
from ray.exceptions import RuntimeEnvSetupError

from find_ray import cli
from find_ray.algo.rollout import score_rollouts
from find_ray.algo.store import Rollout
from find_ray.config import load_config
from find_ray.errors import ConfigError
from find_ray.rewards import check_scorers, make_reward, ray_runtime_env
from find_ray.rewards.hub import reachable
from find_ray.system import actor_start
from find_ray.system.driver import RayTrainer

SCORER = '''
"""A user's scorer: its brightness times ROMAN_REWARD_SCALE, the prompt's length in roman
numerals beside it. `roman` is installed only in the reward actors' runtime environment."""
import os

import roman
import torch


def make_scorer(cfg):
    scale = float(os.environ.get("ROMAN_REWARD_SCALE", "1"))

    def score(images, prompts):
        numerals = [float(len(roman.toRoman(len(p)))) for p in prompts]
        return scale * images.flatten(1).mean(1), {"numerals": numerals}

    return score
'''

LOCAL_SCORER = """
import torch

def make_scorer(cfg):
    def score(images, prompts):
        calls.append(len(prompts))
        if prompts[0] == "wrong count":
            return [0.5]
        return images.flatten(1).mean(1).tolist(), {"batch": [float(len(prompts))] * len(prompts)}
    return score

calls = []
"""


def config(*overrides: str):
    return load_config(None, list(overrides))


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("reward.runtime_env.pipp=[x]", "'reward.runtime_env.pipp': not a runtime_env field"),
        ("reward.runtime_env.pip=3", "'reward.runtime_env.pip': must be a list of requirements"),
        ("reward.runtime_env.py_modules=a", "'reward.runtime_env.py_modules': must be a list"),
        ("reward.runtime_env.env_vars=[a]", "'reward.runtime_env.env_vars': must be a mapping"),
        ("reward.runtime_env.env_vars.A=[1]", "'reward.runtime_env.env_vars.A': must be a string"),
        ("reward.runtime_env.config.timeout=1", "'reward.runtime_env.config': must be {setup"),
        ("reward.module=pkg.mod", "'reward.module': must be 'package.module:factory'"),
    ],
)
def test_a_malformed_runtime_env_or_module_is_one_line_naming_the_key(override, says, capsys):
    assert cli.main(["train", "reward.name=module", "reward.module=a.b:c", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"find-ray: error: config key {says}") and "\n" not in err, err


def test_runtime_env_keeps_rays_shape_with_env_vars_as_strings():
    cfg = config(
        "reward.runtime_env.pip={packages: [roman==5.2], pip_check: false}",
        "reward.runtime_env.env_vars.SCALE=2",
        "reward.runtime_env.config.setup_timeout_seconds=900",
    )
    assert cfg.reward.runtime_env == {
        "pip": {"packages": ["roman==5.2"], "pip_check": False},
        "env_vars": {"SCALE": "2"},  # Ray takes strings only
        "config": {"setup_timeout_seconds": 900},
    }
    with pytest.raises(ConfigError, match="set one of pip, uv, conda, not pip and uv"):
        config("reward.runtime_env.pip=[a]", "reward.runtime_env.uv=[a]")


def test_local_paths_are_checked_before_any_actor_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scorer").mkdir()
    (tmp_path / "w.pth").write_bytes(b"")  # there for the driver, not in the working_dir
    env = "reward.runtime_env"
    cfg = config(f"{env}.working_dir=scorer", f"{env}.py_modules=[s3://b/m.zip]")
    check_scorers(cfg)
    # a local folder reaches the reward actors alone as Ray's local:// URI, in place
    assert ray_runtime_env(cfg.reward) == {
        "working_dir": f"local://{tmp_path / 'scorer'}",
        "py_modules": ["s3://b/m.zip"],
    }
    wrong = {
        f"{env}.working_dir=nowhere": f"'{env}.working_dir': nowhere does not exist (relative to",
        f"{env}.working_dir=w.pth": f"'{env}.working_dir': w.pth is not a folder",
        f"{env}.py_modules=[scorer]": f"'{env}.py_modules': scorer is a local path, which Ray",
        f"{env}.pip=reqs.txt": f"'{env}.pip': reqs.txt does not exist",
    }
    for override, says in wrong.items():
        with pytest.raises(ConfigError, match=re.escape(f"config key {says}")):
            check_scorers(config(override))
    relative = [f"{env}.working_dir=scorer", "reward.name=aesthetic", "reward.weights_path=w.pth"]
    with pytest.raises(ConfigError, match="'reward.weights_path': w.pth is relative"):
        check_scorers(config(*relative))


@pytest.fixture
def local_scorer(tmp_path, monkeypatch):
    """A user's module `my_scorer` importable in this process."""
    (tmp_path / "my_scorer.py").write_text(textwrap.dedent(LOCAL_SCORER))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("my_scorer")
    sys.modules.pop("my_scorer", None)


def test_a_module_scorer_is_batched_and_its_figures_kept(local_scorer):
    reward = make_reward(
        config(
            "reward.name=module", "reward.module=my_scorer:make_scorer", "reward.batch_size=2"
        ).reward
    )
    images = torch.linspace(0, 1, 5).view(5, 1, 1, 1).expand(5, 3, 4, 4)
    scores, info = reward(images, ["p"] * 5)
    assert torch.allclose(scores, torch.linspace(0, 1, 5))
    assert local_scorer.calls == [2, 2, 1]  # reward.batch_size images per call
    assert info["batch"].tolist() == [2.0, 2.0, 2.0, 2.0, 1.0]


def test_a_module_scorer_that_answers_wrongly_drops_its_batch(local_scorer):
    reward = make_reward(config("reward.name=module", "reward.module=my_scorer:make_scorer").reward)
    rollouts = [Rollout(i, "wrong count", torch.zeros(1), 0.0, 0, 0.0) for i in range(2)]
    kept, dropped = score_rollouts(reward, rollouts, torch.zeros(2, 3, 4, 4))
    assert kept == [] and dropped == {"reward_error": [0, 1]}


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("not_installed_pkg.scorer:make", "cannot import 'not_installed_pkg.scorer' here"),
        ("my_scorer:missing", "'my_scorer' has no 'missing'"),
        ("my_scorer:calls", "'my_scorer:calls' is not callable"),
    ],
)
def test_a_module_that_cannot_be_loaded_names_the_key(local_scorer, spec, says):
    cfg = config("reward.name=module", f"reward.module={spec}")
    check_scorers(cfg)  # the driver's check imports nothing
    with pytest.raises(ConfigError, match=f"config key 'reward.module': {says}"):
        make_reward(cfg.reward)


# what Ray 2.60 raised when pip could not install reward.runtime_env.pip=[roman==99.0] (cut)
PIP_FAILURE = """Failed to set up runtime environment.
Could not create the actor because its associated runtime env failed to be created.
[Node 192.0.2.2] Traceback (most recent call last):
  File "ray/_private/runtime_env/utils.py", line 105, in check_output_cmd
ray._private.runtime_env.utils.SubprocessCalledProcessError: Run cmd[9] failed with the details.
Last 50 lines of stdout:
    ERROR: Could not find a version that satisfies the requirement roman==99.0 (from versions: 5.2)
    ERROR: No matching distribution found for roman==99.0
"""


def test_a_runtime_env_that_fails_is_one_line_from_its_last_error(monkeypatch):
    def fails(ref):
        raise RuntimeEnvSetupError(PIP_FAILURE)

    monkeypatch.setattr(actor_start.ray, "get", fails)
    line, text = actor_start.start_error(None)
    assert line == "its runtime_env failed: ERROR: No matching distribution found for roman==99.0"
    assert "roman==99.0" in text and "Traceback" in text  # the whole of it goes to the log


@pytest.mark.ray
def test_a_runtime_env_ray_cannot_set_up_stops_the_run_in_one_line(ray_local, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [
        "train",
        "model.backend=simulated",
        "reward.name=brightness",
        "train.prompts=[p one,p two]",
        "reward.runtime_env.working_dir=local:///nowhere/scorer",  # a URI: Ray checks it
        f"train.out_dir={run}",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "find-ray: error: reward actor 0 failed to start: its runtime_env failed: ValueError: "
        "working_dir local:///nowhere/scorer points to '/nowhere/scorer', which must already "
        f"exist on every node. (traceback: {run / 'actor-start.log'})"
    )


def registry_answers() -> bool:
    """Whether the package index pip would use answers a TCP connection (proxies included)."""
    index = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return reachable(os.environ.get("PIP_INDEX_URL") or index or "https://pypi.org/simple")


def pip_env_folder(python: str) -> Path | None:
    """The folder of the pip environment Ray made, from its interpreter's path
    (.../runtime_resources/pip/<hash>/virtualenv/bin/python)."""
    path = Path(python)
    return next((p for p in path.parents if p.parent.name == "pip"), None)


@pytest.mark.ray
def test_a_reward_from_a_package_only_its_actors_have(ray_local, tmp_path, monkeypatch):
    """`roman` (pure Python, 6 kB on PyPI) is not in this venv: Ray installs it into the reward
    actors' runtime environment with pip, the scorer's module travels as their working_dir,
    and an env var scales the reward. The driver and the rollout actors never see any of it."""
    if importlib.util.find_spec("roman") is not None:
        pytest.skip("roman is installed in this venv; the test needs a package that is not")
    if not registry_answers():
        pytest.skip("the package registry does not answer (offline?): pip cannot install roman")
    monkeypatch.chdir(tmp_path)  # the working_dir is given relative, as a user would
    (tmp_path / "scorer").mkdir()
    (tmp_path / "scorer" / "roman_reward.py").write_text(SCORER)
    cfg = load_config(
        None,
        [
            "model.backend=simulated",
            "model.latency_s=0.02",
            "train.prompts=[p one,p two]",
            "train.samples_per_prompt=4",
            "train.iterations=2",
            "eval.samples_per_prompt=2",
            "ray.rollouts_per_task=4",
            "learner.loss.drcm_hidden=8",
            "learner.drcm_steps=2",
            "reward.name=module",
            "reward.module=roman_reward:make_scorer",
            "reward.runtime_env.pip=[roman==5.2]",
            "reward.runtime_env.working_dir=scorer",
            "reward.runtime_env.env_vars.ROMAN_REWARD_SCALE=10",
            f"train.out_dir={tmp_path / 'run'}",
        ],
    )
    trainer, seen = RayTrainer(cfg), {}

    def look_at_the_actors(t: RayTrainer) -> None:
        for kind in ("reward", "rollout"):
            actor = getattr(t.actors, kind)[0]
            seen[kind] = ray.get(
                actor.__ray_call__.remote(  # (a lambda travels by value)
                    lambda _: (
                        os.environ.get("ROMAN_REWARD_SCALE"),
                        sys.executable,
                        importlib.util.find_spec("roman") is not None,
                    )
                )
            )

    trainer.after_update = look_at_the_actors
    try:
        result = trainer.run()
    finally:  # the copy of this venv (~6 GB) Ray made for the reward actors, now unused
        if "reward" in seen and (folder := pip_env_folder(seen["reward"][1])):
            shutil.rmtree(folder, ignore_errors=True)
    means = [h["reward_mean"] for h in result.history if "reward_mean" in h]
    assert means and all(3 < m < 7 for m in means), means  # 10 x brightness of sigmoid(z)
    assert seen["reward"][0] == "10" and seen["reward"][2]
    assert "runtime_resources/pip" in seen["reward"][1]
    assert seen["rollout"] == (None, sys.executable, False)  # the rollout actors: untouched
    assert "roman" not in sys.modules and "roman_reward" not in sys.modules  # never the driver
