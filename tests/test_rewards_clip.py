"""CLIP-family rewards on a tiny random open_clip ViT saved as a checkpoint file (no network)."""

from __future__ import annotations

import pytest
import torch

from find_ray.config import RewardConfig
from find_ray.errors import ConfigError, ModelPathError
from find_ray.rewards import (
    REWARDS,
    check_reward,
    frame_averaged,
    make_differentiable_reward,
    make_reward,
    open_clip_model,
)
from find_ray.rewards.aesthetic import AestheticHead, aesthetic_core
from find_ray.rewards.batching import as_differentiable
from find_ray.rewards.clip_pixels import clip_pixels
from find_ray.rewards.clipscore import SCALE, clipscore_core
from find_ray.rewards.hpsv2 import hpsv2_core, pad_square
from find_ray.rewards.open_clip_model import load_open_clip
from find_ray.rewards.video_clip import video_clip_core
from tests.tiny_clip import TINY_ARCH, TINY_WIDTH, save_tiny_clip

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
def hps_checkpoint(tmp_path_factory):
    """A tiny CLIP in HPSv2's checkpoint format, {'state_dict': ...}, other weights."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-hps"), seed=1, wrap=True)


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    """A random aesthetic head for the tiny backbone, saved as the predictor's .pth."""
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("tiny-aesthetic") / "head.pth"
    torch.save(AestheticHead(TINY_WIDTH).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(len(PROMPTS), 3, 40, 48)


def _cfg(name: str, path, **extra) -> RewardConfig:
    return RewardConfig(name=name, weights_path=str(path), model=TINY_ARCH, **extra)


def _aesthetic_cfg(head, backbone, **extra) -> RewardConfig:
    model = f"{TINY_ARCH}:{backbone}"
    return RewardConfig(name="aesthetic", weights_path=str(head), model=model, **extra)


def _load(path, dtype=torch.float32):
    return load_open_clip(TINY_ARCH, str(path), "cpu", dtype)


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
    clip = _load(tiny_clip)
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
    clip = _load(tiny_clip)
    calls = []
    encode = clip.model.encode_text
    clip.model.encode_text = lambda tokens, **kw: calls.append(len(tokens)) or encode(tokens, **kw)
    first = clip.embed_texts(PROMPTS)
    again = clip.embed_texts(PROMPTS[::-1])
    assert calls == [len(set(PROMPTS))]  # one pass, each distinct prompt once
    torch.testing.assert_close(again, first.flip(0))


def test_text_cache_is_bounded(tiny_clip, monkeypatch):
    monkeypatch.setattr(open_clip_model, "TEXT_CACHE", 3)
    clip = _load(tiny_clip)
    for prompt in PROMPTS:
        clip.embed_texts([prompt])
    assert list(clip.texts) == ["two blue squares", "a cat", "a dog on a hill"]
    both = clip.embed_texts(["a cat", "x", "y", "z"])  # an old prompt with more than fit
    assert both.shape == (4, TINY_WIDTH) and list(clip.texts) == ["x", "y", "z"]


def test_clipscore_differentiable(tiny_clip, images):
    cfg = _cfg("clipscore", tiny_clip, batch_size=2)
    x = images.clone().requires_grad_(True)
    scores = make_differentiable_reward(cfg)(x, PROMPTS)
    torch.testing.assert_close(scores.detach(), make_reward(cfg)(images, PROMPTS)[0])
    scores.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()

    clip = _load(tiny_clip, torch.float64)
    score = as_differentiable(clipscore_core(clip), batch_size=1)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: clip.cosine(v, PROMPTS[:2]), (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda v: score(v, PROMPTS[:2]), (x,), fast_mode=True)


# ---------------------------------------------------------------- checks


@pytest.mark.parametrize("name", ["clipscore", "hpsv2", "video_clip"])
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


# ---------------------------------------------------------------- hpsv2


def test_hpsv2_checkpoint_round_trip(hps_checkpoint, tiny_clip, images):
    images = images[..., 4:44]  # square: HPSv2's padding is then a no-op
    loaded = torch.load(hps_checkpoint, weights_only=True)
    assert set(loaded) == {"state_dict"}
    scores, info = make_reward(_cfg("hpsv2", hps_checkpoint, batch_size=2))(images, PROMPTS)
    assert scores.shape == (len(PROMPTS),) and info == {}
    import open_clip

    model = open_clip.create_model(TINY_ARCH)
    model.load_state_dict(loaded["state_dict"])  # as hpsv2/img_score.py loads it
    with torch.no_grad():
        features = model.encode_image(clip_pixels(images, 32), normalize=True)
        texts = model.encode_text(open_clip.get_tokenizer(TINY_ARCH)(PROMPTS), normalize=True)
    torch.testing.assert_close(scores, torch.diagonal(features @ texts.T), rtol=1e-4, atol=1e-5)
    other = make_reward(_cfg("hpsv2", tiny_clip))(images, PROMPTS)[0]
    assert not torch.allclose(scores, other)  # the checkpoint's weights, not random ones


def test_hpsv2_pads_to_a_square():
    wide = torch.ones(1, 3, 4, 8)
    padded = pad_square(wide)
    assert padded.shape == (1, 3, 8, 8)
    assert padded[..., 2:6, :].eq(1).all() and padded[..., :2, :].eq(0).all()
    assert padded[..., 6:, :].eq(0).all()
    assert pad_square(padded) is padded


# ---------------------------------------------------------------- aesthetic


def test_aesthetic_head_file_round_trip(head_file, tiny_clip, images):
    state = torch.load(head_file, weights_only=True)
    assert sorted(state) == sorted(
        f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")
    )
    scores, info = make_reward(_aesthetic_cfg(head_file, tiny_clip, batch_size=2))(images, PROMPTS)
    assert scores.shape == (len(PROMPTS),) and info == {}
    clip, head = _load(tiny_clip), AestheticHead(TINY_WIDTH).eval()
    head.load_state_dict(state)
    with torch.no_grad():
        embeds = clip.embed_images(images)
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        by_hand = head.layers(embeds).squeeze(-1)
    torch.testing.assert_close(scores, by_hand, rtol=1e-4, atol=1e-5)
    assert not head.training and len(head.layers) == 8


def test_aesthetic_wrong_head_is_one_line(tiny_clip, tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(AestheticHead(768).state_dict(), path)
    with pytest.raises(ModelPathError) as wrong:
        make_reward(_aesthetic_cfg(path, tiny_clip))
    _one_line(wrong, "reward.weights_path", "16-wide", "layers.0.weight")


def test_aesthetic_checks(head_file, tiny_clip, tmp_path, monkeypatch):
    check_reward(_aesthetic_cfg(head_file, tiny_clip))
    with pytest.raises(ModelPathError) as no_head:
        check_reward(_aesthetic_cfg(tmp_path / "no-head.pth", tiny_clip))
    _one_line(no_head, "reward.weights_path", "no-head.pth")
    with pytest.raises(ConfigError) as unknown:
        check_reward(RewardConfig(name="aesthetic", weights_path=str(head_file), model="X-1"))
    _one_line(unknown, "reward.model", "'X-1'", "ViT-L-14")
    with pytest.raises(ModelPathError) as missing:
        check_reward(_aesthetic_cfg(head_file, tmp_path / "no-backbone.bin"))
    _one_line(missing, "reward.model", "no-backbone.bin", "ViT-L-14-quickgelu:")
    with pytest.raises(ConfigError) as untagged:  # online, but no 'openai' weights for it
        check_reward(RewardConfig(name="aesthetic", weights_path=str(head_file), model=TINY_ARCH))
    _one_line(untagged, "reward.model", "openai", TINY_ARCH)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelPathError) as offline:
        check_reward(RewardConfig(name="aesthetic", weights_path=str(head_file)))
    _one_line(offline, "reward.model", "HF_HUB_OFFLINE")
    with pytest.raises(ModelPathError) as offline_head:
        check_reward(RewardConfig(name="aesthetic", model=f"{TINY_ARCH}:{tiny_clip}"))
    _one_line(offline_head, "reward.weights_path", "HF_HUB_OFFLINE", "linearMSE.pth")


# ---------------------------------------------------------------- video_clip


def test_video_clip_averages_frame_cosines(tiny_clip):
    torch.manual_seed(3)
    videos = torch.rand(2, 3, 3, 32, 32)
    prompts = ["a red circle moving", "a blue square"]
    reward = make_reward(_cfg("video_clip", tiny_clip, batch_size=1))
    assert frame_averaged(reward) is reward  # it takes the videos themselves
    scores, info = reward(videos, prompts)
    assert scores.shape == info["cosine_min"].shape == (2,)
    clip = _load(tiny_clip)
    with torch.no_grad():
        frames = torch.stack([clip.cosine(videos[:, f], prompts) for f in range(3)], 1)
    torch.testing.assert_close(scores, frames.mean(1), rtol=1e-4, atol=1e-5)
    # the worst frame's cosine, not a per-frame average: make_reward passed the videos whole
    torch.testing.assert_close(info["cosine_min"], frames.min(1).values, rtol=1e-4, atol=1e-5)
    image_scores, _ = reward(videos[:, 0], prompts)  # 4-D images: 1-frame videos
    torch.testing.assert_close(image_scores, frames[:, 0], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- all of them


def _all_cfgs(tiny_clip, hps_checkpoint, head_file, **extra) -> dict[str, RewardConfig]:
    return {
        "clipscore": _cfg("clipscore", tiny_clip, **extra),
        "hpsv2": _cfg("hpsv2", hps_checkpoint, **extra),
        "aesthetic": _aesthetic_cfg(head_file, tiny_clip, **extra),
        "video_clip": _cfg("video_clip", tiny_clip, **extra),
    }


def test_registry_routes_by_name(tiny_clip, hps_checkpoint, head_file, images):
    assert {"clipscore", "aesthetic", "hpsv2", "video_clip"} <= set(REWARDS)
    cfgs = _all_cfgs(tiny_clip, hps_checkpoint, head_file)
    clips = {"clipscore": tiny_clip, "hpsv2": hps_checkpoint, "video_clip": tiny_clip}
    for name, cfg in cfgs.items():
        scores, _ = make_reward(cfg)(images, PROMPTS)
        clip = _load(clips.get(name, tiny_clip))
        with torch.no_grad():
            if name == "aesthetic":
                head = AestheticHead(TINY_WIDTH).eval()
                head.load_state_dict(torch.load(head_file, weights_only=True))
                expected = aesthetic_core(clip, head)(images, PROMPTS)[0]
            else:
                cores = {"clipscore": clipscore_core, "hpsv2": hpsv2_core}
                core = cores[name](clip) if name in cores else video_clip_core(clip, 16)
                expected = core(images, PROMPTS)[0]
        torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_batching_and_placement(tiny_clip, hps_checkpoint, head_file, images, device):
    big = _all_cfgs(tiny_clip, hps_checkpoint, head_file, batch_size=16, device=device)
    small = _all_cfgs(tiny_clip, hps_checkpoint, head_file, batch_size=2, device=device)
    videos = torch.stack([images[:3], images[1:4]], 1)  # (3, 2, 3, H, W)
    for name in big:
        x = videos if name == "video_clip" else images
        prompts = PROMPTS[: len(x)]
        reward = make_reward(small[name])
        scores, info = reward(x, prompts)
        assert scores.shape == (len(x),) and scores.dtype == torch.float32, name
        assert scores.device.type == "cpu" and torch.isfinite(scores).all(), name
        assert all(v.shape == (len(x),) and v.device.type == "cpu" for v in info.values())
        full, _ = make_reward(big[name])(x, prompts)
        torch.testing.assert_close(scores, full, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("name", ["hpsv2", "aesthetic", "video_clip"])
def test_differentiable_forms(name, tiny_clip, hps_checkpoint, head_file, images):
    cfg = _all_cfgs(tiny_clip, hps_checkpoint, head_file, batch_size=2)[name]
    x = images.clone().requires_grad_(True)
    scores = make_differentiable_reward(cfg)(x, PROMPTS)
    torch.testing.assert_close(scores.detach(), make_reward(cfg)(images, PROMPTS)[0])
    scores.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

    clip = _load(hps_checkpoint if name == "hpsv2" else tiny_clip, torch.float64)
    if name == "aesthetic":
        head = AestheticHead(TINY_WIDTH).double().eval()
        head.load_state_dict(torch.load(head_file, weights_only=True))
        core = aesthetic_core(clip, head)
    else:
        core = hpsv2_core(clip) if name == "hpsv2" else video_clip_core(clip, batch_size=3)
    score = as_differentiable(core, batch_size=1)
    shape = (2, 2, 3, 16, 12) if name == "video_clip" else (2, 3, 16, 12)
    x = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: score(v, PROMPTS[:2]), (x,), fast_mode=True)


def test_image_rewards_still_average_frames():
    videos = torch.rand(2, 3, 3, 8, 8)
    scores, _ = make_reward(RewardConfig(name="brightness"))(videos, ["a", "b"])
    torch.testing.assert_close(scores, videos.flatten(2).mean(2).mean(1))
