"""Static checks of docker-compose.yml against the Dockerfiles, the CLI and the Settings fields.

``check_compose`` returns a list of problems, so tests can feed it deliberately broken copies.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from dockerfile_checks import (
    ROOT,
    SERVICE_VARS,
    Dockerfile,
    base_images,
    healthz_port,
    image_problems,
    parse_dockerfile,
    port_of_command,
)

RECDISTILL_SERVICES = ("migrate", "api", "worker", "worker-cpu")
WORKERS = ("worker", "worker-cpu")
# Variables the official postgres/redis images read.
IMAGE_VARS = {"postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}, "redis": set()}
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")

# A command checker: (argv, where) -> problems (see test_entrypoints.command_problems).
CommandCheck = Callable[[list[str], str], list[str]]


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(k) + _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def interpolated_vars(compose: dict) -> set[str]:
    """Names of the ``${VAR}`` / ``${VAR:-default}`` values compose substitutes from the shell or .env."""
    return {m.group(1) for text in _strings(compose) for m in _INTERPOLATION.finditer(text)}


def _argv(command: object) -> list[str]:
    if isinstance(command, list):
        return [str(c) for c in command]
    return str(command or "").split()


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _depends(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _mounts(service: dict) -> dict[str, str]:
    """Named volume -> container path, from the short ``name:/path[:mode]`` or the long syntax."""
    mounts = {}
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            mounts[str(vol.get("source"))] = str(vol.get("target"))
        else:
            source, _, rest = str(vol).partition(":")
            mounts[source] = rest.split(":")[0]
    return mounts


def _gpu_reserved(service: dict) -> bool:
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get(
        "devices"
    ) or []
    return any(
        d.get("driver") == "nvidia"
        and "gpu" in (d.get("capabilities") or [])
        and (d.get("count") or d.get("device_ids"))
        for d in devices
    )


def _build_problems(name: str, service: dict, root: Path) -> tuple[list[str], Dockerfile | None]:
    build = service.get("build")
    if build is None:
        if "image" not in service:
            return [f"service {name}: neither image nor build"], None
        return image_problems(str(service["image"]), f"service {name}"), None
    if isinstance(build, str):
        build = {"context": build}
    context = root / str(build.get("context", "."))
    problems = []
    if not context.is_dir():
        return [f"service {name}: build context {build.get('context')!r} does not exist"], None
    dockerfile = context / str(build.get("dockerfile", "Dockerfile"))
    if not dockerfile.is_file():
        return [f"service {name}: Dockerfile {build.get('dockerfile')!r} does not exist"], None
    df = parse_dockerfile(dockerfile.read_text(encoding="utf-8"))
    args = {str(k): str(v) for k, v in (build.get("args") or {}).items()}
    for ref in base_images(df, args):
        problems += image_problems(ref, f"service {name} base image")
    if "image" in service:
        problems += image_problems(str(service["image"]), f"service {name}")
    return problems, df


def check_compose(
    compose: dict,
    *,
    settings_env: set[str],
    documented_env: set[str],
    command_check: CommandCheck,
    root: Path = ROOT,
) -> list[str]:
    """Every problem found in a parsed docker-compose.yml."""
    services: dict[str, dict] = compose.get("services") or {}
    problems: list[str] = []
    for required in ("postgres", "redis", *RECDISTILL_SERVICES):
        if required not in services:
            problems.append(f"service {required} is missing")
    dockerfiles: dict[str, Dockerfile] = {}
    for name, service in services.items():
        found, df = _build_problems(name, service, root)
        problems += found
        if df is not None:
            dockerfiles[name] = df
        if name in ("postgres", "redis", "api") and not (service.get("healthcheck") or {}).get("test"):
            problems.append(f"service {name}: no healthcheck")
        allowed = settings_env | SERVICE_VARS if name in RECDISTILL_SERVICES else IMAGE_VARS.get(name, set())
        for key in _environment(service):
            if key not in allowed:
                problems.append(
                    f"service {name}: environment variable {key} is not a Settings field or known variable"
                )
        if name in RECDISTILL_SERVICES:
            env_files = service.get("env_file") or []
            env_files = [env_files] if isinstance(env_files, str | dict) else env_files
            paths = [f if isinstance(f, str) else f.get("path") for f in env_files]
            if ".env" not in paths:
                problems.append(f"service {name}: settings are not read from .env (env_file)")
            argv = _argv(service.get("command")) or _argv(_cmd_of(dockerfiles.get(name)))
            problems += command_check(argv, f"service {name} command")
    for var in sorted(interpolated_vars(compose) - documented_env):
        problems.append(f"${{{var}}} is used in docker-compose.yml but not documented in .env.example")
    problems += _topology_problems(services, dockerfiles, compose)
    return problems


def _cmd_of(df: Dockerfile | None) -> list[str]:
    cmd = df.last("CMD") if df else None
    return (cmd.exec_form() or []) if cmd else []


def _topology_problems(
    services: dict[str, dict], dockerfiles: dict[str, Dockerfile], compose: dict
) -> list[str]:
    problems: list[str] = []
    want = {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    for name in ("api", *WORKERS):
        deps = _depends(services.get(name, {}))
        for dep, condition in want.items():
            if deps.get(dep) != condition:
                problems.append(
                    f"service {name}: depends_on {dep} must have condition {condition} (has {deps.get(dep)})"
                )
    migrate = services.get("migrate", {})
    if _depends(migrate).get("postgres") != "service_healthy":
        problems.append("service migrate: depends_on postgres must have condition service_healthy")
    if str(migrate.get("restart", "no")) not in ("no", "on-failure"):
        problems.append("service migrate: a one-shot service must not restart (restart: 'no')")
    if not _gpu_reserved(services.get("worker", {})):
        problems.append("service worker: no NVIDIA GPU reservation (deploy.resources.reservations.devices)")
    cpu = services.get("worker-cpu", {})
    if "cpu" not in (cpu.get("profiles") or []):
        problems.append("service worker-cpu: not under the 'cpu' profile")
    if _gpu_reserved(cpu):
        problems.append("service worker-cpu: reserves a GPU")
    problems += _port_problems(services.get("api", {}), dockerfiles.get("api"))
    problems += _volume_problems(services, dockerfiles, compose)
    return problems


def _port_problems(api: dict, df: Dockerfile | None) -> list[str]:
    problems = []
    container_ports = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in api.get("ports") or []}
    exposed = {int(p.split("/")[0]) for ins in (df.all("EXPOSE") if df else []) for p in ins.args.split()}
    argv = _argv(api.get("command")) or _cmd_of(df)
    health = " ".join(_argv((api.get("healthcheck") or {}).get("test")))
    ports = {
        "compose ports": container_ports,
        "Dockerfile EXPOSE": exposed,
        "command --port": {port_of_command(argv)},
    }
    ports["healthcheck /healthz"] = {healthz_port(health)}
    distinct = {p for group in ports.values() for p in group}
    if len(distinct) != 1 or None in distinct:
        problems.append(f"service api: ports disagree: {ports}")
    return problems


def _volume_problems(
    services: dict[str, dict], dockerfiles: dict[str, Dockerfile], compose: dict
) -> list[str]:
    problems = []
    declared = set((compose.get("volumes") or {}).keys())
    targets = {}
    for name in ("api", *WORKERS):
        service = services.get(name, {})
        env = {**(dockerfiles[name].env() if name in dockerfiles else {}), **_environment(service)}
        target = _mounts(service).get("artifacts")
        if target is None:
            problems.append(f"service {name}: the artifacts volume is not mounted")
            continue
        targets[name] = target
        if env.get("ARTIFACT_DIR") != target:
            problems.append(
                f"service {name}: ARTIFACT_DIR={env.get('ARTIFACT_DIR')} but artifacts is mounted at {target}"
            )
    if len(set(targets.values())) > 1:
        problems.append(f"the artifacts volume is mounted at different paths: {targets}")
    if "artifacts" not in declared:
        problems.append("the named volume artifacts is not declared under top-level volumes")
    for name, service in services.items():
        for source in _mounts(service):
            if not source.startswith((".", "/", "~")) and source not in declared:
                problems.append(f"service {name}: volume {source} is not declared under top-level volumes")
    return problems
