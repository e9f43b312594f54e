"""Where X (and the ground truth, when known) comes from."""

from sparsegap.data.dictionaries import coherence
from sparsegap.data.synthetic import SyntheticData, SyntheticStream, make_streamed, make_synthetic

__all__ = ["SyntheticData", "SyntheticStream", "coherence", "make_streamed", "make_synthetic"]
