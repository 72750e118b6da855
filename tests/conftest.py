"""Shared test fixtures. Tests run on 2 CPU cores: keep models tiny and inputs small."""

import torch

torch.set_num_threads(2)
