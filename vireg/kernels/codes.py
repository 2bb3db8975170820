"""The likelihood codes the generic kernels (``kernels.glm``) branch on, importable without
Numba."""

GAUSSIAN, LOGIT, PROBIT, BINOMIAL, POISSON, NEGATIVE_BINOMIAL, STUDENT_T = range(7)
