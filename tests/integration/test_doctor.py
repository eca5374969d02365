"""``m3edge doctor`` against real peers: a dcmtk storescp that answers, a port where nothing listens, a broker down,
and a DICOM node whose receiving processes are all dead (issue 13 point 3: doctor says not ready)."""

import os
import subprocess
import sys
import time

import pytest

from dicom_node.scp.status import NodeStatus, NodeStatusFile
from service.db.migrate import upgrade_database
from tests.conftest import require_tool
from tests.support.dcmtk import dcmtk_env
from tests.support.polling import wait_for
from tests.support.ports import free_port

CLI = [sys.executable, "-c", "from service.cli.main import main; main()"]


def doctor(env):
    return subprocess.run([*CLI, "doctor"], capture_output=True, text=True, env=env, timeout=120)


def lines_by_check(output):
    return {line.split()[1]: line.split()[0] for line in output.splitlines() if line and line.split()[0] in {"ok", "warn", "FAIL"}}


def test_doctor_reports_each_check_and_fails_on_a_dead_destination(tmp_path):
    storescp = require_tool("storescp")
    home = tmp_path / "home"
    upgrade_database(f"sqlite:///{home / 'm3edge.db'}")
    up, down = free_port(), free_port()
    peer = subprocess.Popen([storescp, "-aet", "PACS", str(up)], env=dcmtk_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3EDGE_")}
    env.update(M3EDGE_HOME=str(home), M3EDGE_DESTINATIONS=f"PACS@127.0.0.1:{up}")
    try:
        healthy = wait_for(lambda: (r := doctor(env)).returncode == 0 and r, timeout=30, interval=0.5,
                           message="doctor never passed with storescp up")
        checks = lines_by_check(healthy.stdout)
        assert checks["database"] == checks["broker"] == checks["spool"] == checks["configuration"] == "ok"
        assert checks["C-ECHO"] == "ok" and f"PACS@127.0.0.1:{up}" in healthy.stdout
        assert checks["models"] == "warn"  # nothing installed in this HOME
        assert checks["DICOM"] == "warn"  # no node publishes beside this HOME

        # A node whose two receiving processes were both killed publishes 0 ready (as in tests/security's kill -9
        # test): doctor must say the node does not accept, not only /readyz and the container check.
        NodeStatusFile(home / "run" / "dicom-node.json").write(NodeStatus(
            pid=os.getpid(), updated_at=time.time() + 60, receivers=2, receivers_ready=0, receiver_deaths=2))
        env["M3EDGE_DESTINATIONS"] += f",DOWN@127.0.0.1:{down}"
        env["M3EDGE_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"
        failing = doctor(env)
        assert failing.returncode == 1
        assert f"FAIL  C-ECHO DOWN@127.0.0.1:{down}" in failing.stdout
        assert lines_by_check(failing.stdout)["broker"] == "FAIL"
        assert "FAIL  DICOM node" in failing.stdout
        assert "none of the 2 receiving process(es) is accepting associations (2 died" in failing.stdout
    finally:
        peer.terminate()
        peer.wait(timeout=10)


@pytest.mark.slow
def test_doctor_reads_the_yaml_file_serve_reads_and_the_environment_over_it(tmp_path):
    home = tmp_path / "home"
    upgrade_database(f"sqlite:///{home / 'm3edge.db'}")
    config = tmp_path / "m3edge.yaml"
    config.write_text(f"home: {home}\ndicom_ae_title: FROMYAML\ndicom_allowed_aes: [CT01]\ndicom_port: 11999\n"
                      "stage_time_limits: {expert: {hard: 3600}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3EDGE_")}
    env.update(M3EDGE_CONFIG=str(config), M3EDGE_DICOM_PORT="12001")
    result = doctor(env)
    configuration = next(line for line in result.stdout.splitlines() if line.split()[1:2] == ["configuration"])
    assert configuration.split()[0] == "ok", result.stdout
    assert "AE FROMYAML on 0.0.0.0:12001; access: CT01" in configuration  # port: the environment wins
    assert f"HOME {home}" in configuration and f"M3EDGE_CONFIG={config}" in configuration
    assert lines_by_check(result.stdout)["database"] == "ok"  # the database in the YAML's HOME
