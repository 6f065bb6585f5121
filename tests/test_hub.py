"""Offline detection that does not depend on HF_HUB_OFFLINE: the hub cache, then a short
connection probe (stubbed here: no test opens a connection to an outside host)."""

from __future__ import annotations

import socket
import time

import huggingface_hub
import pytest

from find_ray.backends import check_model
from find_ray.config import ModelConfig, RewardConfig, load_config
from find_ray.errors import ModelPathError
from find_ray.rewards import check_reward, check_scorers, hub
from find_ray.rewards.open_clip_model import tag_remote


@pytest.fixture
def unreachable(monkeypatch, tmp_path):
    """An offline machine whose HF_HUB_OFFLINE is unset, with an empty hub cache."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    asked: list[str] = []
    monkeypatch.setattr(hub, "reachable", lambda url: asked.append(url) or False)
    return asked


def _cache(root, repo: str, filename: str) -> None:
    """A hub cache entry as huggingface_hub lays it out (refs/main -> snapshot)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    (folder / "snapshots" / "abc123" / filename).write_text("{}")


def test_the_sd15_reward_offline_is_one_line_naming_it_where_and_how(unreachable, tmp_path):
    cfg = load_config("configs/sd15.yaml")
    with pytest.raises(ModelPathError) as e:
        check_scorers(cfg)  # what RayTrainer runs before any actor starts
    message = str(e.value)
    assert "\n" not in message and unreachable == ["https://huggingface.co"]
    assert message.startswith(
        "reward 'imagereward': reward.weights_path is empty, and THUDM/ImageReward "
        f"(ImageReward.pt) is not in {tmp_path / 'hub'} and huggingface.co:443 does not answer "
        "in 3 s (offline?); get it with `huggingface-cli download THUDM/ImageReward "
        "ImageReward.pt med_config.json --local-dir DIR`"
    )
    assert "reward.weights_path=DIR" in message


def test_a_cached_file_needs_no_network_even_with_hf_hub_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "reachable", lambda url: pytest.fail("probed a cached file"))
    _cache(tmp_path, "THUDM/ImageReward", "ImageReward.pt")
    _cache(tmp_path, "bert-base-uncased", "vocab.txt")
    assert hub.hub_file("THUDM/ImageReward", "ImageReward.pt").cached
    check_reward(RewardConfig(name="imagereward"))  # weights and tokenizer from the cache


def test_the_tokenizer_is_checked_too(unreachable, tmp_path):
    _cache(tmp_path / "hub", "yuvalkirstain/PickScore_v1", "config.json")
    with pytest.raises(ModelPathError) as e:
        check_reward(RewardConfig(name="pickscore"))
    message = str(e.value)
    assert "reward.weights_path and reward.model are empty" in message
    assert "laion/CLIP-ViT-H-14-laion2B-s32B-b79K (tokenizer_config.json)" in message


def test_open_clip_tags_resolve_to_the_hub_file_open_clip_fetches():
    remote = tag_remote("ViT-L-14", "openai")
    assert remote.what.startswith("timm/vit_large_patch14_clip_224.openai (")
    assert "open_clip_pytorch_model.bin" in remote.what and not remote.cached
    assert tag_remote("ViT-L-14", "no-such-tag").cached  # nothing to fetch: check_tag says so


def test_a_hub_model_offline_is_one_line_and_downloads_nothing(unreachable, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("fetch"))
    with pytest.raises(ModelPathError) as e:
        check_model(ModelConfig(path="someone/tiny-sd"))
    message = str(e.value)
    assert "\n" not in message and message.startswith("model.path 'someone/tiny-sd': no folder")
    assert "someone/tiny-sd (model_index.json) is not in" in message
    assert "huggingface.co:443 does not answer" in message
    assert "huggingface-cli download someone/tiny-sd --local-dir DIR" in message


def test_the_probe_goes_to_the_proxy_unless_the_host_bypasses_it(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert hub.probe_target("https://huggingface.co") == ("huggingface.co", 443)
    monkeypatch.setenv("https_proxy", "http://proxy.internal:3128")
    assert hub.probe_target("https://huggingface.co") == ("proxy.internal", 3128)
    monkeypatch.setenv("no_proxy", "huggingface.co")
    assert hub.probe_target("https://huggingface.co/x") == ("huggingface.co", 443)


def test_connects_on_loopback_and_bounds_a_hanging_lookup(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert hub.connects("127.0.0.1", port, timeout_s=2.0)
    assert not hub.connects("127.0.0.1", port, timeout_s=2.0)  # closed now

    def hanging_lookup(*args, **kwargs):
        time.sleep(5)
        raise OSError("no answer")  # what the stalled lookup ends in, long after the probe

    monkeypatch.setattr(socket, "create_connection", hanging_lookup)
    began = time.monotonic()
    assert not hub.connects("hangs.invalid", 443, timeout_s=0.2)
    assert time.monotonic() - began < 2
