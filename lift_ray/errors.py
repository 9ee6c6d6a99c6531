"""The errors that mean "bad input" (reported as one line, exit 2) rather than a bug."""

from lift_ray.text import DocumentError
from lift_ray.adapters.base import AdapterError
from lift_ray.config import ConfigError
from lift_ray.evaluate.data import EvalError
from lift_ray.infer import QuestionError
from lift_ray.model import ModelLoadError
from lift_ray.niah import NiahError
from lift_ray.store import StoreError

USER_ERRORS = (AdapterError, ConfigError, DocumentError, EvalError, ModelLoadError, NiahError, QuestionError, StoreError)
