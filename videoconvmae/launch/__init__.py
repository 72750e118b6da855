"""Launching on Slurm through submitit. Nothing else in the package imports this layer."""
