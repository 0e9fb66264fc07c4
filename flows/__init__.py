"""Prefect flows: thin orchestration over medseg library functions (each step also callable without Prefect)."""
