"""sparsegap: measure the amortisation gap of sparse autoencoders."""

__version__ = "0.1.0"
