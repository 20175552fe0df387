"""interlingua: cross-model latent communication as a reproducible pipeline."""

__version__ = "0.1.0"
