"""saeforge.steer"""
