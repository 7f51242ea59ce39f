"""ired-cd: IRED (Du, Mao & Tenenbaum, ICML 2024) with contrastive-divergence energy training, in JAX."""
