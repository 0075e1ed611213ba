"""Imported by uses_sibling.py: a script's own folder must be on sys.path."""

SCALE = 3.0
