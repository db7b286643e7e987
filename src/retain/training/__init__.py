"""Fine-tuning: how rows become batches (and, with issue 5, the guarded trainer)."""
