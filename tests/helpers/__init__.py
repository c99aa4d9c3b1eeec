"""Plain modules the tests import: servers and stacks started for real, spec builders, a recording
publisher, a model registry writer. conftest.py files hold only the fixtures that wrap them."""
