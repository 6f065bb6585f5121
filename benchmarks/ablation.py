"""FIND ablation on the shapes world: reward against denoiser calls (NFE), gains with CIs.

The command line of `find_ray.experiments.ablation` (its docstring says how to run it).
"""

from find_ray.experiments.ablation import main

if __name__ == "__main__":
    main()
