"""End to end: ``trainjob submit`` of a 2-worker run whose pods really train.

The fake API server's controller runs each pod's command as a local process, with the
pod's environment from the rendered Job and its volume mounts mapped to folders in
``tmp_path``. So the manifests, the environment contract and ``cluster_from_env`` must fit
together for the model to land in the "models volume" folder.
"""

from __future__ import annotations

import json

import pytest
import yaml
from fake_kube import FakeKube

from job import cli

RUN = "tiny-e2e01"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_worker_submit_trains_through_the_manifests_and_the_model_lands_on_the_volume(
        tmp_path, shapes_data, monkeypatch, capsys):
    data_volume = tmp_path / "data-volume"
    models_volume = tmp_path / "models-volume"
    data_volume.mkdir()
    models_volume.mkdir()
    (data_volume / "shapes").symlink_to(shapes_data, target_is_directory=True)
    project = tmp_path / "project"
    project.mkdir()
    spec_path = project / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "tiny",
        # Relative to the spec's folder here; rendered under the data volume's mount.
        "data": {"train_dir": "shapes/train", "test_dir": "shapes/test",
                 "image_size": [32, 32], "val_split": 0.25, "decode_workers": 1},
        "model": {"augment": {"flip": "none"}},
        "train": {"epochs": 1, "global_batch_size": 16, "log_every_steps": 5,
                  "collective_timeout_seconds": 60},
        "output": {"dir": "/models", "checkpoint_every_steps": 4},
        "cluster": {"workers": 2, "image": "ghcr.io/example/trainjob:0.1.0", "namespace": "ml",
                    "models_volume": {"claim": "trainjob-models", "mount": "/models"},
                    "data_volume": {"claim": "trainjob-data", "mount": "/data",
                                    "read_only": True}},
    }))
    volumes = {"trainjob-models": models_volume, "trainjob-data": data_volume}
    with FakeKube(run_processes=True, volumes=volumes, namespaces=("ml",),
                  pvcs=[("ml", "trainjob-models"), ("ml", "trainjob-data")]) as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.write_kubeconfig(tmp_path / "kubeconfig",
                                                                   namespace="ml")))
        monkeypatch.delenv("TF_CONFIG", raising=False)

        code = cli.main(["submit", str(spec_path), "--run-id", RUN])
        pod_logs = fake.logs("ml")

    out, err = capsys.readouterr()
    assert code == 0, f"{out}\n{err}\n" + "\n".join(
        f"--- {name}\n" + "\n".join(lines) for name, lines in pod_logs.items())
    assert "running: 2/2 workers" in out
    assert [line for line in out.splitlines() if line.startswith("[worker 0] ")], out
    assert out.splitlines()[-1] == f"model: trainjob-models:/models/{RUN}/model.h5"
    run_dir = models_volume / RUN
    assert (run_dir / "model.h5").stat().st_size > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["run_id"], metrics["workers"], metrics["replicas"]) == (RUN, 2, 2)
    assert json.loads((run_dir / "labels.json").read_text())
    # Only the chief wrote to the shared volume: one run directory, no stray worker output.
    assert sorted(p.name for p in models_volume.iterdir() if not p.name.startswith(".")) == [RUN]
