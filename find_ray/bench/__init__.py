"""`find-ray bench`: FIND and its peers on the same prompts, eval noise and denoiser budgets."""
