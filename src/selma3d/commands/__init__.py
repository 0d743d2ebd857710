"""selma3d.commands"""
