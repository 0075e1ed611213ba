"""vizgrad's version, in a module of its own so ``vizgrad --version`` needs neither torch nor numpy."""

__all__ = ["__version__"]

__version__ = "0.1.0"
