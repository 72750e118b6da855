"""Training engine: pretraining, finetuning and linear probing loops; checkpoints; distributed."""

# Every engine module may import timm; the shim must run before the first timm / torchvision import.
from videoconvmae import compat  # noqa: F401
