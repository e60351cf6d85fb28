"""Static checks of the Dockerfiles, .dockerignore and .env.example (no Docker engine runs here).

Each checker takes parsed content and returns a list of problems, so tests can feed it broken copies.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Variables that are not Settings fields but that compose or the images read (see .env.example).
SERVICE_VARS = frozenset({"POSTGRES_PASSWORD", "WEB_CONCURRENCY"})
NON_ROOT_UID = "10001"
_VERSION_TAG = re.compile(r"^v?\d+\.\d+")
_ENTRY = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY...
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK arguments, else None."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = re.sub(r"^(--\S+\s+)*CMD\s+", "", text)
        if not text.startswith("["):
            return None
        value = json.loads(text)
        return [str(v) for v in value]


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    arg_defaults: dict[str, str] = field(default_factory=dict)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV values (``KEY=value`` pairs), last one wins."""
        values: dict[str, str] = {}
        for ins in self.all("ENV"):
            for token in shlex.split(ins.args):
                if "=" in token:
                    key, _, value = token.partition("=")
                    values[key] = value
        return values


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with continuation lines joined and comment lines dropped, plus ARG defaults."""
    instructions: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comments inside a continued instruction are dropped
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        joined = " ".join(part for part in buf if part)
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buf = []
    if buf:
        raise ValueError(f"line {start}: instruction ends with a dangling line continuation")
    defaults: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            key, _, value = ins.args.partition("=")
            defaults[key.strip()] = value.strip().strip('"')
    return Dockerfile(instructions, defaults)


def image_problems(ref: str, where: str) -> list[str]:
    """A base or service image must name an explicit version tag (or a digest): never latest or none."""
    if "@sha256:" in ref:
        return []
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return [f"{where}: image {ref!r} has no tag (pin a version tag)"]
    tag = last.split(":", 1)[1]
    if tag == "latest" or not _VERSION_TAG.match(tag):
        return [f"{where}: image {ref!r} is not pinned to a version tag"]
    return []


def substitute(text: str, values: dict[str, str]) -> str:
    """Expand ``${NAME}`` / ``$NAME`` from ``values`` (Dockerfile ARG semantics, no defaults syntax)."""
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def base_images(df: Dockerfile, build_args: dict[str, str] | None = None) -> list[str]:
    """The resolved image of each FROM (build stages referenced by name are skipped)."""
    values = {**df.arg_defaults, **(build_args or {})}
    stages: set[str] = set()
    images = []
    for ins in df.all("FROM"):
        parts = [p for p in ins.args.split() if not p.startswith("--")]
        ref = substitute(parts[0], values)
        if len(parts) >= 3 and parts[1].upper() == "AS":
            stages.add(parts[2].lower())
        if ref.lower() not in stages:
            images.append(ref)
    return images


def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, with Docker's root-anchored glob semantics."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif glob[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif glob[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(glob[i]), i + 1
        patterns.append((negated, re.compile(regex + r"\Z")))
    return patterns


def is_ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether ``path`` (relative to the context) is left out of the build context."""
    parts = Path(path).as_posix().strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, regex in patterns:
        if any(regex.match(p) for p in prefixes):
            ignored = not negated
    return ignored


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def copy_sources(df: Dockerfile) -> list[tuple[str, int]]:
    """(source path, line) of each COPY/ADD from the build context (not ``--from`` other stages)."""
    sources = []
    for ins in df.all("COPY") + df.all("ADD"):
        if "--from=" in ins.args:
            continue
        parts = [p for p in shlex.split(ins.args) if not p.startswith("--")]
        sources += [(src, ins.line) for src in parts[:-1]]
    return sources


def pip_installs(df: Dockerfile) -> list[str]:
    """Each ``pip install ...`` command of every RUN (shell commands split on &&, ||, ; and |)."""
    commands = [c.strip() for ins in df.all("RUN") for c in re.split(r"&&|\|\||;|\|", ins.args)]
    return [c for c in commands if "pip install" in c]


def shell_problems(df: Dockerfile, where: str) -> list[str]:
    """Each shell-form RUN must parse as POSIX sh (``sh -n``): no unbalanced quotes, parens or if/fi."""
    problems = []
    for ins in df.all("RUN"):
        if ins.args.startswith("["):
            continue
        done = subprocess.run(["sh", "-n", "-c", ins.args], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            problems.append(f"{where} line {ins.line}: RUN is not valid sh: {done.stderr.strip()}")
    return problems


def check_dockerfile(
    df: Dockerfile,
    role: str,
    *,
    root: Path = ROOT,
    ignore_text: str | None = None,
    project: dict | None = None,
) -> list[str]:
    """Problems of the ``role`` ("api" or "worker") image's Dockerfile."""
    project = project if project is not None else pyproject()
    ignore = dockerignore_patterns(
        ignore_text if ignore_text is not None else (root / ".dockerignore").read_text(encoding="utf-8")
    )
    problems = shell_problems(df, f"{role} Dockerfile")
    for ref in base_images(df):
        problems += image_problems(ref, f"{role} Dockerfile FROM")
    user = df.last("USER")
    if user is None:
        problems.append(f"{role} Dockerfile: no USER (the image would run as root)")
    elif user.args.split(":")[0] in ("root", "0"):
        problems.append(f"{role} Dockerfile line {user.line}: final USER is root")
    elif user.args.split(":")[0] != NON_ROOT_UID:
        problems.append(
            f"{role} Dockerfile: USER {user.args} differs from uid {NON_ROOT_UID} shared by both images"
        )
    copied = {src.rstrip("/").removeprefix("./") for src, _ in copy_sources(df)}
    for src, line in copy_sources(df):
        if not (root / src).exists():
            problems.append(f"{role} Dockerfile line {line}: COPY source {src!r} does not exist")
        elif is_ignored(src, ignore):
            problems.append(
                f"{role} Dockerfile line {line}: COPY source {src!r} is excluded by .dockerignore"
            )
    needed = ["pyproject.toml", project["project"].get("readme", "README.md")]
    needed += [
        p.rstrip("*").rstrip(".") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    for path in needed:
        if path not in copied:
            problems.append(
                f"{role} Dockerfile: {path!r} is not copied into the image (pip install . needs it)"
            )
    installs = " ".join(pip_installs(df))
    if "pip install" not in installs:
        problems.append(f"{role} Dockerfile: no `pip install` of the project")
    cmd = df.last("CMD")
    argv = cmd.exec_form() if cmd else None
    if argv is None:
        problems.append(f"{role} Dockerfile: CMD missing or not in exec (JSON) form")
    if role == "api":
        problems += _api_problems(df, installs, argv or [])
    else:
        problems += _worker_problems(df, installs, argv or [], project)
    return problems


def port_of_command(argv: list[str]) -> int | None:
    """The ``--port`` value of a server command line."""
    for i, token in enumerate(argv):
        if token == "--port" and i + 1 < len(argv):
            return int(argv[i + 1])
        if token.startswith("--port="):
            return int(token.split("=", 1)[1])
    return None


def healthz_port(command: str) -> int | None:
    """The port of the ``http://127.0.0.1:PORT/healthz`` URL a healthcheck command fetches."""
    match = re.search(r"https?://(?:127\.0\.0\.1|localhost):(\d+)/healthz", command)
    return int(match.group(1)) if match else None


def _api_problems(df: Dockerfile, installs: str, argv: list[str]) -> list[str]:
    problems = []
    if re.search(r"\[[^\]]*\b(train|gpu)\b", installs) or re.search(r"\btorch\b", installs):
        problems.append(
            "api Dockerfile: installs torch or the train/gpu extra (the API image must stay slim)"
        )
    exposed = [int(p.split("/")[0]) for ins in df.all("EXPOSE") for p in ins.args.split()]
    if len(exposed) != 1:
        problems.append(f"api Dockerfile: expected exactly one EXPOSE port, found {exposed}")
    if argv[:3] != ["python", "-m", "api.server"]:
        problems.append(f"api Dockerfile: CMD {argv} does not run `python -m api.server`")
    health = df.last("HEALTHCHECK")
    if health is None:
        problems.append("api Dockerfile: no HEALTHCHECK")
    else:
        if "curl" in health.args or "wget" in health.args:
            problems.append("api Dockerfile: HEALTHCHECK uses curl/wget, which the slim image lacks")
        ports = {port_of_command(argv), healthz_port(health.args), *exposed[:1]}
        if len(ports) != 1 or None in ports:
            problems.append(
                f"api Dockerfile: EXPOSE, CMD --port and HEALTHCHECK /healthz ports disagree: {ports}"
            )
    return problems


def _worker_problems(df: Dockerfile, installs: str, argv: list[str], project: dict) -> list[str]:
    problems = []
    if argv[:2] != ["recdistill", "worker"]:
        problems.append(f"worker Dockerfile: CMD {argv} does not run `recdistill worker`")
    if "[train" not in installs:
        problems.append("worker Dockerfile: the `train` extra (torch) is not installed")
    runs = " ".join(i.args for i in df.all("RUN"))
    if ("faiss-gpu" not in runs and "gpu]" not in installs) or df.arg_defaults.get("FAISS", "gpu") != "gpu":
        problems.append("worker Dockerfile: the `gpu` extra (faiss-gpu) is not installed by default")
    train = project["project"]["optional-dependencies"]["train"]
    torch_spec = df.arg_defaults.get("TORCH_SPEC")
    if torch_spec is not None and torch_spec not in train:
        problems.append(
            f"worker Dockerfile: TORCH_SPEC {torch_spec!r} differs from pyproject's train extra {train}"
        )
    return problems


def parse_env_example(text: str) -> dict[str, bool]:
    """Variable name -> whether a comment line documents it (the line right above its entry)."""
    entries: dict[str, bool] = {}
    previous = ""
    for raw in text.splitlines():
        line = raw.strip()
        match = _ENTRY.match(line)
        if match:
            name = match.group(1)
            if name in entries:
                raise ValueError(f".env.example: {name} appears twice")
            entries[name] = previous.startswith("#") and not _ENTRY.match(previous)
        previous = line
    return entries


def check_env_example(entries: dict[str, bool], settings_env: set[str]) -> list[str]:
    """Every Settings variable documented (with a comment) and nothing unknown."""
    problems = [
        f".env.example: setting {name} is not documented" for name in sorted(settings_env - set(entries))
    ]
    for name, commented in entries.items():
        if name not in settings_env and name not in SERVICE_VARS:
            problems.append(f".env.example: {name} is neither a Settings field nor a known service variable")
        if not commented:
            problems.append(f".env.example: {name} has no comment line above it")
    return problems
