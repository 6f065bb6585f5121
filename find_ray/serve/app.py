"""The Ray Serve application: a FastAPI ingress in front of a batching generator deployment.

    client --HTTP--> Ingress (validation, PNG encoding) --handle--> Generator (batcher.Batcher:
    one pipeline call per batch of the requests waiting, grouped by sampler settings)

The Generator takes the run folder through `user_config`; `reconfigure` builds the backend
the first time and afterwards only loads a newer policy, so a redeploy with a bumped
`policy_version` (what `find-ray serve --follow` does) swaps policies without dropping requests.
Faults (`guard.py`): a call whose Generator replica died is retried once on a live one, else
503 with Retry-After; past `request_timeout_s`, 504; `check_health` fails on a wedged pipeline;
with an API key, /prompts and /generate need `Authorization: Bearer <key>` (401 without).
"""

import asyncio
import base64
import io
import logging
import os
import secrets
import time
from importlib import resources

import numpy as np
import ray
import torch
from fastapi import FastAPI, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from find_ray.errors import FindRayError, ModelPathError
from find_ray.images import image_grid, to_uint8
from find_ray.serve.batcher import Batcher
from find_ray.serve.generator import AlignedGenerator, BatchClock, Job, JobResult, RunInfo
from find_ray.serve.guard import (
    GeneratorCaller,
    TimedOut,
    Unavailable,
    authorised,
    error,
    key_digest,
    unauthorised,
)
from find_ray.serve.schema import (
    MAX_BODY_BYTES,
    GeneratedImage,
    GenerateRequest,
    GenerateResponse,
    PromptsResponse,
    RequestError,
    ServeArgs,
    parse_generate,
)

log = logging.getLogger(__name__)

api = FastAPI(
    title="find_ray",
    description="Aligned generation with a FIND noise policy (per-prompt or base N(0, I)).",
)
# Declares the key in the OpenAPI schema (/docs's Authorize button); the routes check it.
bearer = [Security(HTTPBearer(auto_error=False, description="the API key, if one is set"))]
FAULTS = (Unavailable, TimedOut)


@api.middleware("http")
async def _limit_body(request: Request, call_next):
    """Refuses a declared oversized body before reading it (parse_generate checks the rest)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return error(413, f"body larger than {MAX_BODY_BYTES} bytes")
    return await call_next(request)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def image_labels(job: Job, result: JobResult) -> list[str]:
    """Grid captions: seed and, when scored, the reward."""
    rewards = result.rewards or [None] * job.n
    pairs = zip(result.seeds, rewards, strict=True)
    return [f"{seed}" + ("" if r is None else f" {r:.2f}") for seed, r in pairs]


@serve.deployment(name="Generator", max_ongoing_requests=256)
class GeneratorDeployment:
    """Holds one AlignedGenerator; batches requests into pipeline calls (`batcher.Batcher`)."""

    def __init__(self) -> None:
        self.core: AlignedGenerator | None = None
        self.config: dict = {}
        self.clock = BatchClock()
        self.batcher: Batcher[Job, JobResult] = Batcher(self._run_batch, 8)

    def reconfigure(self, config: dict) -> None:
        self.clock.wedged_after_s = float(config.get("wedged_after_s", 300.0))
        if config.get("torch_threads"):
            torch.set_num_threads(int(config["torch_threads"]))
        self.batcher.max_batch_size = int(config["max_batch_size"])
        self.batcher.wait_s = float(config["batch_wait_timeout_s"])
        source = (config["run_dir"], config.get("score"))
        if self.core is None or source != (self.config["run_dir"], self.config.get("score")):
            self.core = AlignedGenerator(*source)
        else:
            self.core.reload()
        self.config = dict(config)

    def describe(self) -> RunInfo:
        return self.core.describe()

    async def ping(self) -> int:
        """The ingress's liveness probe; the replica's process id (the fault tests kill it)."""
        return os.getpid()

    def actor_id(self) -> str:
        """The replica's Ray actor id: the same after a lightweight update, new after a restart."""
        return ray.get_runtime_context().get_actor_id()

    def check_health(self) -> None:
        """Called by Serve every `health_check_period_s`; raising makes Serve replace us."""
        if self.core is None:
            raise RuntimeError("generator not configured")
        self.clock.check()

    async def generate(self, job: Job) -> JobResult:
        return await self.batcher.submit(job)

    def batch_sizes(self) -> dict[int, int]:
        """How many batches of each size this replica has run (the load benchmark reads it)."""
        return dict(self.batcher.sizes)

    async def direct_s(self, job: Job) -> float:
        """Seconds of one pipeline call for `job` made here without HTTP, the ingress or the
        batcher: the load benchmark's direct call, in the same process as the served ones."""
        began = time.perf_counter()
        with self.clock.batch():
            await asyncio.to_thread(self.core.generate, [job])
        return time.perf_counter() - began

    async def _run_batch(self, jobs: list[Job]) -> list[JobResult]:
        # In a thread, so the replica keeps taking requests while this batch denoises (and
        # answers check_health: a batch that never returns is seen by the clock).
        with self.clock.batch():
            return await asyncio.to_thread(self.core.generate, jobs)


def respond(request, job: Job, result: JobResult, info: RunInfo, began: float):
    """The 200 answer: one labelled PNG grid (format png) or JSON with each image."""
    images = to_uint8(result.images)
    if request.format == "png":
        grid = image_grid(list(images), image_labels(job, result), title=job.prompt)
        buffer = io.BytesIO()
        grid.save(buffer, format="PNG")
        headers = {
            "X-Policy": job.policy,
            "X-Policy-Version": str(result.policy_version),
            "X-Seeds": ",".join(str(s) for s in result.seeds),
        }
        if result.rewards is not None:
            headers["X-Rewards"] = ",".join(f"{r:.4f}" for r in result.rewards)
        return Response(buffer.getvalue(), media_type="image/png", headers=headers)
    return GenerateResponse(
        prompt=job.prompt,
        policy=job.policy,
        policy_version=result.policy_version,
        steps=job.steps,
        guidance=job.guidance,
        seconds=time.monotonic() - began,
        images=[
            GeneratedImage(
                seed=result.seeds[i],
                policy=job.policy,
                denoiser_calls=job.calls_per_image,
                best_of=job.best_of,
                picked_by=info.reward.name if job.best_of > 1 else None,
                reward=None if result.rewards is None else result.rewards[i],
                metrics=result.metrics[i] if result.metrics else {},
                png_base64=base64.b64encode(png_bytes(image)).decode(),
            )
            for i, image in enumerate(images)
        ],
    )


@serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    """HTTP routes; validation here, so a bad request never reaches the generator.

    `key` is the API key's SHA-256 (None: no key); `reconfigure` takes the request timeout, the
    Retry-After of a 503 and the probe interval.
    """

    def __init__(self, generator: DeploymentHandle, key: str | None = None) -> None:
        self.generator = GeneratorCaller(generator)
        self.key = key
        self.cached: RunInfo | None = None

    def reconfigure(self, config: dict) -> None:
        self.generator.configure(
            config["request_timeout_s"], config["retry_after_s"], config["probe_s"]
        )

    async def info(self, fresh: bool = True, began: float | None = None) -> RunInfo:
        """The run's prompts, reward and sampler defaults; `fresh=False` reuses the last answer
        (all but the policy version are fixed for a run, and /generate reports the version the
        batch used)."""
        if fresh or self.cached is None:
            self.cached = await self.generator.call("describe", began=began)
        return self.cached

    def fault(self, e: Exception) -> JSONResponse:
        """503 (no live generator replica, with Retry-After) or 504 (past the timeout)."""
        if isinstance(e, TimedOut):
            timeout = self.generator.timeout_s
            why = f"no answer within request_timeout_s = {timeout:g} s (--request-timeout-s)"
            return error(504, why, setting="request_timeout_s", timeout_s=timeout)
        retry = self.generator.retry_after_s
        why = f"no live generator replica ({e.cause}); retry in {retry} s"
        return error(503, why, cause=e.cause, headers={"Retry-After": str(retry)})

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> str:
        return resources.files("find_ray.serve").joinpath("page.html").read_text()

    @api.get("/healthz")
    async def healthz(self):
        try:
            info = await self.info()
        except FAULTS as e:
            return self.fault(e)
        return {"status": "ok", "policy_version": info.version}

    @api.get("/prompts", response_model=PromptsResponse, dependencies=bearer)
    async def prompts(self, raw: Request):
        if not authorised(raw.headers.get("authorization"), self.key):
            return unauthorised()
        try:
            info = await self.info()
        except FAULTS as e:
            return self.fault(e)
        return PromptsResponse(
            prompts=info.prompts,
            amortized=info.amortized,
            policies=info.policies,
            policy_version=info.version,
            reward=info.reward.name,
            steps=info.steps,
            guidance=info.guidance,
        )

    @api.post(
        "/generate",
        response_model=GenerateResponse,
        dependencies=bearer,
        responses={
            200: {"content": {"image/png": {}}},
            **{code: {} for code in (400, 401, 413, 422, 503, 504)},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}},
            }
        },
    )
    async def generate(self, raw: Request):
        began = time.monotonic()
        if not authorised(raw.headers.get("authorization"), self.key):
            return unauthorised()
        try:
            request = parse_generate(await raw.body())
            # Fixed before the first try: a retry on another replica makes the same images.
            seed = secrets.randbelow(2**31 - 16) if request.seed is None else request.seed
            info = await self.info(fresh=False, began=began)
            job = info.job(
                request.prompt,
                request.n,
                seed,
                request.steps,
                request.guidance,
                request.policy,
                request.best_of,
            )
            result: JobResult = await self.generator.call("generate", job, began=began)
        except RequestError as e:
            return error(e.status, e.detail, e.field)
        except FAULTS as e:
            return self.fault(e)
        except Exception as e:  # a failure inside the pipeline: the replica lives on
            log.exception("generation failed")
            return error(500, f"generation failed: {type(e).__name__}")
        return respond(request, job, result, info, began)


def check_run_folder(run_dir: str) -> None:
    """Fails at start, in one line naming the file, on a missing or corrupt run folder."""
    from find_ray.prompts import train_prompts
    from find_ray.runs.folder import load_run_policy, read_run_config

    cfg = read_run_config(run_dir)
    try:
        prompts = train_prompts(cfg)
    except FindRayError as e:
        raise ModelPathError(f"{run_dir}/config.yaml: {e}") from None
    load_run_policy(run_dir, prompts)
    from find_ray.backends import check_model

    check_model(cfg.model)


def user_config(args: ServeArgs) -> dict:
    """What the Generator's `reconfigure` receives (a change here is a lightweight update)."""
    keys = (
        "run_dir",
        "score",
        "torch_threads",
        "max_batch_size",
        "batch_wait_timeout_s",
        "policy_version",
        "wedged_after_s",
    )
    return {key: getattr(args, key) for key in keys}


def build_app(args: ServeArgs, code_version: str | None = None) -> Application:
    """The Serve application for a run folder, checked before anything is deployed.

    `code_version` pins the deployments' code version: deployed again with the same one, a
    change of `user_config` alone is a lightweight update (`reconfigure` on the live replicas).
    None lets Serve draw a new one, and every replica is replaced.
    """
    key = key_digest(args.api_key_env)  # read where the app is built; only its hash travels
    check_run_folder(args.run_dir)
    # `version` is an internal option of Deployment.options since Serve made versions its own
    pinned = {} if code_version is None else {"version": code_version, "_internal": True}
    generator = GeneratorDeployment.options(
        num_replicas=args.num_replicas,
        ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
        user_config=user_config(args),
        health_check_period_s=args.health_check_period_s,
        **pinned,
    ).bind()
    ingress = {key: getattr(args, key) for key in ("request_timeout_s", "retry_after_s", "probe_s")}
    return Ingress.options(user_config=ingress, **pinned).bind(generator, key)


def app(args: dict) -> Application:
    """Application builder for `import_path: find_ray.serve:app` (Serve passes `args`)."""
    return build_app(ServeArgs.model_validate(args))
