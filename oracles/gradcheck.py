"""Gradient checks, the oracles of the test suite: models, probe and NumPy reference against each other.

    python -m oracles.gradcheck                  # every check, one line each; exit 1 if any fails
    python -m oracles.gradcheck --only models    # or: probe, reference (repeatable)
    mlflow run . -e gradcheck --env-manager local

- models: `torch.autograd.gradcheck` in float64 on a tiny instance of every registered family, with
  every norm (batch norm in train mode),
  with respect to the input and to the parameters. Hidden units are tanh: ReLU's kink would fail
  finite differences wherever a unit sits near 0, which says nothing about the backward pass.
- probe: one step of the real pipeline (`train.build`, Lightning's Trainer, `GradientProbe`) on small
  MLPs; the statistics it records must equal the NumPy reference's from the same weights and batch.
- reference: the NumPy reference (`oracles.reference`) against central finite differences, and
  gradient descent on linear regression against the least-squares solution.

Under `mlflow run` the results also go to the run: `gradcheck/checks.csv` and two metrics.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.func import functional_call

from common.cli import OneLineParser
from gradprobe import keys as K
from models.norms import NORMS
from models.registry import ACCEPTS, LAYOUTS, create_model, list_models
from oracles import reference as ref
from pipelines import train
from pipelines.config import RunConfig

SECTIONS = ("models", "probe", "reference")
GRADCHECK_TOL = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}  # torch.autograd.gradcheck's defaults, stated
PROBE_RTOL = 1e-4  # the probe computes in float32, the reference in float64
FD_RTOL = 1e-6  # central differences in float64 with ε = 1e-6: truncation ε² and rounding 1e-16/ε
GD_RTOL = 1e-8  # gradient descent run long enough to reach the closed form to rounding

# Tiny inputs per layout: a few entries, so that every Jacobian is cheap to take by finite differences.
TINY_SHAPES = {"image": (1, 4, 4), "signal": (2, 5), "sequence": (4, 2), "vector": (5,)}
TINY = {"depth": 2, "width": 3, "activation": "tanh", "batch": 4, "outputs": 3}


@dataclass(frozen=True)
class Check:
    """One comparison: its name, the largest absolute and relative errors, the tolerance, the verdict."""

    name: str
    max_abs: float
    max_rel: float
    tol: str
    passed: bool

    def line(self) -> str:
        """One printed line: name, errors, tolerance, PASS/FAIL."""
        verdict = "PASS" if self.passed else "FAIL"
        return f"{self.name:<40} max abs {self.max_abs:9.2e}  max rel {self.max_rel:9.2e}  tol {self.tol:<26} {verdict}"


def errors(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max |got − expected|, that over max |expected|): relative to the scale, not entry by entry."""
    got, expected = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
    if got.shape != expected.shape:
        return math.inf, math.inf
    diff = float(np.abs(got - expected).max(initial=0.0))
    scale = float(np.abs(expected).max(initial=0.0))
    return diff, diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


# -- (a) every registered family under torch.autograd.gradcheck ----------------------------------------


@dataclass(frozen=True)
class ModelCase:
    """A tiny float64 network and an input batch to check it on."""

    name: str
    net: nn.Module
    x: Tensor


def model_cases(seed: int = 0) -> list[ModelCase]:
    """Every registered family × every norm, on its first accepted layout."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for family in list_models():
        layout = next(lay for lay in LAYOUTS if lay in ACCEPTS[family])
        shape = TINY_SHAPES[layout]
        for norm in NORMS:
            with torch.random.fork_rng():  # seeded init without touching the caller's random state
                torch.manual_seed(seed)
                net = create_model(
                    family,
                    in_shape=shape,
                    layout=layout,
                    n_outputs=TINY["outputs"],
                    depth=TINY["depth"],
                    width=TINY["width"],
                    activation=TINY["activation"],
                    norm=norm,
                ).double()
            x = torch.randn(TINY["batch"], *shape, generator=gen, dtype=torch.float64)
            cases.append(ModelCase(f"{family}-{norm}", net, x))
    return cases


def finite_difference_jacobian(fn: Callable[..., Tensor], inputs: Sequence[Tensor], eps: float) -> Tensor:
    """d fn / d inputs by central differences, one column per input entry (all inputs concatenated)."""
    columns = []
    with torch.no_grad():
        for t in inputs:
            flat = t.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                up = fn(*inputs).reshape(-1).clone()
                flat[i] = old - eps
                down = fn(*inputs).reshape(-1)
                flat[i] = old
                columns.append((up - down) / (2 * eps))
    return torch.stack(columns, dim=1)


def autograd_jacobian(fn: Callable[..., Tensor], inputs: Sequence[Tensor]) -> Tensor:
    """d fn / d inputs by reverse mode (one backward pass per output entry), in the same layout."""
    out = fn(*inputs).reshape(-1)
    rows = []
    for k in range(out.numel()):
        grads = torch.autograd.grad(out[k], inputs, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(t) if g is None else g).reshape(-1) for t, g in zip(inputs, grads)]))
    return torch.stack(rows)


def gradcheck_one(name: str, fn: Callable[..., Tensor], inputs: Sequence[Tensor]) -> Check:
    """torch's gradcheck decides; the errors printed are of the full Jacobians, autograd vs differences."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    passed = torch.autograd.gradcheck(fn, inputs, raise_exception=False, **GRADCHECK_TOL)
    analytic = autograd_jacobian(fn, inputs).detach().numpy()
    numeric = finite_difference_jacobian(fn, inputs, GRADCHECK_TOL["eps"]).numpy()
    max_abs, max_rel = errors(analytic, numeric)
    tol = f"atol {GRADCHECK_TOL['atol']:g} rtol {GRADCHECK_TOL['rtol']:g}"
    return Check(name, max_abs, max_rel, tol, bool(passed))


def check_model(name: str, net: nn.Module, x: Tensor) -> list[Check]:
    """gradcheck of `net` (float64, train mode) w.r.t. its input and w.r.t. all its parameters."""
    net = net.double().train()
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    params = [p for p in net.parameters() if p.requires_grad]

    def of_params(*ps: Tensor) -> Tensor:
        return functional_call(net, dict(zip(names, ps)), (x,))

    return [
        gradcheck_one(f"model/{name}/input", lambda inp: net(inp), [x.double()]),
        gradcheck_one(f"model/{name}/params", of_params, params),
    ]


def model_checks() -> list[Check]:
    """gradcheck of every case of `model_cases`."""
    return [check for case in model_cases() for check in check_model(case.name, case.net, case.x)]


# -- (b) the probe's statistics against the NumPy reference --------------------------------------------

PROBE_CASES = {  # small MLPs, one step: each hidden nonlinearity the reference has, and identity + MSE
    "mlp-sigmoid-ce": {"activation": "sigmoid"},
    "mlp-tanh-ce": {"activation": "tanh"},
    "mlp-relu-ce": {"activation": "relu"},
    "mlp-tanh-mse": {"activation": "tanh", "dataset": "teacher", "loss": "mse"},
}
PROBE_BASE = {"model": "mlp", "depth": 2, "width": 8, "init": "xavier_normal", "init_gain": 2.0, "batch_size": 32}


class _FirstBatch(pl.Callback):
    """Keeps the batch the Trainer actually fed, so the reference sees exactly the same inputs."""

    batch: tuple[Tensor, Tensor]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch = batch


def probe_step(cfg: RunConfig) -> tuple[dict[str, float], nn.Module, tuple[Tensor, Tensor]]:
    """Run one real training step with the probe: (what it recorded, the net before the step, the batch)."""
    data, lit = train.build(cfg)
    net0 = copy.deepcopy(lit.net)
    records: dict[str, float] = {}
    probe = train.make_probe(
        dataclasses.replace(cfg, log_every=1), lit, lambda step, keys, values: records.update(zip(keys, values))
    )
    first = _FirstBatch()
    train.make_trainer(cfg, [probe, first], progress_bar=False).fit(lit, datamodule=data)
    return records, net0, first.batch


def reference_stats(bp: ref.Backprop, names: list[str]) -> dict[str, tuple[float, float]]:
    """key → (value, scale) from a reference backprop; the scale judges near-zero means (rms or std)."""
    out: dict[str, tuple[float, float]] = {K.TRAIN_LOSS: (bp.loss, abs(bp.loss))}
    grads = [*bp.dW, *bp.db]
    global_l2 = math.sqrt(sum(float((g**2).sum()) for g in grads))
    out[K.GLOBAL_NORM] = (global_l2, global_l2)
    for i, name in enumerate(names):
        g = bp.dW[i]
        rms = float(np.sqrt(np.mean(g**2)))
        values = {
            "l2": float(np.linalg.norm(g)),
            "rms": rms,
            "absmax": float(np.abs(g).max()),
            "mean": float(g.mean()),
            "std": float(g.std()),
        }
        for stat, v in values.items():
            out[K.key("grad", name, stat)] = (v, rms if stat == "mean" else abs(v))
        signal = bp.delta[-1] if name == "out" else bp.da[i + 1]  # ∂L/∂logits; ∂L/∂(block output)
        out[K.key("backprop", name, "l2")] = (float(np.linalg.norm(signal)),) * 2
        if name != "out":
            a = bp.a[i + 1]
            spread = float(a.std()) + abs(float(a.mean()))
            out[K.key("act", name, "mean")] = (float(a.mean()), spread)
            out[K.key("act", name, "std")] = (float(a.std()), spread)
    return out


def compare_probe(
    name: str, cfg: RunConfig, records: dict[str, float], net: nn.Module, batch: tuple[Tensor, Tensor]
) -> Check:
    """The probe's record of one step against the reference computed from the same weights and batch."""
    layers = [*net.layers, net.readout]
    linears = [b.linear if hasattr(b, "linear") else b for b in layers]
    weights = [m.weight.detach().double().numpy() for m in linears]
    biases = [m.bias.detach().double().numpy() for m in linears]
    x, y = (t.detach().double().numpy() if t.is_floating_point() else t.numpy() for t in batch)
    bp = ref.mlp_backprop(x, y, weights, biases, cfg.activation, cfg.loss)
    blocks = [block for block, _ in net.named_blocks()]
    max_abs = max_rel = 0.0
    for key, (value, scale) in reference_stats(bp, blocks).items():
        got = records.get(key, math.nan)
        err = abs(got - value) if math.isfinite(got) else math.inf
        max_abs, max_rel = max(max_abs, err), max(max_rel, err / scale if scale > 0 else err)
    return Check(f"probe/{name}", max_abs, max_rel, f"rel {PROBE_RTOL:g} (float32)", max_rel <= PROBE_RTOL)


def probe_checks() -> list[Check]:
    """One real probe step per PROBE_CASES entry, each compared with the reference."""
    checks = []
    for name, overrides in PROBE_CASES.items():
        cfg = RunConfig(**{**PROBE_BASE, **overrides, "max_steps": 1, "log_every": 1})
        records, net0, batch = probe_step(cfg)
        checks.append(compare_probe(name, cfg, records, net0, batch))
    return checks


# -- (c) the NumPy reference against finite differences ------------------------------------------------


def random_mlp(sizes: list[int], rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Weights (Var 1/fan_in) and small random biases for layer sizes n_0 … n_L."""
    weights = [rng.standard_normal((m, n)) / np.sqrt(n) for n, m in zip(sizes, sizes[1:])]
    return weights, [0.1 * rng.standard_normal(m) for m in sizes[1:]]


def _replaced(arrays: list[np.ndarray], i: int, value: np.ndarray) -> list[np.ndarray]:
    return [value if j == i else a for j, a in enumerate(arrays)]


def fd_gradients(
    x: np.ndarray, y: np.ndarray, weights: list[np.ndarray], biases: list[np.ndarray], activation: str, loss: str
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """(∂L/∂W per layer, ∂L/∂b per layer, ∂L/∂x) of `reference.mlp_loss`, by central differences."""
    W, b, act = weights, biases, activation
    dW = [
        ref.numerical_gradient(lambda v, i=i: ref.mlp_loss(x, y, _replaced(W, i, v), b, act, loss), w)
        for i, w in enumerate(W)
    ]
    db = [
        ref.numerical_gradient(lambda v, i=i: ref.mlp_loss(x, y, W, _replaced(b, i, v), act, loss), c)
        for i, c in enumerate(b)
    ]
    dx = ref.numerical_gradient(lambda v: ref.mlp_loss(v, y, W, b, act, loss), x)
    return dW, db, dx


def reference_checks(seed: int = 0) -> list[Check]:
    """Reference backprop vs finite differences per activation × loss; linear-regression GD vs closed form."""
    rng = np.random.default_rng(seed)
    checks = []
    tol = f"rel {FD_RTOL:g}"
    for activation in ref.ACTIVATIONS:
        for loss in ref.LOSSES:
            for sizes in ([4, 5, 3], [4, 5, 5, 3]):  # one hidden layer, and two
                weights, biases = random_mlp(sizes, rng)
                x = rng.standard_normal((6, sizes[0]))
                y = rng.integers(0, sizes[-1], 6) if loss == "ce" else rng.standard_normal((6, sizes[-1]))
                bp = ref.mlp_backprop(x, y, weights, biases, activation, loss)
                dW, db, dx = fd_gradients(x, y, weights, biases, activation, loss)
                got = np.concatenate([g.ravel() for g in [*bp.dW, *bp.db, bp.da[0].T]])
                want = np.concatenate([g.ravel() for g in [*dW, *db, dx]])
                max_abs, max_rel = errors(got, want)
                name = f"reference/{activation}-{loss}-h{len(sizes) - 2}/fd"
                checks.append(Check(name, max_abs, max_rel, tol, max_rel <= FD_RTOL))
    x = rng.standard_normal((50, 3))
    y = x @ np.array([1.5, -2.0, 0.5]) + 0.3 + 0.1 * rng.standard_normal(50)
    w, b = rng.standard_normal(3), 0.2
    gw, gb = ref.linreg_gradient(x, y, w, b)
    fw = ref.numerical_gradient(lambda v: ref.linreg_loss(x, y, v, b), w)
    fb = ref.numerical_gradient(lambda v: ref.linreg_loss(x, y, w, float(v[0])), np.array([b]))
    max_abs, max_rel = errors(np.append(gw, gb), np.append(fw, fb))
    checks.append(Check("reference/linreg-gradient/fd", max_abs, max_rel, tol, max_rel <= FD_RTOL))
    fit = ref.linreg_fit(x, y, lr=0.1, steps=2000)
    w_star, b_star = ref.linreg_closed_form(x, y)
    max_abs, max_rel = errors(np.append(fit.w, fit.b), np.append(w_star, b_star))
    checks.append(Check("reference/linreg-gd/closed-form", max_abs, max_rel, f"rel {GD_RTOL:g}", max_rel <= GD_RTOL))
    return checks


# -- entry point ------------------------------------------------------------------------------------


def run_checks(sections: Sequence[str] = SECTIONS, out: Callable[[str], None] = print) -> list[Check]:
    """Run the chosen sections, printing each check's line as it completes."""
    runners = {"models": model_checks, "probe": probe_checks, "reference": reference_checks}
    checks: list[Check] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds contention on a shared machine
    try:
        for section in SECTIONS:
            if section in sections:
                for check in runners[section]():
                    out(check.line())
                    checks.append(check)
    finally:
        torch.set_num_threads(threads)
    return checks


def log_to_mlflow(checks: list[Check]) -> None:
    """Under `mlflow run`: the table as `gradcheck/checks.csv`, and the counts as metrics."""
    import mlflow

    rows = ["name,max_abs,max_rel,tol,passed"]
    rows += [f"{c.name},{c.max_abs:.6g},{c.max_rel:.6g},{c.tol},{c.passed}" for c in checks]
    failed = sum(not c.passed for c in checks)
    mlflow.start_run()  # takes over the run `mlflow run` created (MLFLOW_RUN_ID)
    mlflow.log_text("\n".join(rows) + "\n", "gradcheck/checks.csv")
    mlflow.log_metrics({"gradcheck/checks": len(checks), "gradcheck/failed": failed})
    mlflow.end_run(status="FAILED" if failed else "FINISHED")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the checks, print one line each; 0 when all pass, 1 otherwise."""
    parser = OneLineParser(
        prog="python -m oracles.gradcheck", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    args = parser.parse_args(argv)
    checks = run_checks(args.only or SECTIONS)
    failed = [c.name for c in checks if not c.passed]
    print(f"{len(checks)} checks, {len(failed)} failed" + (": " + ", ".join(failed) if failed else ""))
    if os.environ.get("MLFLOW_RUN_ID"):
        log_to_mlflow(checks)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
