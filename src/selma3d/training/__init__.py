"""selma3d.training"""
