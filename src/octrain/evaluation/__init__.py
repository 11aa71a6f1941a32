"""Evaluation: does the character hold?"""
