"""Shared test fixtures. Tests run on 2 CPU cores: keep models tiny and inputs small."""

import os
from pathlib import Path

import pytest
import torch

# 2 threads on the 2-core CI machine; OMP_NUM_THREADS=1 runs the suite on the other reduction order (another CPU's
# kernels reduce in other orders too: every learning-outcome test must pass both ways).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))

# The tiny synthetic dataset every layer's tests share (written once per session; a few seconds).
SYNTH_SMALL = dict(num_classes=5, train_per_class=3, val_per_class=2, num_frames=20, height=48, width=64,
                   images_per_class=4, image_size=48)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a small synthetic dataset (``videoconvmae.data.synth`` layout): 5 motion classes, 3 train +
    2 val clips per class, 20 frames of 48x64, in DIR/k400 (H.264 mp4, CSV + list), DIR/ssv2 (VP9 webm,
    JSON + list) and DIR/imagenet/{train,val}/<wnid>/*.JPEG (4 train / 2 val images per class)."""
    from videoconvmae.data.synth import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, **SYNTH_SMALL)
