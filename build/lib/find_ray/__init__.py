"""find_ray: FIND (policy optimisation of a diffusion model's initial noise) on Ray."""

__version__ = "0.1.0"
