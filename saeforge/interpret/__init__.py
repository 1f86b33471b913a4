"""saeforge.interpret"""
