"""Flower App for Bayanihan: thin ServerApp/ClientApp over the `federation` package."""
