"""The Ray Serve application (issue 12): ``serve run lift_ray.serve:app_builder store=... model=...``.

Imported only by the ``serve`` verb and by Serve itself; the engine (:mod:`lift_ray`) never imports Ray.
"""

from lift_ray.config import ServeConfig


def app_builder(args: ServeConfig):
    """Application builder for ``serve run`` and Serve config files (``import_path: lift_ray.serve:app_builder``)."""
    from lift_ray.serve.app import build_app

    return build_app(args)


def build_app(args: ServeConfig, engine_cls: type | None = None):
    from lift_ray.serve.app import build_app as _build

    return _build(args, engine_cls=engine_cls)


__all__ = ["ServeConfig", "app_builder", "build_app"]
