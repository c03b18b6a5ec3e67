"""Loading and validating everything a user writes, before anything is created."""
