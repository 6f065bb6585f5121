"""`pickscore`: PickScore (yuvalkirstain/PickScore_v1), a CLIP-H fine-tuned on human preferences.

Score = logit_scale.exp() * cos(image embedding, text embedding), as in the PickScore README
(about 20-23 for typical images). Where the weights come from:

- `reward.weights_path`: a local folder with the CLIPModel (config.json + weights), e.g.
  `huggingface-cli download yuvalkirstain/PickScore_v1 --local-dir DIR`; empty: that hub id
  (cached, or online).
- the tokenizer: `reward.model` if set (a folder or hub id, e.g. a download of
  laion/CLIP-ViT-H-14-laion2B-s32B-b79K, PickScore's processor), else the weights folder, else
  (online) laion/CLIP-ViT-H-14-laion2B-s32B-b79K.

Pixels are preprocessed in torch (`clip_pixels`: bicubic resize to the vision config's image
size, centre crop, OpenAI mean/std, which the CLIP-H processor uses), so the differentiable
form shares the code. Text embeddings are cached per prompt string.
"""

from __future__ import annotations

from pathlib import Path

import torch

from find_ray.config import ScorerConfig
from find_ray.errors import ModelPathError
from find_ray.rewards.clip_pixels import clip_pixels
from find_ray.rewards.hub import hub_file
from find_ray.rewards.registry import RewardFn, register, register_differentiable
from find_ray.rewards.weights import require, resolve_weights

MODEL = "yuvalkirstain/PickScore_v1"
PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
HOW = (
    f"get it with `huggingface-cli download {MODEL} --local-dir DIR` (and the tokenizer: "
    f"`huggingface-cli download {PROCESSOR} --local-dir TOK`), then set "
    "reward.weights_path=DIR (and reward.model=TOK if DIR has no tokenizer)"
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
TOKENIZER_CONFIG = "tokenizer_config.json"  # what AutoTokenizer reads first from a hub id


def sources(cfg: ScorerConfig) -> tuple[str, str]:
    """(model, tokenizer) folders or hub ids; one-line ModelPathError if unusable. Loads nothing."""
    model = resolve_weights(cfg, MODEL, HOW, hub_file(MODEL, "config.json"))
    if cfg.model:
        if not Path(cfg.model).expanduser().exists():
            subject = f"reward {cfg.name!r}: no tokenizer folder at {cfg.model} (reward.model)"
            require(hub_file(cfg.model, TOKENIZER_CONFIG), subject, HOW)
        return model, cfg.model
    if not cfg.weights_path:
        subject = f"reward {cfg.name!r}: reward.weights_path and reward.model are empty"
        require(hub_file(PROCESSOR, TOKENIZER_CONFIG), subject, HOW)
        return model, PROCESSOR
    folder = Path(model)
    if not (folder / "config.json").is_file():
        raise ModelPathError(
            f"reward {cfg.name!r}: {folder} (reward.weights_path) is not a model folder "
            f"(no config.json); {HOW}"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelPathError(
            f"reward {cfg.name!r}: no tokenizer in {folder} (reward.weights_path); set "
            f"reward.model to a folder with {PROCESSOR}'s tokenizer; {HOW}"
        )
    return model, str(folder)


def check_pickscore(cfg: ScorerConfig) -> None:
    sources(cfg)


def _embeds(output) -> torch.Tensor:
    """get_*_features returns the projected embeddings as a tensor (transformers 4) or as the
    `pooler_output` of a model output (transformers 5), normalised here."""
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    return features / features.norm(dim=-1, keepdim=True)


class PickScore:
    """Differentiable PickScore: (B, 3, H, W) in [0, 1] and prompts -> (B,) scores, batched by
    `cfg.batch_size`; gradients flow to the images (the model itself is frozen)."""

    def __init__(self, cfg: ScorerConfig):
        from transformers import AutoTokenizer, CLIPModel

        model_source, tokenizer_source = sources(cfg)
        dtype = getattr(torch, cfg.dtype)
        self.model = CLIPModel.from_pretrained(model_source, dtype=dtype).to(cfg.device).eval()
        self.model.requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        self.batch_size = cfg.batch_size
        positions = self.model.config.text_config.max_position_embeddings
        self.max_length = min(self.tokenizer.model_max_length, positions)
        self.text_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        """(B, D) normalised text embeddings, computed once per distinct prompt."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self.text_cache))
        device = self.model.logit_scale.device
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            tokens = self.tokenizer(
                chunk,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            embeds = _embeds(self.model.get_text_features(**tokens))
            self.text_cache.update(zip(chunk, embeds, strict=True))
        return torch.stack([self.text_cache[p] for p in prompts])

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        model = self.model
        param = model.logit_scale
        size = model.config.vision_config.image_size
        work = torch.promote_types(images.dtype, torch.float32)  # float64 stays (gradcheck)
        scores = []
        for start in range(0, len(prompts), self.batch_size):
            stop = start + self.batch_size
            pixels = clip_pixels(images[start:stop].to(param.device, work), size)
            image = _embeds(model.get_image_features(pixel_values=pixels.to(param.dtype)))
            text = self.text_embeds(prompts[start:stop]).to(image.dtype)
            scores.append(param.exp() * (image * text).sum(-1))
        return torch.cat(scores)


@register_differentiable("pickscore")
def pickscore_differentiable(cfg: ScorerConfig) -> PickScore:
    return PickScore(cfg)


@register("pickscore", check=check_pickscore)
def pickscore_reward(cfg: ScorerConfig) -> RewardFn:
    scorer = PickScore(cfg)

    @torch.no_grad()
    def score(images: torch.Tensor, prompts: list[str]):
        scores = scorer(images, prompts).float().cpu()
        return scores, {"cosine": scores / scorer.model.logit_scale.exp().float().cpu()}

    return score
