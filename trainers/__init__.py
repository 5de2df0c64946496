"""Everything that touches tensors. Pure PyTorch: never imports ray, wandb or orchestrator."""
