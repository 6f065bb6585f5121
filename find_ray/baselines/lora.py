"""LoRA on the UNet's attention projections (peft, through diffusers' `add_adapter`), the
trainable part of the fine-tuning peers (DDPO, DRTune, Flow-GRPO); the base weights stay
frozen."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from find_ray.errors import ConfigError

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def add_lora(
    unet: torch.nn.Module, rank: int = 4, alpha: float | None = None
) -> list[torch.Tensor]:
    """Freezes `unet`, adds rank-`rank` adapters to its attention projections and returns the
    adapters' parameters. peft starts each adapter's B at zero: the UNet is unchanged until a
    step is taken."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=alpha or rank,
            init_lora_weights="gaussian",
            target_modules=list(ATTENTION),
        )
    )
    return [p for p in unet.parameters() if p.requires_grad]


@contextmanager
def adapters_disabled(unet: Any) -> Iterator[None]:
    """The base UNet inside the block (its LoRA adapters off): the reference model of a KL
    term, as peft's `disable_adapter()`; the adapters are back on after."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


class LoraTrainer:
    """What the fine-tuning peers (DDPO, DRTune, Flow-GRPO) share: a chain on the pipeline's
    UNet (`make_chain`, or a given Chain), LoRA adapters on it with AdamW, an NFE counter ("train" /
    "inference") and one seeded generator for prompts, noise and step draws."""

    def __init__(
        self,
        pipe_or_chain: Any,
        prompts: list[str],
        config: Any,
        seed: int,
        **adamw: Any,
    ):
        """config: the method's settings, with what `make_chain` reads (used when given a
        pipeline), the LoRA `rank` and optionally its `alpha` (default: the rank); adamw:
        AdamW's keyword arguments (none: the config's lr, adam_betas, weight_decay, adam_eps)."""
        from find_ray.baselines.chain import Chain
        from find_ray.baselines.nfe import NFECounter

        if isinstance(pipe_or_chain, Chain):
            self.chain = pipe_or_chain
        else:
            self.chain = self.make_chain(pipe_or_chain, config)
        if not prompts:
            raise ConfigError(f"{type(self).__name__}: no training prompts")
        self.prompts = list(prompts)
        self.unet = self.chain.unet
        self.params = add_lora(self.unet, config.rank, getattr(config, "alpha", None))
        adamw = adamw or {
            "lr": config.lr,
            "betas": config.adam_betas,
            "weight_decay": config.weight_decay,
            "eps": config.adam_eps,
        }
        self.optimizer = torch.optim.AdamW(self.params, **adamw)
        self.optimizer_steps = 0
        self.counter = NFECounter(self.unet)
        self.generator = torch.Generator().manual_seed(seed)
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.latent_shape = (self.unet.config.in_channels, *size)

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs: the adapters, the optimiser, the NFE counts and the generator
        (a subclass adds its own through `extra_state`)."""
        return {
            "adapters": [p.detach().cpu().clone() for p in self.params],
            "optimizer": self.optimizer.state_dict(),
            "counts": dict(self.counter.counts),
            "generator": self.generator.get_state(),
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resumes where `state_dict` was taken: the next steps equal an unbroken run's."""
        with torch.no_grad():
            for p, saved in zip(self.params, state["adapters"], strict=True):
                p.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.counter.counts.clear()
        self.counter.counts.update(state["counts"])
        self.generator.set_state(state["generator"])
        self.load_extra_state(state["extra"])

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restores what `extra_state` returned."""

    def make_chain(self, pipe: Any, config: Any) -> Any:
        """The chain a given pipeline is sampled with: DDIM with the config's `steps`,
        `guidance` and `eta` (a subclass may build another sampler's)."""
        from find_ray.baselines.chain import DenoisingChain

        return DenoisingChain(pipe, config.steps, config.guidance, config.eta)

    def optimizer_step(self, max_grad_norm: float) -> None:
        """One AdamW step on the accumulated gradients, their norm clipped to max_grad_norm."""
        torch.nn.utils.clip_grad_norm_(self.params, max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.optimizer_steps += 1

    @property
    def train_nfe(self) -> int:
        """Images through the UNet while training (each call counts its batch, 2B under
        guidance; backward passes count none, checkpoint recomputations do)."""
        return self.counter["train"]

    @property
    def inference_nfe(self) -> int:
        return self.counter["inference"]

    def noise(self, n: int) -> torch.Tensor:
        """n latents z_T from the trainer's generator, on the UNet's device and dtype."""
        z = torch.randn((n, *self.latent_shape), generator=self.generator)
        return z.to(device=self.unet.device, dtype=self.unet.dtype)

    def draw_prompts(self, n: int) -> list[str]:
        """n training prompts drawn uniformly with replacement."""
        picks = torch.randint(len(self.prompts), (n,), generator=self.generator)
        return [self.prompts[i] for i in picks.tolist()]

    @torch.no_grad()
    def generate(
        self, prompts: list[str], z_T: torch.Tensor | None = None, eta: float | None = None
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] of the tuned UNet: the whole chain from z_T (default:
        drawn) with eta `eta` (default the chain's), counted as inference."""
        chain = copy.copy(self.chain)
        chain.eta = chain.eta if eta is None else eta
        z = self.noise(len(prompts)) if z_T is None else z_T
        with self.counter.phase("inference"):
            trajectory = chain.sample(z, chain.conditions(prompts), generator=self.generator)
        return chain.decode(trajectory.final)
