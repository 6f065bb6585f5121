"""Sampling throughput of the shipped shapes model on this machine's CPU.

The command line of `find_ray.experiments.sampling` (its docstring says how to run it).
"""

from find_ray.experiments.sampling import main

if __name__ == "__main__":
    main()
