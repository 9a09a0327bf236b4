"""Low-level tensor operations (IRN path indexing, boundary-aware random walk)."""
