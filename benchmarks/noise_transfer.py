"""Does a noise that works for one prompt work for another? The ceiling of amortized transfer.

The command line of `find_ray.experiments.noise_transfer` (its docstring says how to run it).
"""

from find_ray.experiments.noise_transfer import main

if __name__ == "__main__":
    main()
