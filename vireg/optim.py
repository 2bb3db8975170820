"""Adam (Kingma and Ba 2015) for gradient ascent, with a per-coordinate step size.

The step size is an array so that the engine can shrink the steps of each variational parameter
on its own scale after each stationary phase (see ``engine``).
"""

from __future__ import annotations

import numpy as np


class Adam:
    """theta <- theta + lr * mhat / (sqrt(vhat) + eps), the moments of the ascent direction."""

    def __init__(self, size: int, lr: np.ndarray | float, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8):
        self.lr = np.broadcast_to(np.asarray(lr, dtype=float), (size,)).copy()
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.reset()

    def reset(self) -> None:
        """Forget the moment estimates (after a step that produced a non-finite value)."""
        self.m = np.zeros_like(self.lr)
        self.v = np.zeros_like(self.lr)
        self.t = 0

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """The new parameters after one ascent step along ``grad``."""
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        self.m = b1 * self.m + (1.0 - b1) * grad
        self.v = b2 * self.v + (1.0 - b2) * grad * grad
        mhat = self.m / (1.0 - b1**self.t)
        vhat = self.v / (1.0 - b2**self.t)
        return params + self.lr * mhat / (np.sqrt(vhat) + self.eps)


class ScaledSGD:
    """theta <- theta + lr * grad: plain stochastic gradient ascent with a per-coordinate step.

    In a whitened frame, where the ELBO's curvature in each coordinate is known near the optimum
    (``FullRank.frame_curvature``), lr = rate / curvature makes every step a damped Newton step:
    it contracts towards the optimum at the rate ``rate`` per step, and its jitter there is in
    proportion to the gradient noise (Adam's normalised steps keep a size of about lr however
    small the noise). Each coordinate moves at most ``max_move`` per step. Same interface as
    ``Adam``; ``reset`` has no state to forget.
    """

    def __init__(self, size: int, lr: np.ndarray | float, max_move: float = np.inf):
        self.lr = np.broadcast_to(np.asarray(lr, dtype=float), (size,)).copy()
        self.max_move = max_move

    def reset(self) -> None:
        """Nothing to forget."""

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        return params + np.clip(self.lr * grad, -self.max_move, self.max_move)
