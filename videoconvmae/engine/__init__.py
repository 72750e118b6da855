"""Training engine: pretraining, finetuning and linear probing loops; checkpoints; distributed.

Importing the package loads nothing heavy (``engine.config`` is read by every command, ``--help`` included);
the modules that import timm load the torchvision shim first themselves."""
