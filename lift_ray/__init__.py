"""lift-ray: absorb long documents into adapters (LIFT, arXiv 2502.14644) and answer with them."""

__version__ = "0.1.0"

from lift_ray.config import (  # noqa: E402
    AdapterConfig,
    InferenceConfig,
    LiftConfig,
    LoraAdapterConfig,
    ModelSpec,
    RetrievalConfig,
    SegmentConfig,
    StoreConfig,
    TrainConfig,
)
from lift_ray.store import AdapterStore  # noqa: E402

__all__ = [
    "AdapterConfig",
    "AdapterStore",
    "InferenceConfig",
    "LiftConfig",
    "LiftEngine",
    "LoraAdapterConfig",
    "ModelSpec",
    "RetrievalConfig",
    "SegmentConfig",
    "StoreConfig",
    "TrainConfig",
    "__version__",
]


def __getattr__(name):
    # The engine pulls in torch and transformers; import it only when asked for.
    if name == "LiftEngine":
        from lift_ray.infer import LiftEngine

        return LiftEngine
    raise AttributeError(name)
