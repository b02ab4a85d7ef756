"""Sub-commands of ``torchmf``, one module each (discovered by :mod:`torchmf.cli`)."""
