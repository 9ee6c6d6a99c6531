"""The KubeRay manifest stays runnable: its entrypoint parses as a lift-ray command with a valid config,
and the cluster it asks for has the GPUs and CPUs the workers reserve."""

import shlex
from pathlib import Path

import yaml

from lift_ray.cli import _config, build_parser

ROOT = Path(__file__).resolve().parents[1]
IMAGE_ROOT = "/opt/lift-ray"  # where deploy/Dockerfile puts the repository


def _quantity(value: str) -> float:
    return float(value[:-1]) / 1000 if str(value).endswith("m") else float(value)


def test_rayjob_bulk_manifest_runs_a_valid_lift_ray_bulk_command():
    job = yaml.safe_load((ROOT / "deploy/kuberay/rayjob-bulk.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["lift-ray", "bulk"]
    args = build_parser().parse_args(argv[1:])
    assert args.config.startswith(IMAGE_ROOT + "/")
    args.config = str(ROOT / args.config[len(IMAGE_ROOT) + 1 :])
    cfg = _config(args)  # the YAML exists and validates together with the flags
    assert cfg.store.uri.startswith("s3://") and args.input.startswith("s3://")

    cluster = job["spec"]["rayClusterSpec"]
    groups = cluster["workerGroupSpecs"]
    gpus = sum(g["replicas"] * _quantity(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", "0")) for g in groups)
    cpus = sum(g["replicas"] * _quantity(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]) for g in groups)
    assert gpus >= cfg.bulk.workers * cfg.bulk.gpus_per_worker, "the workers reserve more GPUs than the cluster has"
    assert cpus >= cfg.bulk.workers * cfg.bulk.cpus_per_worker
    images = {c["image"] for g in [cluster["headGroupSpec"], *groups] for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1, "head and workers must run the same image"
    assert "COPY --chown=ray:users deploy ./deploy" in (ROOT / "deploy/Dockerfile").read_text()


def _serve_configs():
    from ray.serve.schema import ServeDeploySchema

    local = yaml.safe_load((ROOT / "deploy/serve/lift-ray-serve.yaml").read_text())
    service = yaml.safe_load((ROOT / "deploy/kuberay/rayservice.yaml").read_text())
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    return [(name, ServeDeploySchema.model_validate(cfg), cfg) for name, cfg in (("serve", local), ("rayservice", embedded))]


def test_serve_configs_validate_against_serve_schema_and_serve_config():
    from lift_ray.config import ServeConfig

    for name, schema, raw in _serve_configs():
        [app] = schema.applications
        assert app.import_path == "lift_ray.serve:app_builder", name
        args = ServeConfig.model_validate(app.args)  # every arg is a ServeConfig field
        assert args.adapters_per_replica >= 1
        if name == "serve":
            assert raw["http_options"]["host"] == "127.0.0.1", "Serve's YAML default would bind 0.0.0.0"
        else:
            config = args.config
            assert config.startswith(IMAGE_ROOT + "/") and (ROOT / config[len(IMAGE_ROOT) + 1 :]).is_file()


def test_rayservice_cluster_holds_the_replicas_and_the_absorber():
    service = yaml.safe_load((ROOT / "deploy/kuberay/rayservice.yaml").read_text())
    args = _serve_configs()[1][1].applications[0].args
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpus = sum(g["replicas"] * _quantity(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", "0")) for g in groups)
    assert gpus >= args["replicas"] * args["gpus_per_replica"] + args.get("absorb_gpus", 0)
