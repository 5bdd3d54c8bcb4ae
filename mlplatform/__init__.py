"""mlplatform: one Ray cluster for the whole model lifecycle.

The public API lives in each sub-package (``mlplatform.config``, ``mlplatform.datasets``,
``mlplatform.features``, ``mlplatform.training``, ``mlplatform.registry``,
``mlplatform.serving``). Importing this package does no work: no Ray, no MLflow, no files.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlplatform")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
