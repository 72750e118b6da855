"""Training engine: pretraining, finetuning and linear probing loops; checkpoints; distributed."""
