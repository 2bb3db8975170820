"""Gaussian variational families over the unconstrained parameters u.

Each family packs its variational parameters into one flat vector ``phi`` (what the optimiser
moves) and answers the same questions: ``init``, ``sample`` (u = m + scale * eps), ``log_q``,
``entropy``, ``draw_grads`` (one hand-derived ELBO-gradient estimate per draw, for the
reparameterisation, STL and score-function estimators, given the per-draw model gradients from
the data kernel) and ``elbo_grad`` (their mean), ``mean_cov``, ``distance`` (between two phis, in
posterior-sd units), ``labels``, ``to_dict`` and ``from_dict``.
"""

from vireg.families.fullrank import FullRank
from vireg.families.meanfield import MeanField
from vireg.families.structured import Structured

FAMILIES = {"meanfield": MeanField, "fullrank": FullRank}


def make_family(name: str, n_params: int, laplace=None, model=None):
    """The variational family ``name`` over n_params coordinates; a full-rank or structured
    family with a Laplace approximation runs in its whitened frame (origin the mode,
    W^T H W = I). A model with group terms (``model.groups``) has a structured Laplace
    approximation (``grouped_start``)."""
    if getattr(model, "groups", None) is not None and laplace is not None:
        factor = laplace.factor
        if name == "structured":
            return Structured(model.n_joint, model.segments, laplace.mode, factor)
        if name == "fullrank":
            return FullRank(n_params, laplace.mode, factor.dense(), factor.log_det)
        return MeanField(n_params)
    if name == "fullrank" and laplace is not None:
        W, log_det = laplace.frame
        return FullRank(n_params, laplace.mode, W, log_det)
    return FAMILIES[name](n_params)
