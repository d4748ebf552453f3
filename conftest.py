"""Root conftest: the project's own tests drive real pytest sessions via pytester."""

pytest_plugins = ["pytester"]
