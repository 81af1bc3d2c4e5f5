"""kmltrace: why did a Kernel Mode Linux machine fault, double-fault or reset."""

__version__ = "0.1.0"
