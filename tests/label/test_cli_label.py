"""``medad label`` argument handling (no server started)."""

from __future__ import annotations

import argparse
import os

from medad.cli import label as cli


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers()).prog = "medad label"
    return parser.parse_args(["label", *argv])


def test_server_argv_is_loopback_offline_and_maps_options(studies_dir):
    args = _parse("--studies", str(studies_dir), "--adapters", "demo", "--thresholds", "0.2,0.4,0.6",
                  "--object-name", "Liver", "--conf", "top_k", "7")
    argv = cli.build_server_argv(args)
    assert argv[0] == "start_server"
    opt = dict(zip(argv[1::2], argv[2::2]))
    assert opt["--host"] == "127.0.0.1" and opt["--port"] == "8000"
    assert opt["--uvicorn_app"] == "medad.label.asgi:app"  # the pydicom-3 shim
    confs = [tuple(argv[i + 1:i + 3]) for i, a in enumerate(argv) if a == "--conf"]
    workspace = dict(confs)["workspace"]
    from medad.label.config import default_workspace
    from pathlib import Path

    assert workspace == default_workspace(str(studies_dir))
    # the repository's app runs as a copy in the workspace: MONAI Label's logs/, model/, bin/ never land in apps/
    assert opt["--app"] == str(Path(workspace) / "app") and (Path(workspace) / "app" / "main.py").is_file()
    assert (Path(workspace) / "app" / "main.py").read_text() == (cli.default_app_dir() / "main.py").read_text()
    assert ("zoo_source", "local") in confs and ("adapters", "demo") in confs
    assert ("thresholds", "0.2,0.4,0.6") in confs and ("object_name", "Liver") in confs and ("top_k", "7") in confs


def test_defaults_are_medad_score_s(studies_dir):
    from medad.label.config import LabelConfig

    argv = cli.build_server_argv(_parse("--studies", str(studies_dir)), copy_app=False)
    conf = {argv[i + 1]: argv[i + 2] for i, a in enumerate(argv) if a == "--conf"}
    assert "adapters" not in conf  # nothing forced on the command line ...
    assert LabelConfig.from_conf("app", conf, studies=str(studies_dir)).adapters == "demo"  # ... the demo model


def test_dryrun_checks_options(studies_dir, capsys):
    assert cli.run(_parse("--studies", str(studies_dir), "--backbone", "tiny", "--dryrun")) == 0
    assert "monailabel start_server" in capsys.readouterr().out
    assert cli.run(_parse("--studies", str(studies_dir), "--thresholds", "0.9,0.5,0.7", "--dryrun")) == 2
    assert "strictly increasing" in capsys.readouterr().err
    assert cli.run(_parse("--studies", str(studies_dir), "--conf", "no_such_option", "1", "--dryrun")) == 2
    assert "unknown option" in capsys.readouterr().err


def test_dicomweb_start_puts_a_dcmqi_stub_on_path(monkeypatch, tmp_path, capsys):
    import shutil
    import subprocess

    monkeypatch.setenv("MEDAD_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", os.environ["PATH"])
    assert cli.run(_parse("--studies", "http://127.0.0.1:9/dicom-web", "--dryrun")) == 0
    stub = shutil.which("itkimage2segimage")
    assert stub == str(tmp_path / "label_bin" / "itkimage2segimage")
    r = subprocess.run([stub], capture_output=True, text=True)
    assert r.returncode == 1 and "highdicom" in r.stderr
