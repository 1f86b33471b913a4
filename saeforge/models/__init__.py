"""saeforge.models"""
