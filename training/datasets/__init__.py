"""Datasets built from packages present on the machine (never downloaded at run time)."""
