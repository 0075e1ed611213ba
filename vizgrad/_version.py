"""vizgrad's version, in a module of its own so ``vizgrad --version`` needs neither torch nor numpy."""

__version__ = "0.1.0"
