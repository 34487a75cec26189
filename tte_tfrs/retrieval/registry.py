"""One registry from backend name to class."""

from tte_tfrs.errors import ConfigError
from tte_tfrs.retrieval import milvus_backend, scann_backend
from tte_tfrs.retrieval.exact import ExactBackend
from tte_tfrs.retrieval.faiss_backends import HnswBackend, IvfPqBackend

BACKENDS = {cls.name: cls for cls in (IvfPqBackend, scann_backend.ScannBackend, HnswBackend,
                                      milvus_backend.MilvusBackend, ExactBackend)}
DEFAULT_BACKEND = IvfPqBackend.name
# Optional backends: name -> (the import that must have worked, the message saying how to install it)
OPTIONAL = {"scann": (lambda: scann_backend.scann_ops_pybind, scann_backend.INSTALL_HINT),
            "milvus": (lambda: milvus_backend.MilvusClient, milvus_backend.INSTALL_HINT)}


def installed_backends():
    """Names of the backends whose libraries are importable here."""
    return [name for name in BACKENDS if name not in OPTIONAL or OPTIONAL[name][0]() is not None]


def get_backend(name):
    """The backend class for `name`.

    Raises:
      ConfigError: unknown name, or an optional backend asked for but not installed (with the pip
        command).
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}",
                          field="backend")
    if name in OPTIONAL and OPTIONAL[name][0]() is None:
        raise ConfigError(OPTIONAL[name][1], field="backend")
    return BACKENDS[name]
