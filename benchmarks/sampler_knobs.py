"""The sampler's own knobs (guidance, steps) on the bench's eval noise, paired with its base.

The command line of `find_ray.experiments.sampler_knobs` (its docstring says how to run it).
"""

from find_ray.experiments.sampler_knobs import main

if __name__ == "__main__":
    main()
