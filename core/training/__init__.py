"""Training: datasets (generated, bundled, the paper's originals, explicit downloads), the
autoencoders, the optimizers built on the engine (natural-gradient and first-order), and the
training run that drives them step by step (cancellable, with live records).
"""
