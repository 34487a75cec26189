"""One registry from backend name to class."""

from tte_tfrs.errors import ConfigError
from tte_tfrs.retrieval import scann_backend
from tte_tfrs.retrieval.exact import ExactBackend
from tte_tfrs.retrieval.faiss_backends import HnswBackend, IvfPqBackend

BACKENDS = {cls.name: cls for cls in (IvfPqBackend, scann_backend.ScannBackend, HnswBackend,
                                      ExactBackend)}
DEFAULT_BACKEND = IvfPqBackend.name


def installed_backends():
    """Names of the backends whose libraries are importable here."""
    return [name for name in BACKENDS
            if name != "scann" or scann_backend.scann_ops_pybind is not None]


def get_backend(name):
    """The backend class for `name`.

    Raises:
      ConfigError: unknown name, or ScaNN asked for but not installed (with the pip command).
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "scann" and scann_backend.scann_ops_pybind is None:
        raise ConfigError(scann_backend.INSTALL_HINT)
    return BACKENDS[name]
