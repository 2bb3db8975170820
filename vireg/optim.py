"""The optimiser's update: scaled stochastic gradient ascent with a per-coordinate step size.

The step size is an array so that the engine can shrink the steps of each variational parameter
on its own scale after each stationary phase (see ``engine``).
"""

from __future__ import annotations

import numpy as np


class ScaledSGD:
    """theta <- theta + lr * grad: plain stochastic gradient ascent with a per-coordinate step.

    In a whitened frame, where the ELBO's curvature in each coordinate is known near the optimum
    (``FullRank.frame_curvature``), lr = rate / curvature makes every step a damped Newton step:
    it contracts towards the optimum at the rate ``rate`` per step, and its jitter there is in
    proportion to the gradient noise (normalised steps, as Adam's, keep a size of about lr however
    small the noise). Each coordinate moves at most ``max_move`` per step.
    """

    def __init__(self, size: int, lr: np.ndarray | float, max_move: float = np.inf):
        self.lr = np.broadcast_to(np.asarray(lr, dtype=float), (size,)).copy()
        self.max_move = max_move

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        return params + np.clip(self.lr * grad, -self.max_move, self.max_move)
