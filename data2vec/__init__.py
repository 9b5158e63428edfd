"""data2vec self-supervised pretraining in JAX/Flax NNX."""
