"""What every model family exposes so the probe can find its layers without knowing the family."""

from __future__ import annotations

from torch import nn

READOUT = "out"


def layer_name(index: int) -> str:
    """The contract's name of hidden block `index`: L000, L001, … (input side first)."""
    return f"L{index:03d}"


class Family(nn.Module):
    """A network: hidden blocks in forward order (`layers`), then a linear `readout`.

    Each block has a `main_weight` (the Linear/Conv kernel or the recurrent matrix) and an `act`
    module (the hidden nonlinearity, hooked for activation statistics) or, for recurrent blocks, none.
    """

    layers: nn.ModuleList
    readout: nn.Linear

    def named_blocks(self) -> list[tuple[str, nn.Module]]:
        """(name, module) for every hidden block and the readout, in forward order."""
        return [(layer_name(i), b) for i, b in enumerate(self.layers)] + [(READOUT, self.readout)]

    def probe_names(self) -> dict[str, str]:
        """Probed blocks' qualified names → their contract ids (`layers.0` → L000, `readout` → out), for gradprobe."""
        named = {id(module): name for name, module in self.named_modules()}
        return {named[id(block)]: name for name, block in self.named_blocks()}
