"""Flax NNX modules: the ViT encoder, ViTPose heads and the multi-task Sonichu model."""
