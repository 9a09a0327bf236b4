"""Model selection on training data only: scratch run folders and patient-grouped cross-validation."""
