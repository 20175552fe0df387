"""Study 2: a shared K-V latent space for a pool of models (Dery et al., K-V cache alignment)."""
