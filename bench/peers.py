"""Time one mean-field logistic ELBO-gradient step in vireg and in its peers, in one run.

    python bench/peers.py [--n 1000000] [--d 100] [--samples 1] [--steps 20] [--dtype float64]

Peers, each timed only when installed (the optional ``bench`` extra, never a runtime dependency):
- NumPyro: SVI with an AutoNormal (mean-field) guide, Trace_ELBO with ``samples`` vectorised
  particles, the jit-compiled update step (gradient and Adam);
- PyTorch: the same ELBO written by hand (reparameterisation, autograd), with Adam;
- PyMC: ADVI (mean-field), the compiled PyTensor step function of its objective with ``samples``
  Monte Carlo draws and Adam (what ``pm.fit(method="advi")`` calls once per iteration).
Every implementation gets the same synthetic standardised data, the same S, and all cores.
Reports the median wall time per step after warm-up (compilation apart), as JSON lines and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from vireg.bench import median_ms


def time_vireg(args) -> dict:
    from vireg.bench import run_bench

    r = run_bench("logistic", "meanfield", args.n, args.d, args.samples, None, args.steps,
                  args.dtype)
    return {"tool": "vireg", "ms_per_step": r["ms_per_step"], "compile_s": r["compile_s"],
            "bandwidth_gb_s": r["bandwidth_gb_s"], "roofline_ms": r["roofline_ms_per_step"]}


def time_numpyro(args, X, y) -> dict:
    import jax

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    dt = jnp.float64 if args.dtype == "float64" else jnp.float32
    Xj, yj = jnp.asarray(X, dtype=dt), jnp.asarray(y, dtype=dt)

    def model(X, y):
        a = numpyro.sample("a", dist.Normal(0.0, 5.0))
        b = numpyro.sample("b", dist.Normal(jnp.zeros(X.shape[1], dtype=dt), 5.0).to_event(1))
        numpyro.sample("y", dist.Bernoulli(logits=a + X @ b), obs=y)

    guide = AutoNormal(model)
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3),
              Trace_ELBO(num_particles=args.samples, vectorize_particles=True))
    state = svi.init(jax.random.PRNGKey(0), Xj, yj)
    update = jax.jit(svi.update)
    t0 = time.perf_counter()
    state, loss = update(state, Xj, yj)
    loss.block_until_ready()
    compile_s = time.perf_counter() - t0
    box = {"state": state}

    def step():
        box["state"], loss = update(box["state"], Xj, yj)
        loss.block_until_ready()

    return {"tool": f"numpyro {numpyro.__version__} (jax {jax.__version__})",
            "ms_per_step": median_ms(step, args.steps), "compile_s": compile_s}


def time_torch(args, X, y) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    dt = torch.float64 if args.dtype == "float64" else torch.float32
    Xt, yt = torch.tensor(X, dtype=dt), torch.tensor(y, dtype=dt)
    P = X.shape[1] + 1
    m = torch.zeros(P, dtype=dt, requires_grad=True)
    log_s = torch.full((P,), -2.3, dtype=dt, requires_grad=True)
    opt = torch.optim.Adam([m, log_s], lr=1e-3)
    gen = torch.Generator().manual_seed(0)

    def step():
        opt.zero_grad()
        eps = torch.randn(args.samples, P, dtype=dt, generator=gen)
        theta = m + torch.exp(log_s) * eps
        eta = theta[:, :1].T + Xt @ theta[:, 1:].T  # (N, S)
        ll = (yt[:, None] * eta - torch.nn.functional.softplus(eta)).sum(0)
        lp = -0.5 * (theta / 5.0).pow(2).sum(1)
        elbo = (ll + lp).mean() + log_s.sum()
        (-elbo).backward()
        opt.step()

    step()
    return {"tool": f"pytorch {torch.__version__}", "ms_per_step": median_ms(step, args.steps),
            "compile_s": 0.0}


def time_pymc(args, X, y) -> dict:
    import pymc as pm
    import pytensor

    pytensor.config.floatX = args.dtype
    with pm.Model():
        a = pm.Normal("a", 0.0, 5.0)
        b = pm.Normal("b", 0.0, 5.0, shape=X.shape[1])
        pm.Bernoulli("y", logit_p=a + pm.math.dot(X.astype(args.dtype), b), observed=y)
        advi = pm.ADVI(random_seed=0)
        t0 = time.perf_counter()
        step_fn = advi.objective.step_function(obj_n_mc=args.samples,
                                               obj_optimizer=pm.adam(learning_rate=1e-3))
        step_fn()
        compile_s = time.perf_counter() - t0
    return {"tool": f"pymc {pm.__version__} ADVI", "ms_per_step": median_ms(step_fn, args.steps),
            "compile_s": compile_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=100)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    args = p.parse_args()
    from vireg.bench import synthetic_data

    X, y = synthetic_data("logistic", args.n, args.d)  # the data vireg bench times
    rows = [time_vireg(args)]
    for name, fn in (("numpyro", time_numpyro), ("torch", time_torch), ("pymc", time_pymc)):
        try:
            rows.append(fn(args, X, y))
        except ImportError:
            rows.append({"tool": name, "ms_per_step": None, "note": "not installed"})
    base = rows[0]["ms_per_step"]
    print(f"N={args.n:,} D={args.d} S={args.samples} {args.dtype}, {os.cpu_count()} cores")
    for r in rows:
        ms = r["ms_per_step"]
        ratio = "" if ms is None else f"  ({ms / base:.1f}x vireg's time)"
        shown = "not installed" if ms is None else f"{ms:8.2f} ms/step"
        print(f"  {r['tool']:40s} {shown}{ratio}")
        print(json.dumps({**r, **vars(args)}), flush=True)


if __name__ == "__main__":
    main()
