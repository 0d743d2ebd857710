"""Sharing models in other tools' formats (BioImage Model Zoo)."""
