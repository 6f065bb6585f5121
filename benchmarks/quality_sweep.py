"""Policies that keep image quality: FIND's gain beside the quality, shell and diversity it costs.

The command line of `find_ray.experiments.quality_sweep` (its docstring says how to run it).
"""

from find_ray.experiments.quality_sweep import main

if __name__ == "__main__":
    main()
