"""SAELens's own training step, timed on our batches (optional: needs the `bench` extra, sae-lens).

The step is `SAETrainer._train_step` of SAELens itself (its forward pass with the training
losses, backward, gradient clipping, Adam and schedulers), the unit `SAETrainer.fit` repeats.
"""

from __future__ import annotations

import itertools

import torch
from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer

from simulations.benchmark.timing import median_seconds


def saelens_step_seconds(architecture: str, d: int, width: int, pool: list[torch.Tensor], repeats: int, k: int = 32) -> float:
    """Median seconds of one SAELens training step ('topk' with k active, or 'standard' with L1)."""
    device = str(pool[0].device)
    if architecture == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=width, k=k, device=device))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=width, device=device))
    batches = itertools.cycle(pool)
    config = SAETrainerConfig(
        total_training_samples=10**9, train_batch_size_samples=pool[0].shape[0], device=device, lr_end=3e-4,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(config, sae, data_provider=batches)
    return median_seconds(lambda: trainer._train_step(sae, next(batches)), repeats)
