"""Running a run: the pipeline, its stage workers, smoke runs, reuse across runs, the lock, ranks."""
