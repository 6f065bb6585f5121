"""The Serve page in headless Chromium, as a person uses it: type a prompt, click, look.

The command line of `find_ray.experiments.serve_page` (its docstring says how to run it).
"""

from find_ray.experiments.serve_page import main

if __name__ == "__main__":
    main()
