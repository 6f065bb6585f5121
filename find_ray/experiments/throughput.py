"""Rollout throughput on a real pipeline: the bare diffusers pipeline, one rollout actor, the
full train loop with its reward. Images/s and peak memory of each, and the actor's ratio to
the bare pipeline (target >= 0.95).

The GPU figure measures them on an SD 1.5-architecture pipeline (random weights, DDIM 50,
512x512, fp16), the train loop rewarded by CLIPScore:

    python benchmarks/throughput.py --random-sd15 /tmp/sd15 --config configs/sd15.yaml \\
        model.path=/tmp/sd15 reward.name=clipscore reward.weights_path=CLIP.bin

Any config and overrides work (`find-ray train` syntax); with no CUDA device the figures are
CPU figures and the table says so. Writes benchmarks/results/throughput/{throughput.json,md}.
"""

from __future__ import annotations

import argparse
import inspect
import math
import tempfile
import time
from pathlib import Path

import ray
import torch

from find_ray.backends import make_backend
from find_ray.config import FindRayConfig, load_config
from find_ray.eval.report import md_table, write_json
from find_ray.system.actors import RolloutActor, peak_memory_mib
from find_ray.system.driver import RayTrainer

RESULTS = Path("benchmarks/results") / "throughput"
PROMPT = "three red apples on a wooden table"


def random_sd15(folder: Path) -> Path:
    """An SD 1.5-architecture pipeline with random weights (diffusers' default UNet/VAE
    configs with SD 1.5's cross-attention width, a CLIP ViT-L/14 text encoder), saved once."""
    if (folder / "model_index.json").is_file():
        return folder
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from find_ray.backends.offline_tokenizer import char_tokenizer  # no download

    tokenizer = char_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    tokenizer.model_max_length = 77
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            sample_size=512,
        ),
        text_encoder=CLIPTextModel(text),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def bare_pipeline(cfg: FindRayConfig, batch: int, calls: int) -> dict:
    """The diffusers pipeline called directly with the same settings and latents."""
    m = cfg.model
    backend = make_backend(m)  # loads the pipeline once; its latent shape, family's kwargs
    pipe = backend.pipe
    z = torch.randn((batch, *backend.latent_shape), generator=torch.Generator().manual_seed(0))
    kwargs = {"num_inference_steps": m.steps, "guidance_scale": m.guidance, "output_type": "pt"}
    if "eta" in inspect.signature(pipe.__call__).parameters:
        kwargs["eta"] = m.eta

    def call() -> None:
        pipe(prompt=[PROMPT] * batch, latents=z.to(pipe.device, pipe.unet.dtype), **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    call()  # warm-up (kernels, allocator)
    began = time.perf_counter()
    for _ in range(calls):
        call()
    seconds = time.perf_counter() - began
    return {
        "what": "bare diffusers pipeline",
        "images_per_s": batch * calls / seconds,
        "peak_memory_mib": peak_memory_mib(m.device),
    }


def rollout_actor(cfg: FindRayConfig, batch: int, calls: int) -> dict:
    """One RolloutActor through Ray: noise from the policy, denoise, pack, hand back."""
    r = cfg.ray
    actor = (
        ray.remote(RolloutActor)
        .options(num_cpus=r.rollout_num_cpus, num_gpus=r.rollout_num_gpus)
        .remote(cfg.model, [PROMPT], batch, cfg.learner.loss.logp_reduction, 0, r.torch_threads)
    )

    def call(n: int) -> None:  # version 0 = the initial N(0, I) policy: no weights to fetch
        ids = list(range(n * batch, (n + 1) * batch))
        ray.get(actor.rollout.options(num_returns=3).remote([0] * batch, ids, 0, []))

    call(0)  # warm-up
    began = time.perf_counter()
    for n in range(calls):
        call(n + 1)
    seconds = time.perf_counter() - began
    peak = ray.get(actor.peak_memory_mib.remote())
    ray.kill(actor)
    return {
        "what": "one rollout actor",
        "images_per_s": batch * calls / seconds,
        "peak_memory_mib": peak,
    }


def train_loop(cfg: FindRayConfig, out: Path) -> dict:
    """The full asynchronous train loop (rollout, reward and learner actors) with its reward."""
    cfg.train.out_dir = str(out)
    last = RayTrainer(cfg).run().history[-1]  # its clock starts once every actor is up
    return {
        "what": f"train loop ({cfg.reward.name} reward)",
        "images_per_s": last["rollouts_finished"] / last["elapsed_s"],
        "peak_memory_mib": float("nan"),
    }


def write_results(rows: list[dict], settings: dict, out: Path) -> str:
    bare = rows[0]["images_per_s"]
    for row in rows:
        row["vs_bare"] = row["images_per_s"] / bare
    write_json(out / "throughput.json", {"settings": settings, "rows": rows})
    cells = [
        [r["what"], f"{r['images_per_s']:.3f}", f"{r['vs_bare']:.3f}"]
        + ["" if math.isnan(r["peak_memory_mib"]) else f"{r['peak_memory_mib']:.0f}"]
        for r in rows
    ]
    lines = [
        "{model} on {device_name}: {steps} steps, CFG {guidance}, {dtype}, batch {batch} per "
        "call, {calls} calls timed.".format(**settings),
        "",
        *md_table(["what", "images/s", "× bare pipeline", "peak memory MiB"], cells),
    ]
    table = "\n".join(lines) + "\n"
    (out / "throughput.md").write_text(table)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--random-sd15", default=None, help="build an SD 1.5-architecture folder")
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--calls", type=int, default=5, help="timed calls")
    parser.add_argument("--iterations", type=int, default=3, help="train loop updates")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    if args.random_sd15:
        random_sd15(Path(args.random_sd15))
    cfg = load_config(args.config, [*args.overrides, f"train.iterations={args.iterations}"])
    cfg.train.rollout_batch_size = cfg.ray.rollouts_per_task = args.batch
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        rows = [bare_pipeline(cfg, args.batch, args.calls)]
        rows.append(rollout_actor(cfg, args.batch, args.calls))
        with tempfile.TemporaryDirectory() as runs:
            rows.append(train_loop(cfg, Path(runs) / "train"))
    finally:
        if started:
            ray.shutdown()
    cuda = torch.cuda.is_available() and cfg.model.device.startswith("cuda")
    settings = {
        "model": cfg.model.path,
        "device_name": torch.cuda.get_device_name() if cuda else "CPU (no GPU: not the GPU figure)",
        "steps": cfg.model.steps,
        "guidance": cfg.model.guidance,
        "dtype": cfg.model.dtype,
        "batch": args.batch,
        "calls": args.calls,
    }
    print(write_results(rows, settings, Path(args.out)))


if __name__ == "__main__":
    main()
