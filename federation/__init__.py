"""Bayanihan federation: what a contributor runs; no Django here."""
