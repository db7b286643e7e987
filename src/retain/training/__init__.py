"""Fine-tuning: how rows become batches, the guards, and ``retain train``."""
