"""Choices a user makes about the semantics the passes keep, and the tolerances the passes and the
tools that read models (``summary``) share (no TVM needed to read them)."""

# What Sign(0) gives: "exact" keeps the float graph's 0 (a Sign that can see 0 runs as two bipolar
# halves); "plus" sends it to +1 as every BNN engine does (Larq Compute Engine, daBNN, FINN): the
# plain binary cost, and answers that differ from the float graph where a Sign sees exactly 0.
SIGN_ZERO = ("exact", "plus")

# A weight ``alpha * sign(W)`` computed in float32 (by an exporter, by constant folding, through a
# straight-through estimator ``alpha * sign(W) - clip(W) + clip(W)``) is a few ulp off ``±alpha``:
# the relative spread of ``|w|`` within an output channel that still counts as one scale.
SCALE_SPREAD = 2.0**-16
