"""selma3d.evaluation"""
