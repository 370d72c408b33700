"""Running a job: data sets, checkpoints and the run directory, the exported model."""
