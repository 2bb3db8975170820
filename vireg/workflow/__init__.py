"""The Bayesian workflow after a fit: ArviZ InferenceData (``inference_data``), PSIS-LOO for the
variational posterior (``loo``), model comparison (``compare``) and posterior predictive checks
(``ppc``). Every function takes the folder of a finished run (``vireg fit --out DIR``) and
rebuilds what it needs from the run's ``fit.json`` (the resolved config) and ``draws.csv``
(draws from q on the natural scale, with log p and log q); ``run`` holds that shared part.

The modules import NumPy and Numba; the CLI imports them only inside its commands.
"""
