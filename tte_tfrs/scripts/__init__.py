"""absl-flag console scripts; the only place flags exist."""
