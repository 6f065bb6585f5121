"""Where a trained policy's mean lives: coarse structure, or a white-noise-like pattern.

The command line of `find_ray.experiments.policy_spectrum` (its docstring says how to run it).
"""

from find_ray.experiments.policy_spectrum import main

if __name__ == "__main__":
    main()
