"""saeforge.text"""
