"""The Lightning callback under DDP (strategy="ddp", CPU, gloo, 2 processes): one record per step, from rank 0,
of the gradients the optimizer applies (after the all-reduce); activations are rank 0's own shard's.

Lightning's "ddp" strategy starts the other rank by re-running the script, so the training runs in a script
written to tmp and started in a subprocess. Each rank's sink writes a file named after the rank; a test callback
saves the gradients each rank's optimizer is about to apply. The test process then repeats the same training on
the full batch in one process with plain PyTorch (same seed, same data): the independent reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
STEPS, PER_RANK, N = 3, 8, 64

SCRIPT = (
    textwrap.dedent(
        """
    import json, os, sys
    import numpy as np
    import pytorch_lightning as pl
    import torch
    from torch import nn
    from gradprobe import GradientProbe

    OUT = sys.argv[1]


    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))


    def data():
        g = torch.Generator().manual_seed(1)
        return torch.randn(64, 8, generator=g), torch.randint(0, 2, (64,), generator=g)


    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.body = model()

        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            return nn.functional.cross_entropy(self.body(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)


    class Applied(pl.Callback):
        # Which samples each rank's batch holds (Lightning's DistributedSampler picks them).
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            np.save(
                os.path.join(OUT, f"samples_rank{trainer.global_rank}_step{trainer.global_step}.npy"),
                batch[2].numpy(),
            )

        # The gradients each rank's optimizer is about to apply (after DDP's all-reduce).
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads = {n: p.grad.detach().numpy().copy() for n, p in pl_module.body.named_parameters()}
            np.savez(os.path.join(OUT, f"applied_rank{trainer.global_rank}_step{trainer.global_step}.npz"), **grads)


    def sink(step, keys, values):
        rank = os.environ.get("LOCAL_RANK", "0")  # Lightning sets it in the process it starts; rank 0 has "0" or none
        with open(os.path.join(OUT, f"records_rank{rank}.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "metrics": dict(zip(keys, values))}) + "\\n")


    if __name__ == "__main__":
        x, y = data()
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y, torch.arange(len(x))), batch_size=PER_RANK, shuffle=False
        )
        trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=STEPS, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[GradientProbe(sink=sink, log_every=1, record_cost=True), Applied()])
        trainer.fit(Net(), loader)
    """
    )
    .replace("PER_RANK", str(PER_RANK))
    .replace("STEPS", str(STEPS))
)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train the script under DDP with 2 CPU processes; the folder holding what each rank wrote."""
    out = tmp_path_factory.mktemp("ddp")
    script = out / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for name in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, str(script), str(out)], cwd=out, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _sent(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records_rank0.jsonl").read_text().splitlines()]


def _records(out: Path) -> list[dict]:
    """The logging steps' records (the probe's cost comes last, on its own)."""
    return [r for r in _sent(out) if "probe/seconds" not in r["metrics"]]


def _applied(out: Path, rank: int, step: int) -> dict[str, np.ndarray]:
    with np.load(out / f"applied_rank{rank}_step{step}.npz", allow_pickle=False) as f:
        return dict(f)


def _samples(out: Path, rank: int, step: int) -> torch.Tensor:
    return torch.from_numpy(np.load(out / f"samples_rank{rank}_step{step}.npy", allow_pickle=False))


def _single_process_reference(out: Path) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Plain PyTorch in this process, on both ranks' samples at once: (gradients, rank 0's tanh output) per step.

    With the mean loss on each rank's equal share and DDP's averaging all-reduce, the applied gradient is that of
    the mean loss over the union of both ranks' samples (which samples: as Lightning's sampler gave them).
    """
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(N, 8, generator=g), torch.randint(0, 2, (N,), generator=g)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    steps = []
    for step in range(STEPS):
        rank0, rank1 = _samples(out, 0, step), _samples(out, 1, step)
        assert len(rank0) == len(rank1) == PER_RANK and not set(rank0.tolist()) & set(rank1.tolist())
        batch = torch.cat([rank0, rank1])
        optimizer.zero_grad()
        hidden = net[1](net[0](x[batch]))
        nn.functional.cross_entropy(net[2](hidden), y[batch]).backward()
        grads = {name: p.grad.clone() for name, p in net.named_parameters()}
        steps.append((grads, hidden.detach()[:PER_RANK]))  # rank 0's shard
        optimizer.step()
    return steps


@pytest.mark.slow
def test_rank_zero_records_once_per_step(ddp_run: Path) -> None:
    assert not (ddp_run / "records_rank1.jsonl").exists()
    assert [r["step"] for r in _records(ddp_run)] == list(range(STEPS))
    assert set(_sent(ddp_run)[-1]["metrics"]) == {"probe/seconds", "probe/cost_share"}
    assert len(_sent(ddp_run)) == STEPS + 1


@pytest.mark.slow
def test_recorded_gradients_are_the_all_reduced_ones(ddp_run: Path) -> None:
    reference = _single_process_reference(ddp_run)
    for record, (grads, _) in zip(_records(ddp_run), reference):
        step, metrics = record["step"], record["metrics"]
        applied = [_applied(ddp_run, rank, step) for rank in (0, 1)]
        for layer in ("0", "2"):
            weight = f"{layer}.weight"
            np.testing.assert_allclose(applied[0][weight], applied[1][weight], rtol=0, atol=0)  # the all-reduce
            np.testing.assert_allclose(applied[0][weight], grads[weight].numpy(), rtol=1e-5, atol=1e-7)
            g = grads[weight].double()
            assert metrics[f"grad/l2/body.{layer}"] == pytest.approx(g.norm().item(), rel=1e-5)
            assert metrics[f"grad/absmax/body.{layer}"] == pytest.approx(g.abs().max().item(), rel=1e-5)
            assert metrics[f"grad/mean/body.{layer}"] == pytest.approx(g.mean().item(), rel=1e-4, abs=1e-9)
        everything = torch.cat([p.reshape(-1) for p in grads.values()]).double()
        assert metrics["grad/global_l2"] == pytest.approx(everything.norm().item(), rel=1e-5)


@pytest.mark.slow
def test_activations_are_rank_zeros_shard(ddp_run: Path) -> None:
    for record, (_, hidden) in zip(_records(ddp_run), _single_process_reference(ddp_run)):
        h = hidden.double()
        metrics = record["metrics"]
        assert metrics["act/mean/body.0"] == pytest.approx(h.mean().item(), rel=1e-5, abs=1e-7)
        assert metrics["act/std/body.0"] == pytest.approx(h.std(unbiased=False).item(), rel=1e-5)
