"""`python -m find_ray ...` is `find-ray ...` (for `ray job submit` entrypoints)."""

import sys

from find_ray.cli import main

sys.exit(main())
