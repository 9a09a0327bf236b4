"""Runtime: run folders, atomic writes, checkpoints, devices."""
