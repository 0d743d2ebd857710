"""selma3d.io"""
