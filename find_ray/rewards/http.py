"""`http`: scores from a scoring service (a VLM judge, a reward kept in its own environment),
one POST to `reward.url` per `reward.batch_size` images. The wire format (docs/rewards.md):

    request   POST, Content-Type: application/json
              {"prompts": ["a red circle", ...], "images": ["<base64 PNG>", ...]}
    response  200, {"scores": [0.71, ...]}       one number per image, in the request's order;
              optional "info": {"<figure>": [...]}  per-image figures reported beside the reward

Videos arrive frame by frame (the registry averages the frames' scores). A request that times
out (`reward.timeout_s`), is refused, or gets a 429 or 5xx is sent again up to `reward.retries`
times, after the Retry-After the service asks for (else 0.5 s, 1 s, 2 s, ...). A request that
still fails makes its images' scores NaN, and so does a 4xx or a reply that is not the format
above (wrong count included): the reward actor drops and counts each ("bad_reward"), as it
does a non-finite score, and logs why. After a request that ran out of retries, the rest of
the call is not sent (the service is down): a dead service costs one request's retries per
call, and the run goes on.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import math
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image

from find_ray.config import ScorerConfig
from find_ray.images import to_uint8
from find_ray.rewards.registry import RewardFn, register

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_WAIT_S = 30.0  # the longest pause between tries, whatever Retry-After says


class RequestFailed(Exception):
    """A request that got no usable reply: why, and whether sending it again may help
    (`transient`: a timeout, a refused connection, a 429 or a 5xx)."""

    def __init__(self, why: str, transient: bool = False, retry_after_s: float | None = None):
        super().__init__(why)
        self.transient, self.retry_after_s = transient, retry_after_s


def png_base64(image: np.ndarray) -> str:
    """A (H, W, 3) uint8 image as base64 PNG text."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def numbers(values: object, n: int, what: str) -> torch.Tensor:
    """`values` as n floats (JSON null as NaN); RequestFailed when it is anything else."""
    if not isinstance(values, list) or len(values) != n:
        count = len(values) if isinstance(values, list) else type(values).__name__
        raise RequestFailed(f"reply has {count} {what} for {n} images")
    try:
        return torch.tensor([math.nan if v is None else float(v) for v in values])
    except (TypeError, ValueError):
        raise RequestFailed(f"reply's {what} are not all numbers") from None


def retry_after(headers) -> float | None:
    """The pause a 429/503 asks for, in seconds (a number of seconds only)."""
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None


class HttpScorer:
    """Posts batches of images and prompts to `cfg.url`; failed batches score NaN."""

    def __init__(self, cfg: ScorerConfig) -> None:
        self.url, self.timeout_s, self.retries = cfg.url, cfg.timeout_s, cfg.retries
        self.batch_size = cfg.batch_size
        direct = urlsplit(cfg.url).hostname in LOOPBACK  # never through a proxy
        handlers = [urllib.request.ProxyHandler({})] if direct else []
        self.opener = urllib.request.build_opener(*handlers)

    def post(self, body: bytes) -> dict:
        """One request's JSON reply; RequestFailed on any failure."""
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with self.opener.open(request, timeout=self.timeout_s) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as e:
            transient = e.code == 429 or e.code >= 500
            why = f"HTTP {e.code} {e.reason}"
            raise RequestFailed(why, transient, retry_after(e.headers)) from None
        # refused, reset or timed out (OSError), or cut short (HTTPException)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise RequestFailed(f"{type(e).__name__}: {getattr(e, 'reason', e)}", True) from None
        except ValueError as e:  # not JSON
            raise RequestFailed(f"reply is not JSON ({e})") from None
        if not isinstance(reply, dict):
            raise RequestFailed("reply is not a JSON object")
        return reply

    def post_with_retries(self, body: bytes) -> dict:
        """`post`, sent again after a transient failure, up to `retries` more times."""
        attempt = 0
        while True:
            try:
                return self.post(body)
            except RequestFailed as failure:
                if not failure.transient or attempt == self.retries:
                    raise
                log.info("reward.url %s: %s; trying again", self.url, failure)
                wait = failure.retry_after_s
                time.sleep(min(MAX_WAIT_S, 0.5 * 2**attempt if wait is None else wait))
                attempt += 1

    def score_batch(
        self, images: np.ndarray, prompts: list[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One request's scores and figures; RequestFailed when there are none."""
        payload = {"prompts": prompts, "images": [png_base64(image) for image in images]}
        reply = self.post_with_retries(json.dumps(payload).encode())
        n = len(prompts)
        scores = numbers(reply.get("scores"), n, "scores")
        info = reply.get("info") or {}
        if not isinstance(info, dict):
            raise RequestFailed("reply's info is not a JSON object")
        return scores, {str(k): numbers(v, n, f"info[{k!r}]") for k, v in info.items()}

    def __call__(
        self, images: torch.Tensor, prompts: list[str]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pixels, parts, down = to_uint8(images), [], False
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            failed = torch.full((len(chunk),), math.nan)
            if down:
                parts.append((failed, {}))
                continue
            try:
                parts.append(self.score_batch(pixels[start : start + len(chunk)], chunk))
            except RequestFailed as failure:
                log.warning("reward.url %s: %d images dropped: %s", self.url, len(chunk), failure)
                parts.append((failed, {}))
                down = failure.transient  # it ran out of retries: skip the rest of the call
        return joined(parts)


def joined(
    parts: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batches' scores and figures end to end; a figure a batch lacks is NaN there."""
    if not parts:
        return torch.zeros(0), {}
    names = {name for _, info in parts for name in info}
    info = {
        name: torch.cat([i.get(name, torch.full_like(s, math.nan)) for s, i in parts])
        for name in sorted(names)
    }
    return torch.cat([s for s, _ in parts]), info


@register("http")
def http_reward(cfg: ScorerConfig) -> RewardFn:
    return HttpScorer(cfg)
