"""Analyses the binarization passes share; they read the IR and change nothing."""
