"""saeforge.train"""
