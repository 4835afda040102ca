"""Ray workers, the steady-state scheduler and the search loop."""
