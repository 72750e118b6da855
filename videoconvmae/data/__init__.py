"""Data layer: decoders, annotation formats, clip sampling, augmentation, synthetic dataset."""
