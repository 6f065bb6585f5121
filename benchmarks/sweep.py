"""Where FIND needs its bounds: one factor at a time, under three kinds of bound.

The command line of `find_ray.experiments.sweep` (its docstring says how to run it).
"""

from find_ray.experiments.sweep import main

if __name__ == "__main__":
    main()
