"""The FIND algorithm in plain PyTorch (no Ray): noise policies, losses, store, learner."""
