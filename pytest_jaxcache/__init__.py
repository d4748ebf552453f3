"""pytest-jaxcache: share JAX's persistent compilation cache across test runs,
xdist workers and CI jobs, and account compile time test by test."""

__version__ = "0.1.0"
