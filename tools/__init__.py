"""Tools on top of the library: the command line, the benchmark, the scikit-learn estimator."""
