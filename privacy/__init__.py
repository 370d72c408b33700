"""What protects a row of X from the label party: noise added once to the clipped row, before step 0, with an (ε, δ) guarantee."""
