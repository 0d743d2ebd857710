"""selma3d.inference"""
