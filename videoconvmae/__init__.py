"""videoconvmae: ConvMAE / VideoConvMAE pretraining, finetuning and evaluation from one code base."""

__version__ = "0.1.0"
