"""PickScore on a tiny random CLIPModel saved to disk (no downloads): exact against CLIPModel's
own logits, batching, placement, the text cache, one-line check errors, gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPModel

from find_ray.config import RewardConfig
from find_ray.errors import ModelPathError
from find_ray.rewards import check_reward, make_differentiable_reward, make_reward
from find_ray.rewards.clip_pixels import OPENAI_MEAN, OPENAI_STD
from tests.tiny_rewards import save_tiny_pickscore

PROMPTS = ["a red cube", "a blue ball", "a red cube", "two cats", "a blue ball"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, CLIPModel, object]:
    return save_tiny_pickscore(tmp_path_factory.mktemp("pickscore"))


def _cfg(folder: Path, **kw) -> RewardConfig:
    return RewardConfig(name="pickscore", weights_path=str(folder), **kw)


def _images(n: int = 5, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_scores_equal_clipmodel_logits(tiny):
    folder, model, tokenizer = tiny
    images = _images()
    scores, info = make_reward(_cfg(folder))(images, PROMPTS)
    assert scores.shape == (5,) and scores.dtype == torch.float32
    assert info["cosine"].shape == (5,)

    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (OPENAI_MEAN, OPENAI_STD))
    tokens = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**tokens, pixel_values=(images - mean) / std).logits_per_image
    torch.testing.assert_close(scores, logits.diagonal(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(info["cosine"] * model.logit_scale.exp().detach(), scores)


def test_batch_size_does_not_change_scores(tiny):
    folder = tiny[0]
    images = _images(size=48)  # resized to 32 by the differentiable preprocessing
    small, _ = make_reward(_cfg(folder, batch_size=2))(images, PROMPTS)
    large, _ = make_reward(_cfg(folder, batch_size=16))(images, PROMPTS)
    torch.testing.assert_close(small, large, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "device, dtype",
    [
        ("cpu", "float32"),
        ("cpu", "bfloat16"),
        pytest.param(
            "cuda",
            "float16",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"),
        ),
    ],
)
def test_device_and_dtype(tiny, device, dtype):
    folder = tiny[0]
    scorer = make_differentiable_reward(_cfg(folder, device=device, dtype=dtype))
    param = next(scorer.model.parameters())
    assert param.device.type == device and param.dtype == getattr(torch, dtype)
    assert not scorer.model.training
    scores, _ = make_reward(_cfg(folder, device=device, dtype=dtype))(_images(), PROMPTS)
    reference, _ = make_reward(_cfg(folder))(_images(), PROMPTS)
    assert scores.device.type == "cpu" and scores.dtype == torch.float32
    torch.testing.assert_close(scores, reference, rtol=0.05, atol=0.05)


def test_text_embeddings_are_cached_per_prompt(tiny, monkeypatch):
    scorer = make_differentiable_reward(_cfg(tiny[0], batch_size=2))
    seen = []
    original = scorer.model.get_text_features

    def spy(input_ids, **kw):
        seen.append(input_ids.shape[0])
        return original(input_ids=input_ids, **kw)

    monkeypatch.setattr(scorer.model, "get_text_features", spy)
    first = scorer(_images(), PROMPTS)
    assert sum(seen) == 3 and set(scorer.text_cache) == set(PROMPTS)
    second = scorer(_images(), PROMPTS)
    assert sum(seen) == 3  # the second call hits the cache only
    torch.testing.assert_close(first, second)


def _one_line_error(cfg: RewardConfig) -> str:
    with pytest.raises(ModelPathError) as err:
        check_reward(cfg)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_check_errors_are_one_line_and_load_nothing(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(CLIPModel, "from_pretrained", None)  # a load would fail loudly
    check_reward(_cfg(tiny[0]))
    missing = tmp_path / "nowhere"
    message = _one_line_error(_cfg(missing))
    assert str(missing) in message and "reward.weights_path" in message
    assert "huggingface-cli download yuvalkirstain/PickScore_v1 --local-dir" in message
    assert "not a model folder" in _one_line_error(_cfg(tmp_path))

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    assert "reward.model" in _one_line_error(_cfg(bare))
    check_reward(_cfg(bare, model=str(tiny[0])))  # tokenizer from reward.model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _one_line_error(RewardConfig(name="pickscore"))
    assert "reward.weights_path" in message and "HF_HUB_OFFLINE" in message
    assert "reward.model" in _one_line_error(_cfg(tiny[0], model="org/tokenizer"))


def test_differentiable_form_gradcheck(tiny):
    scorer = make_differentiable_reward(_cfg(tiny[0]))
    scorer.model.double()
    images = _images(2, size=6).double().requires_grad_()
    prompts = PROMPTS[:2]
    assert torch.autograd.gradcheck(lambda x: scorer(x, prompts), (images,), atol=1e-6)
