"""Choices a user makes about the semantics the passes keep (no TVM needed to read them)."""

# What Sign(0) gives: "exact" keeps the float graph's 0 (a Sign that can see 0 runs as two bipolar
# halves); "plus" sends it to +1 as every BNN engine does (Larq Compute Engine, daBNN, FINN): the
# plain binary cost, and answers that differ from the float graph where a Sign sees exactly 0.
SIGN_ZERO = ("exact", "plus")
