"""Ray Serve endpoint for aligned generation.

Started by `find-ray serve RUN_DIR` or `serve run configs/serve.yaml`;

`app` is the application builder named by `import_path: find_ray.serve:app`.
"""

from find_ray.serve.app import app, build_app
from find_ray.serve.schema import ServeArgs

__all__ = ["ServeArgs", "app", "build_app"]
