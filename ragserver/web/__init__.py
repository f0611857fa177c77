"""Blueprints: thin views over retrieve/answer."""
