"""FIND's gains over training seeds on the shapes world, beside the cheap alternatives.

The command line of `find_ray.experiments.alignment` (its docstring says how to run it).
"""

from find_ray.experiments.alignment import main

if __name__ == "__main__":
    main()
