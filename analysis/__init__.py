"""Analysis of measured gradient statistics against theory."""
