"""saeforge.eval"""
