"""Gaussian variational families over the unconstrained parameters u.

Each family packs its variational parameters into one flat vector ``phi`` (what the optimiser
moves) and answers the same questions: ``init``, ``sample`` (u = m + scale * eps), ``elbo_grad``
(the hand-derived reparameterisation gradient given the per-draw model gradients from the data
kernel), ``entropy``, ``mean_cov`` and ``distance`` (between two phis, in posterior-sd units).
"""

from vireg.families.fullrank import FullRank
from vireg.families.meanfield import MeanField

FAMILIES = {"meanfield": MeanField, "fullrank": FullRank}


def make_family(name: str, n_params: int):
    return FAMILIES[name](n_params)
