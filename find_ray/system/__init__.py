"""The Ray actor-learner system: actors, the asynchronous driver, accounting, checkpoints."""
