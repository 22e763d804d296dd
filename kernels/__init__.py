"""Reusable Triton kernels for ViT/MAE training (imports torch and triton only, never lensperf).

Not built yet: random_masking, unshuffle and attention arrive with the kernels issue.
"""
