"""deepstrain: myocardial strain from cine MRI (the Slicer-free engine of DeepStrainSlicer).

See :mod:`deepstrain.cine` for the array, geometry, label and displacement conventions
that every module follows.
"""
from .cine import Cine, Geometry

__version__ = "0.1.0"
__all__ = ["Cine", "Geometry", "__version__"]
