"""PaST: Parametric Skill Transfer. The method and its mechanisms; knows nothing of Prefect."""

__version__ = "0.1.0"
