"""A scoring service that speaks the `http` reward's wire format (find_ray/rewards/http.py),
around any Python function: `serve(score)` or `python -m find_ray.rewards.http_server`.

It needs only the standard library, numpy and Pillow, so the file can be copied into the
environment that holds a scorer find_ray cannot install (e.g. GenEval's old mmdet) and run
there. `score(images, prompts)` gets (H, W, 3) uint8 arrays and their prompts and returns one
number per image, or (scores, info) with info {figure: [one number per image]}.

    POST /<any path>  {"prompts": [...], "images": [base64 PNG, ...]} -> {"scores": [...]}
    GET  /healthz     -> {"ok": true}

A malformed request gets a 400 naming what is wrong; a scorer that raises, a 500.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

ScoreFn = Callable[[list[np.ndarray], list[str]], Any]


def brightness(images: list[np.ndarray], prompts: list[str]) -> tuple[list[float], dict]:
    """The demo scorer: each image's mean pixel value in [0, 1], and whether it exceeds 0.6."""
    scores = [float(image.mean() / 255.0) for image in images]
    return scores, {"exact": [float(s > 0.6) for s in scores]}


def decode(request: Any) -> tuple[list[np.ndarray], list[str]]:
    """The images and prompts of a request body; ValueError naming what is malformed."""
    if not isinstance(request, dict):
        raise ValueError("the body must be a JSON object with 'prompts' and 'images'")
    prompts, images = request.get("prompts"), request.get("images")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ValueError("'prompts' must be a list of strings")
    if not isinstance(images, list) or len(images) != len(prompts):
        raise ValueError("'images' must be a list of base64 PNGs, one per prompt")
    try:
        pixels = [Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB") for i in images]
    except Exception as e:  # noqa: BLE001 - any undecodable image is the client's fault
        raise ValueError(f"an image is not a base64 PNG ({e})") from None
    return [np.asarray(image) for image in pixels], prompts


def answer(score: ScoreFn, images: list[np.ndarray], prompts: list[str]) -> dict[str, Any]:
    """The reply body: {"scores": [...], "info": {...}} from `score`'s answer."""
    result = score(images, prompts)
    scores, info = result if isinstance(result, tuple) else (result, {})
    return {
        "scores": [float(s) for s in scores],
        "info": {name: [float(v) for v in values] for name, values in info.items()},
    }


def handler(score: ScoreFn) -> type[BaseHTTPRequestHandler]:
    """A request handler class that serves `score`."""

    class ScoreHandler(BaseHTTPRequestHandler):
        def reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.reply(200 if self.path == "/healthz" else 404, {"ok": self.path == "/healthz"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                images, prompts = decode(json.loads(body))
            except ValueError as e:  # bad JSON included
                return self.reply(400, {"error": str(e)})
            try:
                self.reply(200, answer(score, images, prompts))
            except Exception as e:  # noqa: BLE001 - the scorer's failure is the server's
                self.reply(500, {"error": f"{type(e).__name__}: {e}"})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    return ScoreHandler


def serve(score: ScoreFn, host: str = "127.0.0.1", port: int = 8001) -> ThreadingHTTPServer:
    """A server for `score` answering in a background thread (port 0: any free port, see
    `server.server_address`); `server.shutdown()` stops it."""
    server = ThreadingHTTPServer((host, port), handler(score))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the demo brightness scorer over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), handler(brightness))
    print(f"scoring on http://{args.host}:{server.server_address[1]}/score", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
