"""The DeepStrain-style networks (PyTorch): centring, segmentation and motion.

None of them has per-voxel parameters: every network is fully convolutional and accepts any
in-plane size (padded internally to a multiple of its pooling factor).
"""

TTA_MODES = ("ed-es", "all", "off")
"""Which frames :func:`deepstrain.inference.predict` segments with test-time flips: ED and ES (the
default), every frame, none (defined here, without torch, so that the command line can read it cheaply)."""
