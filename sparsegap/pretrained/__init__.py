"""Trained SAEs from SAELens, sparsify and sparsegap: load, measure their amortisation gap
(``python -m sparsegap.pretrained``), export sparsegap's to the SAELens layout."""
