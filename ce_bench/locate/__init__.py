"""Offline procedures that produce intervention artifacts (one module per method)."""
