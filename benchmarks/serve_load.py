"""Load on the Serve endpoint: closed-loop clients, batching on vs off, and Serve's overhead.

The command line of `find_ray.experiments.serve_load` (its docstring says how to run it).
"""

from find_ray.experiments.serve_load import main

if __name__ == "__main__":
    main()
