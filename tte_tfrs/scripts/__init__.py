"""The absl entry points (tte-train, tte-index, tte-recommend, tte-evaluate): each defines its own
flags, builds a config and calls one library function. The only place flags exist.
"""
