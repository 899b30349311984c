"""Applications on top of the library: sweeps, reports and figures, Table VII, data preprocessing."""
