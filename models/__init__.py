"""Model families, init schemes, losses, optimizers and the LightningModule that wraps them."""
