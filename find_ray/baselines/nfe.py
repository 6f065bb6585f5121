"""Denoiser-call (NFE) accounting shared by every method of the bench.

One NFE is one image through the denoiser once: a UNet call on a batch of B latents counts B,
so classifier-free guidance (conditional and unconditional halves in one batch, or two calls)
counts twice per image and step, as `backends.denoiser_calls` says. The counter sits on the
UNet itself, so it sees every call however a method reaches it (pipeline, chain, gradient
pass); `phase` files the calls under training or inference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class NFECounter:
    """Counts the images that pass through `module.forward`, by phase."""

    def __init__(self, module: torch.nn.Module, phase: str = "inference"):
        self.counts: Counter[str] = Counter()
        self.current = phase
        self._handle = module.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.counts[self.current] += int(sample.shape[0])

    @contextmanager
    def phase(self, name: str) -> Iterator[NFECounter]:
        """Files the calls made inside the block under `name` ("train", "inference", ...)."""
        previous, self.current = self.current, name
        try:
            yield self
        finally:
            self.current = previous

    def __getitem__(self, phase: str) -> int:
        return self.counts[phase]

    def remove(self) -> None:
        """Takes the hook off the module."""
        self._handle.remove()
