"""Likelihoods and priors: the log joint of the model as stated, on the unconstrained scale."""
