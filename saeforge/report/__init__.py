"""saeforge.report"""
