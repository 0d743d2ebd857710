"""selma3d.data"""
