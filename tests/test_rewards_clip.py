"""CLIP-family rewards on a tiny random open_clip ViT saved as a checkpoint file (no network)."""

from __future__ import annotations

import pytest
import torch

from find_ray.config import RewardConfig
from find_ray.errors import ConfigError, ModelPathError
from find_ray.rewards import check_reward, make_differentiable_reward, make_reward
from find_ray.rewards.batching import as_differentiable
from find_ray.rewards.clipscore import SCALE, clipscore_core
from find_ray.rewards.open_clip_model import load_open_clip
from tests.tiny_clip import TINY_ARCH, save_tiny_clip

PROMPTS = ["a red circle", "two blue squares", "a red circle", "a cat", "a dog on a hill"]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny CLIP checkpoint file."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(len(PROMPTS), 3, 40, 48)


def _cfg(name: str, path, **extra) -> RewardConfig:
    return RewardConfig(name=name, weights_path=str(path), model=TINY_ARCH, **extra)


def _one_line(error: pytest.ExceptionInfo, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


# ---------------------------------------------------------------- clipscore


@pytest.mark.parametrize("device", DEVICES)
def test_clipscore_is_hessel_clipscore(tiny_clip, images, device):
    scores, info = make_reward(_cfg("clipscore", tiny_clip, device=device))(images, PROMPTS)
    assert scores.shape == info["cosine"].shape == (len(PROMPTS),)
    assert scores.dtype == torch.float32 and scores.device.type == "cpu"
    clip = load_open_clip(TINY_ARCH, str(tiny_clip), "cpu", torch.float32)
    with torch.no_grad():
        cosine = clip.cosine(images, PROMPTS)
        pixels = torch.nn.functional.interpolate(
            images, size=(32, 38), mode="bicubic", antialias=True
        )[..., 3:35]
        mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
        std = torch.tensor(clip.std).view(1, 3, 1, 1)
        by_hand = torch.cosine_similarity(
            clip.model.encode_image((pixels - mean) / std),
            clip.model.encode_text(clip.tokenizer(PROMPTS)),
        )
    torch.testing.assert_close(info["cosine"], by_hand, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cosine, by_hand, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores, SCALE * by_hand.clamp(min=0), rtol=1e-4, atol=1e-5)


def test_clipscore_batching_and_dtype(tiny_clip, images):
    big = make_reward(_cfg("clipscore", tiny_clip, batch_size=16))(images, PROMPTS)
    small = make_reward(_cfg("clipscore", tiny_clip, batch_size=2))(images, PROMPTS)
    torch.testing.assert_close(small, big, rtol=1e-5, atol=1e-6)
    low = make_reward(_cfg("clipscore", tiny_clip, dtype="bfloat16"))(images, PROMPTS)
    assert low[0].dtype == torch.float32
    torch.testing.assert_close(low[1]["cosine"], big[1]["cosine"], rtol=0.1, atol=0.05)


def test_text_embeddings_are_cached_per_prompt(tiny_clip, images):
    clip = load_open_clip(TINY_ARCH, str(tiny_clip), "cpu", torch.float32)
    calls = []
    encode = clip.model.encode_text
    clip.model.encode_text = lambda tokens, **kw: calls.append(len(tokens)) or encode(tokens, **kw)
    first = clip.embed_texts(PROMPTS)
    again = clip.embed_texts(PROMPTS[::-1])
    assert calls == [len(set(PROMPTS))]  # one pass, each distinct prompt once
    torch.testing.assert_close(again, first.flip(0))


def test_clipscore_differentiable(tiny_clip, images):
    cfg = _cfg("clipscore", tiny_clip, batch_size=2)
    x = images.clone().requires_grad_(True)
    scores = make_differentiable_reward(cfg)(x, PROMPTS)
    torch.testing.assert_close(scores.detach(), make_reward(cfg)(images, PROMPTS)[0])
    scores.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()

    clip = load_open_clip(TINY_ARCH, str(tiny_clip), "cpu", torch.float64)
    score = as_differentiable(clipscore_core(clip), batch_size=1)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: clip.cosine(v, PROMPTS[:2]), (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda v: score(v, PROMPTS[:2]), (x,), fast_mode=True)


# ---------------------------------------------------------------- checks


@pytest.mark.parametrize("name", ["clipscore"])
def test_checks_are_one_line(name, tiny_clip, tmp_path, monkeypatch):
    check_reward(_cfg(name, tiny_clip))
    with pytest.raises(ModelPathError) as missing:
        check_reward(_cfg(name, tmp_path / "nowhere.pt"))
    _one_line(missing, "reward.weights_path", "nowhere.pt")
    with pytest.raises(ConfigError) as unknown:
        check_reward(RewardConfig(name=name, weights_path=str(tiny_clip), model="ViT-Q-99"))
    _one_line(unknown, "reward.model", "ViT-Q-99", "ViT-L-14", "open_clip.list_models()")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelPathError) as offline:
        check_reward(RewardConfig(name=name))
    _one_line(offline, "reward.weights_path", "HF_HUB_OFFLINE")
