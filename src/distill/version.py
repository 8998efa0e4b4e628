"""The package version, in a module of its own so that nothing inside distill imports the
package's face (`distill/__init__.py`, which imports everything else)."""

__version__ = "0.1.0"
