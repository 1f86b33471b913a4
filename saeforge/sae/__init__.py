"""saeforge.sae"""
