"""One open_clip model, loaded once, that embeds images and prompts (shared by the CLIP rewards).

The architecture is an open_clip name (`open_clip.list_models()`) or the path of a model-config
JSON (a custom architecture, registered under its file stem); the weights a local
checkpoint file (open_clip's `pretrained=PATH`: a state dict, or `{'state_dict': ...}` as
HPSv2 saves it) or, online, a pretrained tag such as "openai". Images go through our
differentiable `clip_pixels` at the model's image size with its mean/std, so scores and
their gradients share one path; text embeddings are cached per prompt string.

OpenAI's CLIP weights use QuickGELU: a tag sets it itself, but for such weights in a local
file name the `-quickgelu` architecture (e.g. ViT-L-14-quickgelu).
"""

from __future__ import annotations

from pathlib import Path

import torch

from find_ray.config import ScorerConfig
from find_ray.errors import ConfigError, ModelPathError
from find_ray.rewards.clip_pixels import clip_pixels
from find_ray.rewards.hub import Remote, hub_file, url_file
from find_ray.rewards.weights import resolve_weights

TEXT_CACHE = 4096  # prompts whose embeddings are kept (training prompts repeat a lot)
EXAMPLES = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-quickgelu", "ViT-H-14", "ViT-bigG-14")


def check_architecture(arch: str) -> str:
    """The open_clip architecture name `arch` stands for; one-line error unless it is one.

    `arch` may also be the path of an open_clip model-config JSON (a custom architecture): it
    is registered with open_clip under its file stem. Loads no weights.
    """
    import open_clip

    if arch.endswith(".json"):
        path = Path(arch).expanduser()
        if not path.is_file():
            raise ModelPathError(f"config key 'reward.model': no open_clip model config at {path}")
        open_clip.add_model_config(path)
        arch = path.stem
    known = open_clip.list_models()
    if arch not in known:
        examples = ", ".join(name for name in EXAMPLES if name in known)
        raise ConfigError(
            f"config key 'reward.model': unknown open_clip architecture {arch!r}; known include "
            f"{examples} (all {len(known)}: open_clip.list_models()), or a model-config .json"
        )
    return arch


def clip_weights(
    cfg: ScorerConfig, arch: str, default: str, how: str, remote: Remote | None = None
) -> tuple[str, str]:
    """(architecture: `reward.model` or `arch`, weights: `reward.weights_path` or `default`,
    a pretrained tag unless `remote` says which file it downloads); one-line ConfigError /
    ModelPathError when unusable. Loads nothing."""
    arch = check_architecture(cfg.model or arch)
    return arch, resolve_weights(cfg, default, how, remote or tag_remote(arch, default))


def tag_remote(arch: str, tag: str) -> Remote:
    """The file open_clip downloads for pretrained weights `tag` of `arch`: a hub file (its
    safetensors form or the .bin) or a URL into ~/.cache/clip, as open_clip prefers them; a
    tag open_clip does not know needs nothing fetched (`check_tag` reports it)."""
    import open_clip
    from huggingface_hub import constants

    pretrained = open_clip.get_pretrained_cfg(arch, tag) or {}
    if pretrained.get("hf_hub"):
        repo, name = pretrained["hf_hub"].rstrip("/"), ""
        if not pretrained["hf_hub"].endswith("/"):
            repo, name = repo.rsplit("/", 1)
        names = (name,) if name else ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        return hub_file(repo, *names)
    if pretrained.get("url"):
        url = pretrained["url"]
        return url_file(url, Path("~/.cache/clip").expanduser() / Path(url).name)
    return Remote(f"{arch} {tag!r}", constants.ENDPOINT, "", True)  # unknown: see check_tag


def check_tag(arch: str, tag: str, how: str) -> None:
    """One-line ConfigError unless open_clip knows pretrained weights `tag` for `arch`."""
    import open_clip

    if not open_clip.get_pretrained_cfg(arch, tag):
        raise ConfigError(
            f"config key 'reward.model': open_clip has no {tag!r} weights for {arch!r}; {how}"
        )


class OpenClip:
    """A frozen open_clip model on one device and dtype, with its tokenizer and pixel stats."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: str, dtype: torch.dtype):
        import open_clip

        pre = open_clip.get_model_preprocess_cfg(model)
        size = pre["size"]
        self.size = size if isinstance(size, int) else size[0]
        self.mean, self.std = tuple(pre["mean"]), tuple(pre["std"])
        self.model = model.to(device, dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device, self.dtype = torch.device(device), dtype
        self.texts: dict[str, torch.Tensor] = {}

    @property
    def embed_dim(self) -> int:
        return self.model.visual.output_dim

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D) L2-normalised embeddings (differentiable). Pixels
        are resized in float32 at least (bicubic has no half-precision CPU kernel)."""
        work = torch.promote_types(self.dtype, torch.float32)
        pixels = clip_pixels(images.to(self.device, work), self.size, self.mean, self.std)
        return self.model.encode_image(pixels.to(self.dtype), normalize=True)

    @torch.no_grad()
    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        """(B, D) L2-normalised text embeddings, computed once per distinct prompt."""
        new = [p for p in dict.fromkeys(prompts) if p not in self.texts]
        if new:
            tokens = self.tokenizer(new).to(self.device)
            self.texts.update(zip(new, self.model.encode_text(tokens, normalize=True), strict=True))
        embeds = torch.stack([self.texts[p] for p in prompts])
        for old in list(self.texts)[: max(0, len(self.texts) - TEXT_CACHE)]:
            del self.texts[old]  # the oldest first
        return embeds

    def cosine(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B,) cosine similarity of each image with its prompt (differentiable in images)."""
        return (self.embed_images(images) * self.embed_texts(prompts)).sum(-1)


def load_open_clip(arch: str, pretrained: str, device: str, dtype: torch.dtype) -> OpenClip:
    """open_clip `arch` with weights `pretrained` (a checkpoint file or a pretrained tag)."""
    import open_clip

    tag = open_clip.get_pretrained_cfg(arch, pretrained) or {}
    model = open_clip.create_model(
        arch, pretrained=pretrained, force_quick_gelu=bool(tag.get("quick_gelu"))
    )
    return OpenClip(model, open_clip.get_tokenizer(arch), device, dtype)


def load_for(cfg: ScorerConfig, arch: str, pretrained: str) -> OpenClip:
    """`load_open_clip` on the reward's device and dtype."""
    return load_open_clip(arch, pretrained, cfg.device, getattr(torch, cfg.dtype))
