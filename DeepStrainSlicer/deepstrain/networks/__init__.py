"""The DeepStrain-style networks (PyTorch): centring, segmentation and motion.

None of them has per-voxel parameters: every network is fully convolutional and accepts any
in-plane size (padded internally to a multiple of its pooling factor).
"""
