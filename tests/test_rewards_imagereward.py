"""ImageReward on a tiny random model saved in the original checkpoint format (no downloads):
key renaming both ways, round trip through the reward, the ViT against timm's (BLIP's ViT is a
copy of it, same names), batching, placement, one-line check errors, gradients."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch

from find_ray.config import RewardConfig
from find_ray.errors import ModelPathError
from find_ray.rewards import check_reward, make_differentiable_reward, make_reward
from find_ray.rewards import imagereward_blip as blip
from find_ray.rewards.clip_pixels import clip_pixels
from find_ray.rewards.imagereward import ImageReward
from tests.tiny_rewards import UNUSED, VISION, VOCAB, save_tiny_imagereward

PROMPTS = ["two cats on the sofa", "a red dog", "two cats on the sofa", "blue", "a cat [ENC]"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, blip.ImageRewardModel, object]:
    return save_tiny_imagereward(tmp_path_factory.mktemp("imagereward"))


def _cfg(folder: Path, **kw) -> RewardConfig:
    return RewardConfig(name="imagereward", weights_path=str(folder), **kw)


def _images(n: int = 5, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_renaming_covers_every_key_both_ways(tiny):
    model = tiny[1]
    ours = model.state_dict()
    original = blip.to_original(ours)
    assert {k.split(".")[0] for k in original} == {"blip", "mlp"}
    assert "blip.visual_encoder.blocks.0.attn.qkv.weight" in original
    assert "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight" in original
    assert "mlp.layers.7.bias" in original and "mlp.layers.1.weight" not in original
    back, unexpected = blip.from_original({**original, **UNUSED})
    assert unexpected == [] and set(back) == set(ours)
    assert all(back[k] is ours[k] for k in ours)
    assert blip.from_original({"blip.itm_head.weight": torch.zeros(1)}) == (
        {},
        ["blip.itm_head.weight"],
    )
    inferred = blip.vision_config(original)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        assert getattr(inferred, key) == getattr(VISION, key)
    assert (inferred.image_size, inferred.patch_size, inferred.layer_norm_eps) == (32, 16, 1e-6)


def test_vision_matches_timm_vit_loaded_from_the_original_names(tiny):
    """BLIP's vit.py is timm's VisionTransformer (fused qkv, eps 1e-6, CLS kept, final norm):
    the renamed BlipVisionModel must give the same tokens."""
    from timm.models.vision_transformer import VisionTransformer

    model = tiny[1]
    vit = VisionTransformer(
        img_size=32,
        patch_size=16,
        embed_dim=128,
        depth=1,
        num_heads=2,
        mlp_ratio=2,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_classes=0,
        global_pool="",
    ).eval()
    prefix = "blip.visual_encoder."
    original = blip.to_original(model.state_dict())
    vit.load_state_dict({k[len(prefix) :]: v for k, v in original.items() if k.startswith(prefix)})
    pixels = clip_pixels(_images(), 32)
    with torch.no_grad():
        ours = model.vision(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(ours, vit.forward_features(pixels), rtol=1e-5, atol=1e-5)


def test_scores_round_trip_through_the_checkpoint(tiny):
    folder, model, tokenizer = tiny
    images = _images()
    scores, info = make_reward(_cfg(folder))(images, PROMPTS)
    assert scores.shape == (5,) and scores.dtype == torch.float32 and info == {}

    tokens = tokenizer(
        PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt"
    )
    assert tokens.input_ids.shape == (5, 35) and (tokens.input_ids[:, 0] == 2).all()  # [CLS]
    assert tokens.input_ids[4, 3] == tokenizer.convert_tokens_to_ids("[ENC]") == len(VOCAB) + 1
    with torch.no_grad():
        expected = model(clip_pixels(images, 32), tokens.input_ids, tokens.attention_mask)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert scores[0] != scores[2]  # same prompt, other image: the image matters
    assert scores.std() > 1e-3


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
    scorer = ImageReward(_cfg(folder, device=device, dtype=dtype))
    param = next(scorer.model.parameters())
    assert param.device.type == device and param.dtype == getattr(torch, dtype)
    assert not scorer.model.training
    scores, _ = make_reward(_cfg(folder, device=device, dtype=dtype))(_images(), PROMPTS)
    reference, _ = make_reward(_cfg(folder))(_images(), PROMPTS)
    assert scores.device.type == "cpu" and scores.dtype == torch.float32
    scale = reference.abs().max().item()
    torch.testing.assert_close(scores, reference, rtol=0.05, atol=0.05 * scale)


def _one_line_error(cfg: RewardConfig) -> str:
    with pytest.raises(ModelPathError) as err:
        check_reward(cfg)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_check_errors_are_one_line_and_load_nothing(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "load", None)  # a load would fail loudly
    check_reward(_cfg(tiny[0]))
    check_reward(_cfg(tiny[0] / "ImageReward.pt"))  # the file itself
    missing = tmp_path / "nowhere"
    message = _one_line_error(_cfg(missing))
    assert str(missing) in message and "reward.weights_path" in message
    assert "huggingface-cli download THUDM/ImageReward ImageReward.pt" in message
    assert "no ImageReward.pt in" in _one_line_error(_cfg(tmp_path))

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "ImageReward.pt").write_bytes(b"")
    check_reward(_cfg(bare))  # online: bert-base-uncased from the hub
    check_reward(_cfg(bare, model=str(tiny[0])))  # tokenizer from reward.model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _one_line_error(RewardConfig(name="imagereward"))
    assert "reward.weights_path" in message and "HF_HUB_OFFLINE" in message
    assert "reward.model" in _one_line_error(_cfg(bare))
    assert "reward.model" in _one_line_error(_cfg(tiny[0], model="org/tokenizer"))
    check_reward(_cfg(bare, model=str(tiny[0])))


def _load_error(folder: Path) -> str:
    with pytest.raises(ModelPathError) as err:
        make_reward(_cfg(folder))
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and "reward.weights_path" in message
    return message


def test_wrong_checkpoint_or_config_is_one_line(tiny, tmp_path):
    folder = tmp_path / "wrong"
    folder.mkdir()
    (folder / "vocab.txt").write_text((tiny[0] / "vocab.txt").read_text())
    checkpoint = torch.load(tiny[0] / "ImageReward.pt", weights_only=True)
    torch.save({"blip.visual_encoder.cls_token": torch.zeros(1, 1, 128)}, folder / "ImageReward.pt")
    assert "not an ImageReward checkpoint" in _load_error(folder)

    torch.save(
        {**checkpoint, "blip.itm_head.weight": torch.zeros(2, 32)}, folder / "ImageReward.pt"
    )
    assert "unexpected keys ['blip.itm_head.weight']" in _load_error(folder)

    torch.save(checkpoint, folder / "ImageReward.pt")
    med = json.loads((tiny[0] / "med_config.json").read_text())
    (folder / "med_config.json").write_text(json.dumps(dict(med, intermediate_size=48)))
    assert "size mismatch for text.encoder.layer.0.intermediate" in _load_error(folder)


def test_differentiable_form_gradcheck(tiny):
    scorer = make_differentiable_reward(_cfg(tiny[0], batch_size=1))
    images = _images(2, size=6).requires_grad_()
    scores = scorer(images, PROMPTS[:2])
    assert scores.shape == (2,) and scores.dtype == torch.float32
    scores.sum().backward()
    assert images.grad.abs().sum() > 0  # gradients reach the pixels

    core = ImageReward(_cfg(tiny[0]))
    core.model.double()
    images = images.detach().double().requires_grad_()
    prompts = PROMPTS[:2]
    assert torch.autograd.gradcheck(lambda x: core(x, prompts)[0], (images,), atol=1e-6)
