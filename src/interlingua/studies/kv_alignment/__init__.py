"""Study 2: K-V cache alignment across a pool of models (Dery et al.): pool, translator training, evaluation."""
