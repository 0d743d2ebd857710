"""Small shared helpers with no domain knowledge: atomic file writes, resumable progress journals,
z,y,x triples, LR schedules.

Library code and the commands use these instead of writing their own copies.
"""
