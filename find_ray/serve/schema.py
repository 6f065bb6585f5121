"""The HTTP API's request and response bodies (pydantic), and the application's arguments."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from find_ray.errors import FindRayError

MAX_PROMPT_CHARS = 300
MAX_IMAGES = 16
MAX_CANDIDATES = 64  # n x best_of: images one request may make the pipeline sample
MAX_BODY_BYTES = 16_384  # a request body is a few hundred bytes; anything larger is refused

PolicyKind = Literal["trained", "amortized", "base"]


class GenerateRequest(BaseModel):
    """POST /generate. Unknown fields are refused; the sampler fields default to the run's."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    n: int = Field(1, ge=1, le=MAX_IMAGES, description="images to generate")
    seed: int | None = Field(
        None, ge=0, lt=2**31, description="image i uses seed + i (random when omitted)"
    )
    steps: int | None = Field(None, ge=1, le=200, description="sampler steps (run's default)")
    guidance: float | None = Field(None, ge=0.0, le=30.0, description="CFG scale (run's default)")
    best_of: int = Field(
        1, ge=1, le=MAX_IMAGES, description="each image the run's reward's pick of this many"
    )
    policy: Literal["auto", "trained", "base"] = Field(
        "auto", description="auto: trained for a trained prompt, else base"
    )
    format: Literal["png", "base64"] = Field(
        "base64", description="png: one image/png grid; base64: JSON with each image"
    )


class GeneratedImage(BaseModel):
    seed: int  # the seed of this image's initial noise (the picked one under best_of)
    policy: PolicyKind
    denoiser_calls: int  # spent on this image: best_of x the sampler's
    best_of: int = 1  # candidates the run's reward chose this image from
    picked_by: str | None = None  # the reward that chose it (best_of > 1)
    reward: float | None = None  # the run's reward, when it is scored at serve time
    metrics: dict[str, float] = {}  # the reward's per-image metrics (exact, quality, shell)
    png_base64: str | None = None


class GenerateResponse(BaseModel):
    prompt: str
    policy: PolicyKind
    policy_version: int
    steps: int
    guidance: float
    images: list[GeneratedImage]
    seconds: float


class PromptsResponse(BaseModel):
    prompts: list[str]  # prompts the policy was trained on
    amortized: bool = False  # true: the trained policy generates for any prompt
    policies: list[PolicyKind]  # the kinds this run can serve
    policy_version: int
    reward: str
    steps: int
    guidance: float


class ServeArgs(BaseModel):
    """The application's arguments (`find-ray serve` flags, or `args:` in a Serve config)."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    torch_threads: int = Field(0, ge=0, description="intra-op threads per replica (0: Ray's)")
    max_batch_size: int = Field(8, ge=1, description="requests per pipeline call, at most")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="an idle replica waits this long for a batch to fill"
    )
    score: bool | None = Field(None, description="score images with the run's reward (auto)")
    policy_version: int = Field(-1, description="bumped to make replicas reload the policy")
    request_timeout_s: float = Field(120.0, gt=0, description="a longer request gets 504")
    retry_after_s: int = Field(5, ge=1, description="Retry-After of a 503 (no live replica)")
    probe_s: float = Field(
        2.0, gt=0, description="a request waiting this long checks a replica answers (else 503)"
    )
    wedged_after_s: float = Field(
        300.0, gt=0, description="a batch running longer makes its replica unhealthy"
    )
    health_check_period_s: float = Field(2.0, gt=0, description="Serve's check_health period")
    api_key_env: str | None = Field(
        None, min_length=1, description="environment variable holding the API key (none: no key)"
    )


class RequestError(FindRayError):
    """A refused request: HTTP status, a one-line message, the field it is about."""

    def __init__(self, status: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field = status, detail, field


def parse_generate(body: bytes) -> GenerateRequest:
    """The request in a POST /generate body (JSON, whatever the content type says).

    Raises RequestError: 413 for an oversized body, 400 for one that is not JSON, 422 for a
    JSON value that is not a valid request (the message names the first bad field).
    """
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        return GenerateRequest.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
    kind, loc = first["type"], ".".join(str(part) for part in first["loc"])
    if kind == "json_invalid":
        raise RequestError(400, f"body is not valid JSON ({first['ctx']['error']})")
    if not loc:
        raise RequestError(422, "body must be a JSON object with at least a 'prompt' field")
    if kind == "extra_forbidden":
        known = ", ".join(GenerateRequest.model_fields)
        raise RequestError(422, f"unknown field '{loc}' (fields: {known})", loc)
    raise RequestError(422, f"field '{loc}': {first['msg']}", loc)
