"""Pipeline steps, one module each, every one a restartable ``run(cfg, run_dir, overwrite)``."""
