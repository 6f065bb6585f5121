"""Scale of the Ray actor-learner system: rollouts/s against the number of rollout actors.

The command line of `find_ray.experiments.scale` (its docstring says how to run it).
"""

from find_ray.experiments.scale import main

if __name__ == "__main__":
    main()
