"""A differentiable surrogate of the shapes reward, for the gradient-based peers (DNO, DRTune).

The exact reward (detector + `match_score`) has no gradient. `ShapesScoreNet` learns it: a
small CNN predicts, for each of the 12 (colour, shape) kinds, a distribution over how many the
detector will count (0 .. MAX_COUNT, the last class meaning "at least"), and the graded score
is computed from those distributions by a smooth version of `match_score`:

    full_k  = E[min(t_k, n_k)]                     (objects matching colour and shape)
    left    = t - full, E[n] - full                (per kind; summed over shapes per colour)
    partial = sum_c min(left_target_c, left_detected_c)
    score   = (sum_k full_k + 0.5 partial) / max(sum t, sum E[n], 1)

With confident count predictions this equals `match_score` exactly, so the count head can be
trained with cross-entropy on the detector's counts of each image (labelled once), and one
image serves every prompt: the (image, prompt) score labels, free once the image is detected,
add a mean-squared-error term on the score itself.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from find_ray.errors import ModelPathError
from find_ray.images import to_uint8
from find_ray.shapes.captions import parse_caption
from find_ray.shapes.detector import detect
from find_ray.shapes.reward import match_score
from find_ray.shapes.world import COLOURS, SHAPES, Obj

KINDS: list[Obj] = [(c, s) for c in COLOURS for s in SHAPES]  # index = colour * 3 + shape
KIND_INDEX = {kind: i for i, kind in enumerate(KINDS)}
MAX_COUNT = 5  # count classes 0..MAX_COUNT; the detector may see more than the 4 drawn
EXACT_THRESHOLD = 0.99
WEIGHTS_FILE = "surrogate.safetensors"
CONFIG_FILE = "surrogate.json"


def counts_vector(objects: Counter[Obj]) -> torch.Tensor:
    """The (12,) float count vector of a multiset, kinds in `KINDS` order."""
    v = torch.zeros(len(KINDS))
    for kind, n in objects.items():
        v[KIND_INDEX[kind]] = float(n)
    return v


def target_vector(prompt: str) -> torch.Tensor:
    """The (12,) count vector of the multiset a prompt asks for; raises PromptError."""
    return counts_vector(parse_caption(prompt))


def soft_match_score(count_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`match_score` from predicted count distributions, differentiable in them.

    count_probs: (..., 12, MAX_COUNT + 1) probabilities; targets: (..., 12) counts (broadcast
    against each other). Returns scores in [0, 1] of the broadcast batch shape.
    """
    n = torch.arange(count_probs.shape[-1], dtype=count_probs.dtype, device=count_probs.device)
    expected = (count_probs * n).sum(-1)  # (..., 12)
    full = (count_probs * torch.minimum(targets[..., None], n)).sum(-1)  # E[min(t, n)]
    left_target = (targets - full).unflatten(-1, (len(COLOURS), len(SHAPES))).sum(-1)
    left_detected = (expected - full).unflatten(-1, (len(COLOURS), len(SHAPES))).sum(-1)
    partial = torch.minimum(left_target, left_detected).clamp_min(0).sum(-1)
    denominator = torch.maximum(targets.sum(-1), expected.sum(-1)).clamp_min(1.0)
    return ((full.sum(-1) + 0.5 * partial) / denominator).clamp(0.0, 1.0)


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.SiLU()
    )


class ShapesScoreNet(nn.Module):
    """Image (B, 3, 32, 32) in [0, 1] -> per-kind count distributions -> graded score."""

    def __init__(self, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.config = {"width": width, "hidden": hidden}
        w = width
        self.features = nn.Sequential(
            nn.PixelUnshuffle(2),  # lossless 2x2 space-to-depth: 16x16x12, 3x cheaper
            _block(12, w, 1),
            _block(w, 3 * w // 2, 1),
            _block(3 * w // 2, 2 * w, 2),  # 8x8
            _block(2 * w, 3 * w, 1),
        )
        self.head = nn.Sequential(
            nn.Linear(6 * w, hidden), nn.SiLU(), nn.Linear(hidden, len(KINDS) * (MAX_COUNT + 1))
        )
        # The score sharpens the count distributions (learnt, starts at T = 0.5): residual
        # probability on wrong counts, summed over 12 kinds, would otherwise keep a correct
        # image's score visibly below 1.
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.5)))

    def count_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 12, MAX_COUNT + 1) logits of how many objects of each kind the detector sees."""
        h = self.features(images * 2 - 1)
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)
        return self.head(pooled).unflatten(1, (len(KINDS), MAX_COUNT + 1))

    def score_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Count logits -> the sharpened count distributions the score is computed from."""
        return (logits / self.log_temperature.exp()).softmax(-1)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Predicted graded scores (B,) in [0, 1] of images against (B, 12) target counts."""
        return soft_match_score(self.score_probs(self.count_logits(images)), targets)


# ---------------------------------------------------------------- labels from the detector


def detect_counts(images: torch.Tensor) -> list[Counter[Obj]]:
    """The detector's multiset for each image of (N, 3, H, W) floats in [0, 1]."""
    return [detect(image) for image in to_uint8(images.detach())]


def _label_table(
    detected: Sequence[Counter[Obj]], prompts: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets (P, 12), graded labels (N, P) and exact flags (N, P) via `match_score`; pairs
    with the same detected multiset share one call."""
    parsed = [parse_caption(p) for p in prompts]
    cache: dict[tuple[tuple[Obj, int], ...], list[tuple[float, bool]]] = {}
    labels = torch.zeros(len(detected), len(prompts))
    exact = torch.zeros(len(detected), len(prompts), dtype=torch.bool)
    for i, d in enumerate(detected):
        key = tuple(sorted(d.items()))
        if key not in cache:
            cache[key] = [match_score(t, d) for t in parsed]
        for j, (score, is_exact) in enumerate(cache[key]):
            labels[i, j], exact[i, j] = score, is_exact
    targets = (
        torch.stack([counts_vector(t) for t in parsed]) if parsed else torch.zeros(0, len(KINDS))
    )
    return targets, labels, exact


def build_dataset(
    images: torch.Tensor, prompts: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (image, prompt) pair: image_index (N*P,) long, target (N*P, 12) counts and label
    (N*P,) = match_score(parse_caption(prompt), detect(image)); each image is detected once."""
    targets, labels, _ = _label_table(detect_counts(images), prompts)
    n, p = labels.shape
    image_index = torch.arange(n).repeat_interleave(p)
    return image_index, targets.repeat(n, 1), labels.flatten()


# ---------------------------------------------------------------- training


def _count_classes(detected: Sequence[Counter[Obj]]) -> torch.Tensor:
    """(N, 12) long count classes, counts above MAX_COUNT clipped to it."""
    return torch.stack([counts_vector(d) for d in detected]).clamp_max(MAX_COUNT).long()


def _dihedral(images: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 rotations/flips; the detector's counts are invariant under all of them."""
    out = torch.rot90(images, k % 4, dims=(2, 3))
    return out.flip(3) if k >= 4 else out


@torch.no_grad()
def _predict_table(
    net: ShapesScoreNet, images: torch.Tensor, targets: torch.Tensor, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted scores (N, P) of every image against every target, and count classes (N, 12)."""
    scores, counts = [], []
    for i in range(0, len(images), batch):
        logits = net.count_logits(images[i : i + batch])
        scores.append(soft_match_score(net.score_probs(logits)[:, None], targets[None]))
        counts.append(logits.argmax(-1))
    if not scores:
        return torch.zeros(0, len(targets)), torch.zeros(0, len(KINDS), dtype=torch.long)
    return torch.cat(scores), torch.cat(counts)


def _metrics(pred: torch.Tensor, labels: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """Score MAE, Pearson r and exact-match accuracy/recall at EXACT_THRESHOLD over pairs."""
    p, y, e = pred.flatten().double(), labels.flatten().double(), exact.flatten()
    if len(p) == 0:
        return {"pairs": 0}
    pc, yc = p - p.mean(), y - y.mean()
    pearson = float((pc * yc).sum() / ((pc.norm() * yc.norm()).clamp_min(1e-12)))
    return {
        "pairs": len(p),
        "mae": float((p - y).abs().mean()),
        "pearson": pearson,
        "exact_accuracy": float(((p >= EXACT_THRESHOLD) == e).double().mean()),
        "exact_recall": float((p[e] >= EXACT_THRESHOLD).double().mean()) if e.any() else math.nan,
    }


def train_surrogate(
    images: torch.Tensor,
    prompts: Sequence[str],
    *,
    epochs: int,
    lr: float,
    seed: int,
    holdout: float = 0.2,
    batch_size: int = 32,
    score_weight: float = 1.0,
    progress: bool = False,
) -> tuple[ShapesScoreNet, dict[str, Any]]:
    """Trains a ShapesScoreNet on (N, 3, 32, 32) images in [0, 1] against `prompts`.

    Images are split (by image) into train and held-out sets; the loss is cross-entropy of the
    per-kind counts plus `score_weight` x MSE of the score against all prompts, on randomly
    rotated/flipped images. The report holds, for "train" and "heldout" (all their (image,
    prompt) pairs): MAE, Pearson correlation, exact-match accuracy and recall (predicted >= 0.99
    vs detector exact) and count_accuracy (argmax counts of all 12 kinds right); plus
    "mae_constant", the held-out MAE of predicting the train mean.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images = images.detach().float().cpu()
    detected = detect_counts(images)
    targets, labels, exact = _label_table(detected, prompts)
    classes = _count_classes(detected)
    order = torch.randperm(len(images), generator=g)
    n_held = int(round(holdout * len(images)))
    held, train = order[:n_held], order[n_held:]

    net = ShapesScoreNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * max(1, math.ceil(len(train) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    rng = random.Random(seed)
    bar = tqdm(total=steps, desc="surrogate", disable=not progress)
    net.train()
    for _ in range(epochs):
        perm = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:  # BatchNorm needs two images
                continue
            logits = net.count_logits(_dihedral(images[idx], rng.randrange(8)))
            loss = F.cross_entropy(logits.flatten(0, 1), classes[idx].flatten())
            if score_weight and len(targets):
                pred = soft_match_score(net.score_probs(logits)[:, None], targets[None])
                loss = loss + score_weight * F.mse_loss(pred, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    opt.zero_grad(set_to_none=True)
    net.eval()

    report: dict[str, Any] = {
        "images": {"train": len(train), "heldout": len(held)},
        "prompts": len(prompts),
        "mae_constant": float((labels[held] - labels[train].mean()).abs().mean())
        if len(held) and len(train)
        else math.nan,
    }
    for name, idx in (("train", train), ("heldout", held)):
        pred, counts = _predict_table(net, images[idx], targets)
        report[name] = _metrics(pred, labels[idx], exact[idx])
        report[name]["count_accuracy"] = float((counts == classes[idx]).all(1).double().mean())
    return net, report


# ---------------------------------------------------------------- persistence and reward


def save_surrogate(net: ShapesScoreNet, folder: str | Path, report: dict | None = None) -> Path:
    """Writes the weights (safetensors) and architecture (+ optional report, JSON) to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / WEIGHTS_FILE)
    meta = {"config": net.config, "max_count": MAX_COUNT, "kinds": KINDS, "report": report}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def load_surrogate(folder: str | Path, device: str | torch.device = "cpu") -> ShapesScoreNet:
    """The ShapesScoreNet saved in `folder`, in eval mode with frozen weights."""
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise ModelPathError(f"{folder}: no {WEIGHTS_FILE} + {CONFIG_FILE} (a saved surrogate)")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    if meta.get("max_count") != MAX_COUNT or [tuple(k) for k in meta.get("kinds", [])] != KINDS:
        raise ModelPathError(f"{folder}: surrogate saved for another world layout")
    net = ShapesScoreNet(**meta["config"])
    net.load_state_dict(load_file(folder / WEIGHTS_FILE, device=str(device)))
    return net.to(device).eval().requires_grad_(False)


class SurrogateReward:
    """A differentiable stand-in for the shapes reward: (images (B, 3, 32, 32) in [0, 1],
    prompts) -> predicted graded scores (B,), with gradients flowing to the images."""

    def __init__(self, net: ShapesScoreNet) -> None:
        """Wraps `net`, putting it in eval mode and freezing its weights (in place)."""
        self.net = net.eval().requires_grad_(False)
        self._targets: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> SurrogateReward:
        return cls(load_surrogate(folder, device))

    def targets(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, 12) target counts, parsed once per prompt."""
        for p in prompts:
            if p not in self._targets:
                self._targets[p] = target_vector(p)
        return torch.stack([self._targets[p] for p in prompts])

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        param = next(self.net.parameters())
        targets = self.targets(prompts).to(device=images.device, dtype=param.dtype)
        if param.device != images.device:
            self.net.to(images.device)
        return self.net(images.to(param.dtype), targets)
