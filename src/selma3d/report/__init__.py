"""selma3d.report"""
