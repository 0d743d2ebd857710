"""selma3d.ssl"""
