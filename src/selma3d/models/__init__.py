"""selma3d.models"""
