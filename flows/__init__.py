"""Prefect flows: thin orchestration over medseg library functions (every step also runs without Prefect)."""

__all__: list[str] = []
