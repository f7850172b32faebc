"""The run kernel: the run directory (rundir), resumable steps (steps) and the run context every command opens
(context)."""
