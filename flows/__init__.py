"""Prefect flows: thin orchestration over medseg functions."""
