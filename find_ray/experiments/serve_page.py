"""The Serve page in headless Chromium, as a person uses it: type a prompt, click, look.

`try_page` drives Debian's `chromium` through playwright (its own browser download cannot work
here); the tests call it on a tiny run, and this script on a trained shapes run to make the
README's screenshot:

    python benchmarks/serve_page.py runs/find-shapes   # -> benchmarks/results/serve/page.png
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

RESULTS = Path("benchmarks/results") / "serve"


def chromium_path() -> str | None:
    """Debian's chromium binary, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def try_page(url: str, prompt: str, screenshot: Path, n: int = 8, seed: int = 0) -> dict:
    """Opens the page, generates with "compare with base" on; the labels and a screenshot."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1290, "height": 600})
            page.goto(url)
            page.wait_for_function("document.getElementById('trained').options.length > 0")
            page.fill("#prompt", prompt)
            page.fill("#n", str(n))
            page.fill("#seed", str(seed))
            page.click("#go")
            page.wait_for_selector("figure.image", timeout=180_000)
            labels = page.locator("figcaption.label").all_inner_texts()
            rows = page.locator(".row h2").all_inner_texts()
            status = page.inner_text("#status")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"labels": labels, "rows": rows, "status": status}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder written by `find-ray train`")
    parser.add_argument("--prompt", default="a red circle and a blue square")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--out", type=Path, default=RESULTS / "page.png")
    args = parser.parse_args()

    from ray import serve

    from find_ray.serve.launch import deploy
    from find_ray.serve.schema import ServeArgs

    url, _ = deploy(ServeArgs(run_dir=str(Path(args.run_dir).resolve())), port=args.port)
    try:
        seen = try_page(url, args.prompt, args.out)
    finally:
        serve.shutdown()
    print("\n".join(seen["rows"]))
    print(seen["status"])
    print(f"screenshot: {args.out}")


if __name__ == "__main__":
    main()
