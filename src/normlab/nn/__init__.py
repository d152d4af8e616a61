"""What a model is made of: the normalizations (one registry) and normlab's Net."""
