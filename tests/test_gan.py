"""The adversarial task: GAN losses against their formulas and autograd, the ring of Gaussians, mode
coverage, the config's rejections, the probe on the generator's step, and the saturating loss's
vanishing gradient when the discriminator wins."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient

from gradprobe import stats
from gradprobe.recorder import STATS_ARTIFACT
from models.gan import (
    MODE_SHARE,
    coverage,
    discriminator_loss,
    mode_counts,
    nonsaturating_generator,
    saturating_generator,
)
from models.losses import LOSSES, tasks_for
from pipelines import data as D
from pipelines import train
from pipelines.config import ConfigError, RunConfig
from studies.spec import SpecError, load_spec, parse_spec

GAN_LOSSES = ("gan_saturating", "gan_nonsaturating")
LN3 = math.log(3.0)  # σ(ln 3) = 3/4, σ(−ln 3) = 1/4


def tiny(**overrides) -> RunConfig:
    """A GAN run of a few seconds: a 2×16 ReLU generator, Adam."""
    values = dict(
        dataset="gmm",
        loss="gan_nonsaturating",
        depth=2,
        width=16,
        batch_size=32,
        max_steps=3,
        optimizer="adam",
        lr=1e-2,
        log_every=1,
    )
    return RunConfig(**{**values, **overrides})


# -- the losses ------------------------------------------------------------------------------------


def test_generator_losses_on_hand_checked_values() -> None:
    logits = torch.tensor([0.0, LN3])  # D = 1/2 and 3/4
    # saturating: mean log(1 − D) = (ln ½ + ln ¼) / 2 = −1.5 ln 2
    assert saturating_generator(logits).item() == pytest.approx(-1.5 * math.log(2), rel=1e-6)
    # non-saturating: mean −log D = −(ln ½ + ln ¾) / 2 = ln(8/3) / 2
    assert nonsaturating_generator(logits).item() == pytest.approx(math.log(8 / 3) / 2, rel=1e-6)


def test_discriminator_loss_on_hand_checked_values() -> None:
    # D(real) = 3/4, D(fake) = 1/4: −ln ¾ − ln(1 − ¼) = −2 ln ¾
    assert discriminator_loss(torch.tensor([LN3]), torch.tensor([-LN3])).item() == pytest.approx(
        -2 * math.log(0.75), rel=1e-6
    )
    # An undecided D (½ everywhere) scores 2 ln 2, the value at the GAN's equilibrium.
    assert discriminator_loss(torch.zeros(5), torch.zeros(7)).item() == pytest.approx(2 * math.log(2), rel=1e-6)


def test_losses_stay_finite_where_the_naive_formulas_overflow() -> None:
    logits = torch.tensor([-100.0, 100.0])  # float32: σ(100) rounds to 1, σ(−100) to 0
    naive_sat = torch.log(1 - torch.sigmoid(logits)).mean()
    naive_nonsat = -torch.log(torch.sigmoid(logits)).mean()
    assert not torch.isfinite(naive_sat) and not torch.isfinite(naive_nonsat)
    # log(1 − σ(l)) = −softplus(l): ≈ 0 at l = −100, −100 at l = 100; −log σ(l) = softplus(−l): 100 and ≈ 0.
    assert saturating_generator(logits).item() == pytest.approx(-50.0, rel=1e-6)
    assert nonsaturating_generator(logits).item() == pytest.approx(50.0, rel=1e-6)
    assert torch.isfinite(discriminator_loss(torch.tensor([-100.0]), torch.tensor([100.0])))


def _grad(fn, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    return torch.autograd.grad(fn(*leaves), leaves)


@pytest.mark.parametrize(
    "loss, naive, closed_form",
    [
        (saturating_generator, lambda z: torch.log(1 - torch.sigmoid(z)).mean(), lambda z: -torch.sigmoid(z)),
        (nonsaturating_generator, lambda z: -torch.log(torch.sigmoid(z)).mean(), lambda z: -(1 - torch.sigmoid(z))),
    ],
    ids=["saturating", "nonsaturating"],
)
def test_generator_gradient_is_the_closed_form(loss, naive, closed_form) -> None:
    """∂/∂l of the mean over B logits: −σ(l)/B (saturating), −(1 − σ(l))/B (non-saturating).

    Equal to autograd of the naive formula.
    """
    logits = torch.linspace(-6, 6, 13, dtype=torch.float64)
    (ours,) = _grad(loss, logits)
    (reference,) = _grad(naive, logits)
    torch.testing.assert_close(ours, closed_form(logits) / len(logits), rtol=1e-12, atol=0)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-15)


def test_discriminator_gradient_is_the_closed_form() -> None:
    real = torch.linspace(-4, 4, 9, dtype=torch.float64)
    fake = torch.linspace(-3, 5, 5, dtype=torch.float64)
    g_real, g_fake = _grad(discriminator_loss, real, fake)
    torch.testing.assert_close(g_real, (torch.sigmoid(real) - 1) / len(real), rtol=1e-12, atol=0)
    torch.testing.assert_close(g_fake, torch.sigmoid(fake) / len(fake), rtol=1e-12, atol=0)


def test_saturating_gradient_vanishes_where_the_discriminator_wins() -> None:
    """The whole effect in one line of each closed form: at D(G(z)) = σ(−10) ≈ 4.5e−5."""
    (sat,) = _grad(saturating_generator, torch.tensor([-10.0], dtype=torch.float64))
    (nonsat,) = _grad(nonsaturating_generator, torch.tensor([-10.0], dtype=torch.float64))
    assert abs(sat.item()) == pytest.approx(1 / (1 + math.exp(10)), rel=1e-9)
    assert abs(nonsat.item()) == pytest.approx(1 - 1 / (1 + math.exp(10)), rel=1e-9)


# -- losses × tasks in the config -------------------------------------------------------------------


def test_gan_losses_fit_only_the_adversarial_task() -> None:
    fitting = {name for name in LOSSES if "adversarial" in tasks_for(name)}
    assert fitting == set(GAN_LOSSES)
    assert all(tasks_for(name) == ["adversarial"] for name in GAN_LOSSES)


@pytest.mark.parametrize("loss", sorted(set(LOSSES) - set(GAN_LOSSES)))
def test_gmm_rejects_every_other_loss(loss: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig(dataset="gmm", loss=loss)
    assert err.value.field == "loss" and f"loss={loss!r}" in str(err.value)
    assert "adversarial" in str(err.value) and all(name in str(err.value) for name in GAN_LOSSES)


@pytest.mark.parametrize("dataset", sorted(name for name, d in D.DATASETS.items() if d.task != "adversarial"))
def test_every_other_dataset_rejects_the_gan_losses(dataset: str) -> None:
    for loss in GAN_LOSSES:
        with pytest.raises(ConfigError) as err:
            RunConfig(dataset=dataset, loss=loss)
        assert err.value.field == "loss" and f"loss={loss!r}" in str(err.value)


@pytest.mark.parametrize("field", ["latent_dim", "d_steps"])
def test_gan_fields_must_be_positive(field: str) -> None:
    with pytest.raises(ConfigError, match=f"{field}=0 is not allowed"):
        tiny(**{field: 0})


def test_gmm_needs_a_family_that_reads_vectors() -> None:
    with pytest.raises(ConfigError) as err:
        tiny(model="cnn")
    assert err.value.field == "model" and "mlp" in str(err.value)
    assert tiny(model="resmlp").model == "resmlp"


# -- the ring of Gaussians and mode coverage --------------------------------------------------------


def test_gmm_centres_are_eight_points_on_a_circle_of_radius_two() -> None:
    centers = D.gmm_centers()
    angles = np.arange(8) * np.pi / 4
    np.testing.assert_allclose(centers, 2 * np.stack([np.cos(angles), np.sin(angles)], 1), atol=1e-6)


def test_gmm_points_are_the_mixture_and_seeded() -> None:
    D.load_gmm.cache_clear()
    xt, yt, xv, yv = D.load_gmm()
    D.load_gmm.cache_clear()
    again = D.load_gmm()
    for a, b in zip((xt, yt, xv, yv), again):
        np.testing.assert_array_equal(a, b)
    assert xt.shape == (8000, 2) and xv.shape == (1000, 2) and xt.dtype == np.float32
    np.testing.assert_array_equal(xt, yt)  # no labels: the targets are the points
    assert not np.array_equal(xt[:1000], xv)  # validation points are drawn after, not copied
    centers = D.gmm_centers()
    dist = np.linalg.norm(xt[:, None] - centers[None], axis=-1)
    nearest = dist.argmin(1)
    offsets = xt - centers[nearest]
    # Each coordinate's offset from its mode: mean 0, std GMM_STD (8,000 points: about 1.6 % sampling error).
    assert np.abs(offsets.mean(0)).max() < 0.005
    np.testing.assert_allclose(offsets.std(0), D.GMM_STD, rtol=0.05)
    shares = np.bincount(nearest, minlength=8) / len(xt)
    np.testing.assert_allclose(shares, 1 / 8, atol=0.015)  # equally likely modes
    data = D.TaskData("gmm", batch_size=16)
    assert (data.info.task, data.info.layout, data.in_shape, data.n_outputs) == ("adversarial", "vector", (2,), 2)


def test_coverage_of_hand_placed_points() -> None:
    centers = torch.from_numpy(D.gmm_centers())
    std = 0.05
    points = torch.cat(
        [
            centers[0] + torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, -0.149]]),  # within 3σ = 0.15 of mode 0
            centers[3] + torch.tensor([[0.151, 0.0]]),  # just outside 3σ of mode 3
            torch.zeros(1, 2),  # the origin: 2 from every mode
        ]
    )
    counts = mode_counts(points, centers, std)
    assert counts.tolist() == [3, 0, 0, 0, 0, 0, 0, 0]
    quality, modes = coverage(counts, len(points))
    assert quality.item() == pytest.approx(3 / 5) and modes.item() == 1


def test_real_points_cover_every_mode_at_the_gaussian_rate() -> None:
    """Real data scores what it must: all 8 modes, and P(‖ε‖ ≤ 3σ) = 1 − e^(−9/2) ≈ 0.989 for a 2-D Gaussian."""
    _, _, xv, _ = D.load_gmm()
    counts = mode_counts(torch.from_numpy(xv), torch.from_numpy(D.gmm_centers()), D.GMM_STD)
    quality, modes = coverage(counts, len(xv))
    assert modes.item() == 8
    assert quality.item() == pytest.approx(1 - math.exp(-4.5), abs=0.012)  # ±3.5 binomial s.d. at n = 1,000
    assert (counts.double() / len(xv) >= MODE_SHARE).all()


# -- the probe on the generator's step, inside a real Lightning fit ----------------------------------


class GeneratorStep(pl.Callback):
    """Keeps what the generator's update saw: the noise, both networks' weights, the real batch."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def setup(self, trainer, pl_module, stage) -> None:
        pl_module.net.register_forward_pre_hook(lambda m, inputs: setattr(self, "z", inputs[0].detach().clone()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.x = batch[0].clone()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if optimizer is pl_module.generator_optimizer:  # runs after the probe, before clipping and the update
            self.steps.append(
                {
                    "z": self.z,
                    "x": self.x,
                    "net": copy.deepcopy(pl_module.net.state_dict()),
                    "disc": copy.deepcopy(pl_module.disc.state_dict()),
                }
            )


def fit(cfg: RunConfig, lit=None, data=None) -> tuple[dict[int, dict[str, float]], GeneratorStep, object]:
    """Train `cfg` (or the given module) with the probe and a GeneratorStep; the records by step."""
    if lit is None:
        data, lit = train.build(cfg)
    records: dict[int, dict[str, float]] = {}

    def record(step: int, keys: list[str], values: list[float]) -> None:
        assert step not in records and len(keys) == len(set(keys))
        records[step] = dict(zip(keys, values))

    probe = train.make_probe(cfg, lit, record)
    seen = GeneratorStep()
    trainer = train.make_trainer(cfg, [probe, seen], progress_bar=False)
    trainer.fit(lit, datamodule=data)
    return records, seen, lit


def generator_loss_formula(loss: str, logits: torch.Tensor) -> torch.Tensor:
    """Goodfellow's two generator losses, spelled out on probabilities (fine at moderate logits)."""
    d = torch.sigmoid(logits)
    return torch.log(1 - d).mean() if loss == "gan_saturating" else -torch.log(d).mean()


@pytest.mark.parametrize("loss", GAN_LOSSES)
def test_probe_records_the_generator_step_as_autograd_computes_it(loss: str) -> None:
    """grad/…, backprop/out, train/loss and gan/… of every step equal autograd on the generator's update,
    with 2 discriminator steps in between and norm clipping that bites (the record is before clipping)."""
    threshold = 1e-3
    cfg = tiny(loss=loss, d_steps=2, clip="norm", clip_threshold=threshold)
    records, seen, lit = fit(cfg)
    assert sorted(records) == list(range(cfg.max_steps)) and len(seen.steps) == cfg.max_steps
    assert {"grad/l2/L000", "grad/l2/L001", "grad/l2/out"} <= set(records[0])
    assert not any(k.endswith("/L002") for k in records[0])  # the generator's layers, not D's three
    for step, snap in enumerate(seen.steps):
        net, disc = copy.deepcopy(lit.net).double(), copy.deepcopy(lit.disc).double()
        net.load_state_dict(snap["net"])
        disc.load_state_dict(snap["disc"])
        fake = net(snap["z"].double())
        logits = disc(fake)
        value = generator_loss_formula(loss, logits)
        params = list(net.parameters())
        grads = torch.autograd.grad(value, [*params, fake])
        by_id = {id(p): g for p, g in zip(params, grads)}
        rec = records[step]
        global_l2 = torch.sqrt(sum(g.pow(2).sum() for g in grads[:-1])).item()
        expected = {
            "train/loss": value.item(),
            "gan/g_loss": value.item(),
            "grad/l2/out": by_id[id(net.readout.weight)].norm().item(),
            "grad/l2/L000": by_id[id(net.layers[0].linear.weight)].norm().item(),
            "grad/l2/L001": by_id[id(net.layers[1].linear.weight)].norm().item(),
            "backprop/l2/out": grads[-1].norm().item(),
            "grad/global_l2": global_l2,
            "gan/d_fake": torch.sigmoid(logits).mean().item(),
            "gan/d_real": torch.sigmoid(disc(snap["x"].double())).mean().item(),
        }
        for key, want in expected.items():
            assert rec[key] == pytest.approx(want, rel=1e-4, abs=1e-9), (step, key)
        assert global_l2 > threshold  # clipping bites on every step, and the clipped norm is the threshold
        assert rec["grad/global_l2_clipped"] == pytest.approx(threshold, rel=1e-3)
        assert 0 < rec["gan/d_loss"] and math.isfinite(rec["gan/d_loss"])


def test_discriminator_takes_d_steps_per_generator_step() -> None:
    cfg = tiny(d_steps=3, max_steps=2)
    _, _, lit = fit(cfg)
    assert lit.trainer.global_step == 2  # max_steps counts generator updates
    d_opt, g_opt = lit.trainer.optimizers
    assert g_opt is lit.generator_optimizer
    assert {int(s["step"]) for s in d_opt.state.values()} == {6}  # Adam's own count of updates
    assert {int(s["step"]) for s in g_opt.state.values()} == {2}


def test_schedules_step_both_optimizers_once_per_generator_step() -> None:
    cfg = tiny(schedule="step", max_steps=3, d_steps=2)  # StepLR: ×0.1 every max(1, 3 // 3) = 1 step
    _, _, lit = fit(cfg)
    for opt in lit.trainer.optimizers:
        assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * 0.1**3, rel=1e-9)


def test_a_diverging_gan_stops_as_a_result() -> None:
    """SGD at lr 1e6 wrecks the discriminator in its first update: the generator's gradient is not finite,
    the probe records that step, the generator takes no step, and training stops."""
    cfg = tiny(optimizer="sgd", lr=1e6, init="kaiming_normal", max_steps=8)
    records, seen, lit = fit(cfg)
    last = max(records)
    assert sorted(records) == list(range(last + 1)) and last < cfg.max_steps - 1
    # Diverged: a loss that is not finite, or a norm beyond float32's squares (recorded as it is; NaN fails <=).
    assert not records[last]["grad/global_l2"] <= stats.LARGEST_NORM or not math.isfinite(records[last]["train/loss"])
    after = lit.net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in seen.steps[-1]["net"].items())  # no update applied


# -- the effect: a winning discriminator starves the saturating generator ----------------------------


def _winning_discriminator(lit, data, steps: int = 50) -> None:
    """Train D alone against the frozen initial generator until it tells the two apart."""
    x_all = data.train.tensors[0]
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(lit.disc.parameters(), lr=3e-3)
    for _ in range(steps):
        x = x_all[torch.randint(len(x_all), (64,), generator=gen)]
        with torch.no_grad():
            fake = lit.net(torch.randn(64, lit.latent_dim, generator=gen))
        loss = discriminator_loss(lit.disc(x), lit.disc(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()


def _first_step(loss: str, disc_state: dict | None) -> dict[str, float]:
    cfg = tiny(loss=loss, max_steps=1, lr=1e-4, width=32, batch_size=128)
    data, lit = train.build(cfg)
    if disc_state is not None:
        lit.disc.load_state_dict(disc_state)
    torch.manual_seed(1)  # the same noise for both losses in the fit's own D and G steps
    records, _, _ = fit(cfg, lit, data)
    return records[0]


def test_saturating_generator_gradient_vanishes_when_the_discriminator_wins() -> None:
    cfg = tiny(width=32, batch_size=128)
    data, lit = train.build(cfg)
    _winning_discriminator(lit, data)
    strong = copy.deepcopy(lit.disc.state_dict())
    won = {loss: _first_step(loss, strong) for loss in GAN_LOSSES}
    fresh = {loss: _first_step(loss, None) for loss in GAN_LOSSES}
    sat, nonsat = (won[loss] for loss in GAN_LOSSES)
    assert sat["gan/d_fake"] == pytest.approx(nonsat["gan/d_fake"])  # the same D and noise for both
    assert sat["gan/d_fake"] < 0.01 and sat["gan/d_real"] > 0.99  # D wins
    # The output layer's gradient: −σ(l) against −(1 − σ(l)) per point, so ≲ 1 % of the other.
    assert nonsat["grad/l2/out"] > 0.1
    assert sat["grad/l2/out"] < 0.01 * nonsat["grad/l2/out"]
    assert sat["backprop/l2/out"] < 0.01 * nonsat["backprop/l2/out"]
    # Against an undecided D (σ ≈ ½ at initialization) the two gradients are about the same.
    assert 0.3 < fresh["gan_saturating"]["gan/d_fake"] < 0.7
    ratio = fresh["gan_saturating"]["grad/l2/out"] / fresh["gan_nonsaturating"]["grad/l2/out"]
    assert 0.5 < ratio < 2


# -- one run through the pipeline -------------------------------------------------------------------


@pytest.mark.slow
def test_gan_run_records_the_generator_and_the_gan_keys(tracking, tmp_path) -> None:
    cfg = tiny(max_steps=4, d_steps=2, val_every=2)
    result = train.run(cfg, progress_bar=False)
    assert result.outcome == "completed" and result.steps == cfg.max_steps
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["loss"] == cfg.loss
    metrics = run.data.metrics
    expected = {
        "train/loss",
        "grad/global_l2",
        "gan/d_real",
        "gan/d_fake",
        "gan/d_loss",
        "gan/g_loss",
        "val/loss",
        "val/modes",
        "val/high_quality",
    }
    for layer in ("L000", "L001", "out"):
        expected |= {f"grad/l2/{layer}", f"backprop/l2/{layer}", f"update/ratio/{layer}"}
    assert expected <= set(metrics)
    assert not any(k.endswith("/L002") for k in metrics)
    assert 0 <= metrics["gan/d_real"] <= 1 and 0 <= metrics["gan/d_fake"] <= 1
    assert 0 <= metrics["val/high_quality"] <= 1 and metrics["val/modes"] in range(9)
    df = pd.read_parquet(client.download_artifacts(result.run_id, STATS_ARTIFACT, str(tmp_path)))
    steps = df[df.family != "val"]
    assert sorted(steps.step.unique()) == list(range(cfg.max_steps))
    gan = steps[steps.family == "gan"].pivot(index="step", columns="stat", values="value")
    train_loss = steps[(steps.family == "train") & (steps.stat == "loss")].set_index("step").value
    np.testing.assert_allclose(gan["g_loss"], train_loss, rtol=1e-7)
    assert set(df[df.family == "val"].stat) == {"loss", "modes", "high_quality"}


def test_study_objective_on_modes_needs_the_adversarial_task() -> None:
    spec = load_spec("gan")
    assert (spec.metric, spec.direction, spec.n_trials) == ("val/modes", "maximize", 6)
    assert {spec.config({"loss": loss}).loss for loss in GAN_LOSSES} == set(GAN_LOSSES)
    raw = {"name": "t", "space": {"depth": [2]}, "objective": {"metric": "val/modes"}, "sampler": "grid"}
    with pytest.raises(SpecError, match="objective.metric: val/modes needs a"):
        parse_spec(raw, "t.yaml")  # on digits
