"""saeforge.activations"""
