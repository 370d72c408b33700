"""Running a job: the one-process run and its settings, the plaintext twin, reports, the estimate and progress; data sets and their split, checkpoints, the exported model."""
