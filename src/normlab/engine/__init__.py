"""One run: its config, the SGD step, optimizer and checkpoint, evaluation, its folder; graphed and fused steps."""
