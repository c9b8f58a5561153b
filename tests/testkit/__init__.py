"""Helpers shared by test modules (plain functions and classes; fixtures live in the
conftest files). ``tests/conftest.py`` puts ``tests/`` on ``sys.path``, so a test module
imports them as ``from testkit.<module> import ...``."""
