"""Slicer side of DeepStrainSlicer: adapters between :mod:`deepstrain` arrays and MRML nodes.

Nothing here imports ``qt``, ``ctk`` or ``slicer.ScriptedLoadableModule``: the logic, the MRML
adapters, the polar map and the offscreen renderer run on ``slicer-core`` alone (tests, CI) as
well as inside the Slicer application.
"""
