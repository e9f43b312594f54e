"""Where X (and the ground truth, when known) comes from."""

from sparsegap.data.synthetic import SyntheticData, make_synthetic

__all__ = ["SyntheticData", "make_synthetic"]
