"""The three workloads of `benchmarks.peers`: ordinary torch networks (not the lab's zoo) on synthetic data.

Each workload builds a fresh network from a fixed seed, so every row of the benchmark starts from the same
weights, and holds one fixed set of batches, so every row sees the same data in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

SEED = 0
BATCHES = 16  # distinct batches, cycled: enough to vary the data, few enough to stay in memory


@dataclass(frozen=True)
class Size:
    """The shape of one workload: full size for the benchmark, tiny for --quick."""

    batch: int
    width: int
    depth: int


@dataclass(frozen=True)
class Workload:
    """A network factory, its data and the loss, under one name."""

    name: str
    describe: str
    build: Callable[[], nn.Module]
    inputs: Tensor
    targets: Tensor
    batch: int

    def model(self) -> nn.Module:
        """A fresh network, the same weights every time."""
        torch.manual_seed(SEED)
        return self.build()

    def loader(self) -> DataLoader:
        """The same batches in the same order for every row."""
        return DataLoader(TensorDataset(self.inputs, self.targets), batch_size=self.batch, shuffle=False)


def loss_fn(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over the last dimension (per token for the Transformer)."""
    return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def mlp(size: Size, features: int = 64, classes: int = 10) -> Workload:
    """`benchmarks.train_overhead`'s MLP: `depth` ReLU layers of `width` units on digits-shaped inputs."""

    def build() -> nn.Module:
        layers: list[nn.Module] = []
        for i in range(size.depth):
            layers += [nn.Linear(features if i == 0 else size.width, size.width), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(size.width, classes))

    g = torch.Generator().manual_seed(SEED)
    n = BATCHES * size.batch
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return Workload("mlp", f"MLP {size.depth}×{size.width} ReLU, batch {size.batch}", build, x, y, size.batch)


class TokenEncoder(nn.Module):
    """Embedding, a Transformer encoder and a per-token linear head over the vocabulary."""

    def __init__(self, vocab: int, width: int, depth: int, seq_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.zeros(seq_len, width))
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.position))


def transformer(size: Size, seq_len: int = 64, vocab: int = 256) -> Workload:
    """A small Transformer encoder on random tokens, predicting a random token at each position."""
    g = torch.Generator().manual_seed(SEED)
    n = BATCHES * size.batch
    x = torch.randint(0, vocab, (n, seq_len), generator=g)
    y = torch.randint(0, vocab, (n, seq_len), generator=g)
    return Workload(
        "transformer",
        f"Transformer encoder {size.depth} layers, width {size.width}, seq {seq_len}, batch {size.batch}",
        lambda: TokenEncoder(vocab, size.width, size.depth, seq_len),
        x,
        y,
        size.batch,
    )


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and a skip connection (a 1×1 convolution when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        same = stride == 1 and cin == cout
        self.skip = (
            nn.Identity() if same else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.skip(x))


def resnet(size: Size, classes: int = 10, image: int = 32) -> Workload:
    """A ResNet-style CNN: a stem, 3 stages of `depth` residual blocks (width ×1, ×2, ×4), on CIFAR-shaped data."""

    def build() -> nn.Module:
        w = size.width
        stages: list[nn.Module] = [nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        cin = w
        for s, cout in enumerate((w, 2 * w, 4 * w)):
            for b in range(size.depth):
                stages.append(ResidualBlock(cin, cout, 2 if s and not b else 1))
                cin = cout
        return nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    g = torch.Generator().manual_seed(SEED)
    n = BATCHES * size.batch
    x = torch.randn(n, 3, image, image, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return Workload(
        "resnet",
        f"ResNet-style CNN, 3 stages × {size.depth} blocks, width {size.width}, batch norm, "
        f"{image}×{image}×3, batch {size.batch}",
        build,
        x,
        y,
        size.batch,
    )


# The shapes, with the batches cut so that one full run stays under ~10 min on 2 cores with one torch
# thread: the Transformer at batch 32 takes ~0.26 s a step, the CNN at width 32 and batch 64 ~1.3 s.
FULL = {
    "mlp": Size(batch=128, width=256, depth=20),
    "transformer": Size(batch=8, width=128, depth=4),
    "resnet": Size(batch=16, width=16, depth=2),
}
QUICK = {
    "mlp": Size(batch=8, width=16, depth=3),
    "transformer": Size(batch=2, width=16, depth=1),
    "resnet": Size(batch=4, width=4, depth=1),
}
FACTORIES = {"mlp": mlp, "transformer": transformer, "resnet": resnet}


def make(name: str, quick: bool = False) -> Workload:
    """The named workload at full or --quick size."""
    return FACTORIES[name]((QUICK if quick else FULL)[name])
