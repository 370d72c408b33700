"""Two parties in two processes: the authenticated wire, its frames, id alignment and PSI, and the checked channel over TCP."""
