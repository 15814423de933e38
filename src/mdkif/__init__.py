"""MDKIF."""
