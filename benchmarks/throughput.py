"""Rollout throughput on a real pipeline: the bare diffusers pipeline, one rollout actor, the

The command line of `find_ray.experiments.throughput` (its docstring says how to run it).
"""

from find_ray.experiments.throughput import main

if __name__ == "__main__":
    main()
