"""Running a job: the one-process run and its settings, split, twin, report, estimate and progress; data sets, checkpoints, the exported model; a dask cluster's code."""
