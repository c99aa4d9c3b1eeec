"""Transfer learning: pretrained torchvision weights (placed, or downloaded with torchvision's hash
check from a local server), init_from, freezing, unfreeze_after, backbone_lr, and a CNN trained on
digits 0-4 that helps on 100 samples of digits 5-9."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file, save_file

from tas.core.artifact import count_parameters
from tas.core.data.builtin import load_digits
from tas.core.data.dataset import Arrays, DatasetInfo, LoadContext, Loaded
from tas.core.errors import TrainingError
from tas.core.hooks import NullHooks
from tas.core.models import ARCHS, build_model, head_name
from tas.core.optim import OPTIMIZERS, SCHEDULERS, param_groups
from tas.core.pipeline import PipelineResult, RunContext, run_pipeline
from tas.core.spec import JobSpec, ModelSpec, TrainingSpec
from tas.core.transfer import (
    PretrainedWeightsMissing,
    UnknownLayer,
    WeightsMismatch,
    apply_freeze,
    apply_init,
    freeze_problems,
    init_problems,
    load_pretrained,
    pretrained_card,
    pretrained_file,
    pretrained_normalization,
    pretrained_problems,
    safetensors_shapes,
    state_shapes,
)
from tests.helpers.pipeline import RecordingHooks

DIGITS = [str(i) for i in range(10)]
INFO10 = DatasetInfo("digits", "classification", (1, 8, 8), 10, DIGITS, kind="image")
Load = Callable[[LoadContext], Loaded]


@pytest.fixture(scope="module")
def digits() -> Arrays:
    return load_digits(LoadContext(Path("."))).train


def loader(train: Arrays, test: Arrays | None = None) -> Load:
    return lambda ctx: Loaded(Arrays(train.X.clone(), train.y.clone()), test)


def job_spec(model: dict[str, Any], training: dict[str, Any], **top: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "t",
            "dataset": {"name": "digits", "val_fraction": 0.0, **top.pop("dataset", {})},
            "model": model,
            "training": {"batch_size": 64, "optimizer": "adam", "lr": 0.01, **training},
            **top,
        }
    )


def run(
    tmp_path: Path,
    job: str,
    spec: JobSpec,
    load: Load,
    info: DatasetInfo = INFO10,
    hooks: Any = None,
    **ctx: Any,
) -> PipelineResult:
    context = RunContext(job_dir=tmp_path / job, datasets_dir=tmp_path, device="cpu", **ctx)
    return run_pipeline(spec, info, context, hooks or NullHooks(), load)


def weights(result: PipelineResult) -> dict[str, torch.Tensor]:
    return load_file(str(Path(result.model_dir or "") / "model.safetensors"))


def source_file(result: PipelineResult) -> Path:
    return Path(result.model_dir or "") / "model.safetensors"


def under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k == prefix or k.startswith(prefix + ".")}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_outputs(hooks: RecordingHooks) -> dict[str, Any]:
    return hooks.outputs("train")


CNN = {"arch": "cnn", "channels": [8, 16]}  # 0 conv, 3 conv, 7 the head (16·2·2 → classes)


# --- torchvision's pretrained weights --------------------------------------------------------------


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stand-ins for torchvision's files: state_dicts of fresh torchvision models, under torchvision's
    file names, written with torch.save as torchvision's are."""
    import torchvision

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(123)
    for arch in ("resnet18", "mobilenet_v2", "efficientnet_b0", "squeezenet1_1"):
        state = torchvision.models.get_model(arch).state_dict()
        torch.save(state, d / ARCHS[arch].weight_files[0])
    return d


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "efficientnet_b0", "squeezenet1_1"])
@pytest.mark.parametrize("channels", [1, 3])
def test_pretrained_weights_load_from_the_weights_dir(
    weights_dir: Path, arch: str, channels: int
) -> None:
    spec = ModelSpec(arch=arch, pretrained=True)
    file = weights_dir / ARCHS[arch].weight_files[0]
    theirs = torch.load(file, weights_only=True)
    torch.manual_seed(0)
    model = build_model(spec, (channels, 8, 8), 5)
    head = head_name(spec, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    report = load_pretrained(model, arch, weights_dir, head)

    ours = model.state_dict()
    first_conv = {
        "resnet18": "conv1.weight",
        "mobilenet_v2": "features.0.0.weight",
        "efficientnet_b0": "features.0.0.weight",
        "squeezenet1_1": "features.0.weight",
    }[arch]
    assert report["file"] == file.name
    assert report["head"] == "new"
    assert report["adapted_input_conv"] == (first_conv if channels != 3 else None)
    body = [k for k in ours if not k.startswith(head + ".")]
    assert report["loaded_tensors"] == len(body)
    changed = {k for k in body if not torch.equal(ours[k], before[k])}
    kernels = {k for k in body if before[k].dim() >= 2}  # BN's fresh ones and zeros stay the same
    assert kernels and kernels <= changed
    for k in body:
        if k == first_conv and channels == 1:  # grey: the RGB kernels summed
            assert torch.allclose(ours[k], theirs[k].sum(dim=1, keepdim=True))
        else:
            assert torch.equal(ours[k], theirs[k]), k
    assert same(under(ours, head), under(before, head))  # the head stays new


def test_a_grey_input_conv_answers_as_the_rgb_conv_on_a_grey_image(weights_dir: Path) -> None:
    spec = ModelSpec(arch="resnet18", pretrained=True)
    grey = build_model(spec, (1, 16, 16), 4)
    load_pretrained(grey, "resnet18", weights_dir, "fc")
    rgb = build_model(spec, (3, 16, 16), 4)
    load_pretrained(rgb, "resnet18", weights_dir, "fc")
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(grey.conv1(x), rgb.conv1(x.expand(-1, 3, -1, -1)), atol=1e-5)


def test_a_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    model = build_model(ModelSpec(arch="resnet18"), (3, 8, 8), 2)
    with pytest.raises(PretrainedWeightsMissing) as info:
        load_pretrained(model, "resnet18", tmp_path, "fc")
    msg = info.value.message
    assert str(tmp_path) in msg and "resnet18-f37072fd.pth" in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert "TAS_WEIGHTS_DIR" in msg and "TAS_ALLOW_DOWNLOAD" in msg
    with pytest.raises(PretrainedWeightsMissing, match="no weights directory is configured"):
        pretrained_file("mobilenet_v2", None)
    spec = job_spec({"arch": "resnet18", "pretrained": True}, {})
    assert pretrained_problems(spec, tmp_path) == [msg]
    assert pretrained_problems(job_spec({"arch": "resnet18"}, {}), None) == []


def test_another_fitting_weights_file_is_found_too(tmp_path: Path) -> None:
    """torchvision's DEFAULT is preferred; another entry of the same enum for the same model
    (mobilenet_v2's IMAGENET1K_V1) placed by hand is used when the DEFAULT is not there."""
    (tmp_path / "mobilenet_v2-b0353104.pth").touch()  # MobileNet_V2_Weights.IMAGENET1K_V1
    assert pretrained_file("mobilenet_v2", tmp_path).name == "mobilenet_v2-b0353104.pth"
    (tmp_path / "mobilenet_v2-7ebf99e0.pth").touch()  # IMAGENET1K_V2, the DEFAULT
    assert pretrained_file("mobilenet_v2", tmp_path).name == "mobilenet_v2-7ebf99e0.pth"


def test_a_pretrained_job_without_its_file_fails_in_train(tmp_path: Path, digits: Arrays) -> None:
    spec = job_spec({"arch": "resnet18", "pretrained": True}, {"epochs": 1})
    small = Arrays(digits.X[:40], digits.y[:40])
    with pytest.raises(TrainingError) as info:
        run(tmp_path, "j", spec, loader(small), weights_dir=tmp_path / "empty")
    err = info.value.to_error_dict()
    assert err["type"] == "PretrainedWeightsMissing" and err["stage"] == "train"
    assert "resnet18-f37072fd.pth" in err["message"] and "TAS_WEIGHTS_DIR" in err["hint"]


def test_pretrained_resnet_with_a_frozen_backbone_keeps_it_bitwise(
    tmp_path: Path, digits: Arrays, weights_dir: Path
) -> None:
    """Frozen: the weights and the BatchNorm running statistics (eval mode while the head trains)."""
    spec = job_spec(
        {"arch": "resnet18", "pretrained": True, "freeze": "backbone"},
        {"epochs": 2, "batch_size": 32},
    )
    small = Arrays(digits.X[:96], digits.y[:96])
    hooks = RecordingHooks()
    result = run(tmp_path, "r", spec, loader(small), hooks=hooks, weights_dir=weights_dir)
    theirs = torch.load(weights_dir / "resnet18-f37072fd.pth", weights_only=True)
    ours = weights(result)
    theirs["conv1.weight"] = theirs["conv1.weight"].sum(dim=1, keepdim=True)
    body = {k for k in ours if not k.startswith("fc.")}
    assert body and all(torch.equal(ours[k], theirs[k]) for k in body)
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]  # the head trains
    report = train_outputs(hooks)["transfer"]
    assert report["start"] == "pretrained" and report["head"] == "fc"
    assert report["pretrained"]["adapted_input_conv"] == "conv1.weight"
    assert report["frozen"] == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    assert report["trainable_params"] == 512 * 10 + 10
    total = sum(p.numel() for p in build_model(spec.model, (1, 8, 8), 10).parameters())
    assert report["total_params"] == total
    assert result.trainable_params == 512 * 10 + 10  # the job's counts: trainable vs total
    assert result.total_params == report["total_params"]


# --- downloading torchvision's weights (offline: a local HTTP server or a stand-in fetch) --------


class _Served:
    """A local HTTP server for one directory's files, sent in small chunks with a pause between
    them, so two downloads at once really overlap."""

    def __init__(self, root: Path) -> None:
        import http.server
        import threading

        served = self
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.requests.append(self.path)
                file = root / self.path.lstrip("/")
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for i in range(0, len(data), 1 << 16):
                    self.wfile.write(data[i : i + 1 << 16])
                    time.sleep(0.002)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served(tmp_path: Path) -> Any:
    """(server, the served file's bytes, its sha256): a resnet18-shaped state dict of random
    tensors, as torchvision's file would hold."""
    import hashlib

    import torchvision

    root = tmp_path / "served"
    root.mkdir()
    torch.manual_seed(7)
    buf = tmp_path / "state.pth"
    torch.save(torchvision.models.resnet18().state_dict(), buf)
    data = buf.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    (root / f"resnet18-{sha[:8]}.pth").write_bytes(data)
    (root / "resnet18-0badc0de.pth").write_bytes(data)  # a name whose hash it does not match
    server = _Served(root)
    yield server, data, sha
    server.close()


def test_a_download_is_hash_checked_and_kept_whole(tmp_path: Path, served: Any) -> None:
    from tas.core.transfer import download_weights

    server, data, sha = served
    dest = tmp_path / "weights"
    got = download_weights(f"{server.url}resnet18-{sha[:8]}.pth", dest)
    assert got == dest / f"resnet18-{sha[:8]}.pth" and got.read_bytes() == data
    assert sorted(p.name for p in dest.iterdir()) == [got.name]  # no partial file left
    state = torch.load(got, weights_only=True)
    assert state["fc.weight"].shape == (1000, 512)


def test_a_download_that_fails_the_hash_check_leaves_nothing(tmp_path: Path, served: Any) -> None:
    from tas.core.transfer import download_weights

    server, _, _ = served
    dest = tmp_path / "weights"
    with pytest.raises(WeightsMismatch) as info:
        download_weights(f"{server.url}resnet18-0badc0de.pth", dest)
    err = info.value.to_error_dict()
    assert err["type"] == "PretrainedWeightsUnreadable"
    assert "hash check" in err["message"] and "0badc0de" in err["message"]
    assert list(dest.iterdir()) == []
    with pytest.raises(PretrainedWeightsMissing, match="HTTPError"):
        download_weights(f"{server.url}resnet18-12345678.pth", dest)  # a 404
    assert list(dest.iterdir()) == []


def test_two_workers_downloading_at_once_never_tear_the_file(tmp_path: Path, served: Any) -> None:
    """Each download goes to its own `.partial` file and is renamed into place whole, after its
    hash check: whichever rename lands last, the file is complete and correct."""
    import hashlib
    import threading

    from tas.core.transfer import download_weights

    server, data, sha = served
    dest = tmp_path / "weights"
    url = f"{server.url}resnet18-{sha[:8]}.pth"
    errors: list[BaseException] = []
    seen: list[int] = []

    def fetch() -> None:
        try:
            download_weights(url, dest)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def watch() -> None:  # a reader that looks while both write: a file there is always whole
        while any(t.is_alive() for t in workers):
            f = dest / f"resnet18-{sha[:8]}.pth"
            if f.exists():
                seen.append(len(f.read_bytes()))

    workers = [threading.Thread(target=fetch) for _ in range(2)]
    for t in workers:
        t.start()
    watch()
    for t in workers:
        t.join()
    assert errors == []
    assert server.requests == [f"/resnet18-{sha[:8]}.pth"] * 2  # both really downloaded
    assert all(n == len(data) for n in seen)
    got = dest / f"resnet18-{sha[:8]}.pth"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == sha
    assert sorted(p.name for p in dest.iterdir()) == [got.name]


@pytest.fixture
def fake_fetch(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """torch.hub's download replaced by a copy of a made resnet18 state dict (the network is
    closed here); records the addresses asked for and checks the hash prefix passed along."""
    import torchvision

    calls: list[str] = []
    torch.manual_seed(3)
    state = torchvision.models.resnet18().state_dict()

    def download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append(url)
        assert hash_prefix == url.rsplit("-", 1)[-1].split(".")[0]  # torchvision's check is on
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return calls


def test_pretrained_downloads_once_when_allowed(
    tmp_path: Path, digits: Arrays, fake_fetch: list[str]
) -> None:
    spec = job_spec({"arch": "resnet18", "pretrained": True, "freeze": "backbone"}, {"epochs": 1})
    small = Arrays(digits.X[:40], digits.y[:40])
    wdir = tmp_path / "weights"
    hooks = RecordingHooks()
    run(tmp_path, "a", spec, loader(small), hooks=hooks, weights_dir=wdir, allow_download=True)
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert fake_fetch == [url]
    assert (wdir / "resnet18-f37072fd.pth").is_file()
    report = train_outputs(hooks)["transfer"]["pretrained"]
    assert report["weights"] == "ResNet18_Weights.IMAGENET1K_V1" and report["url"] == url
    run(tmp_path, "b", spec, loader(small), weights_dir=wdir, allow_download=True)
    assert fake_fetch == [url]  # the second job reads the file the first fetched
    with pytest.raises(TrainingError, match="downloads are off"):
        run(tmp_path, "c", spec, loader(small), weights_dir=tmp_path / "none")
    assert fake_fetch == [url]


def test_pretrained_images_get_the_weights_normalisation_recorded_in_the_card(
    tmp_path: Path, digits: Arrays, weights_dir: Path
) -> None:
    """ImageNet's mean/std, not the data's (grey: their means), applied at preprocess, kept in the
    card (so /predict applies them too) with the weights' transforms."""
    from tas.core.artifact import load_model

    spec = job_spec({"arch": "mobilenet_v2", "pretrained": True}, {"epochs": 1})
    small = Arrays(digits.X[:40], digits.y[:40])
    result = run(tmp_path, "n", spec, loader(small), weights_dir=weights_dir)
    _, card = load_model(result.model_dir or "")
    assert card.normalization is not None and card.normalization["kind"] == "per_channel"
    assert card.normalization["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert card.normalization["std"] == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    assert card.pretrained is not None
    assert card.pretrained["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V2"
    assert card.pretrained["transforms"]["crop_size"] == 224
    assert card.pretrained["transforms"]["mean"] == [0.485, 0.456, 0.406]
    assert pretrained_card(ModelSpec(arch="mobilenet_v2"), {}) is None
    # from scratch: the data's own statistics; RGB: ImageNet's three
    assert pretrained_normalization(ModelSpec(arch="mobilenet_v2"), 1) is None
    rgb = pretrained_normalization(ModelSpec(arch="mobilenet_v2", pretrained=True), 3)
    assert rgb == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_frozen_batchnorm_stays_in_eval_mode_until_released() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="resnet18"), (3, 16, 16), 3)
    frozen = apply_freeze(model, "backbone", "fc")
    model.train()
    stats = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 16, 16))
    assert torch.equal(model.bn1.running_mean, stats)
    assert not model.bn1.training and not model.layer4[1].bn2.training
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("fc."))
    assert frozen.release() and not frozen.release()
    model.train()
    model(torch.randn(4, 3, 16, 16))
    assert not torch.equal(model.bn1.running_mean, stats)
    assert all(p.requires_grad for p in model.parameters())


# --- init_from ----------------------------------------------------------------------------------


def mlp_file(path: Path, hidden: list[int], classes: int = 10) -> Path:
    model = build_model(ModelSpec(arch="mlp", hidden=hidden), (1, 8, 8), classes)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_init_problems_name_the_layer_and_both_shapes(tmp_path: Path) -> None:
    src = mlp_file(tmp_path / "w.safetensors", [32])
    assert safetensors_shapes(src)["1.weight"] == (32, 64)

    def problems(model: dict[str, Any], classes: int = 10) -> list[str]:
        spec = job_spec(model, {})
        return init_problems(spec, INFO10, classes, src)

    assert problems({"arch": "mlp", "hidden": [16]}) == [
        "layer '1.weight': this model has [16, 64], the source has [32, 64]",
        "layer '1.bias': this model has [16], the source has [32]",
    ]
    assert problems({"arch": "mlp", "hidden": [32]}) == []
    assert problems({"arch": "mlp", "hidden": [32]}, classes=3) == []  # a new head is fine
    assert problems({"arch": "mlp", "hidden": [32, 32]}) == [
        "layer '3.weight': this model has [32, 32], the source has [10, 32]",
        "layer '3.bias': this model has [32], the source has [10]",
    ]
    assert problems({"arch": "mlp", "hidden": [32], "dropout": 0.1}) == [
        "the source has layers this model lacks: '3.bias', '3.weight'"
    ]
    other = problems({"arch": "cnn", "channels": [4]})
    assert len(other) == 1 and "different arch" in other[0]
    assert "'0.weight'" in other[0] and "'1.weight'" in other[0]
    resnet = init_problems(job_spec({"arch": "resnet18"}, {}), INFO10, 10, src)
    assert "different arch" in resnet[0] and "'conv1.weight'" in resnet[0]


def test_init_problems_read_the_header_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tensor is read (the model is built on the meta device); a pickle is never unpickled."""
    src = mlp_file(tmp_path / "w.safetensors", [32])

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("weights were read")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(safetensors.torch, "load", boom)
    monkeypatch.setattr(safetensors.torch, "load_file", boom)
    started = time.perf_counter()
    assert init_problems(job_spec({"arch": "mlp", "hidden": [16]}, {}), INFO10, 10, src)
    assert init_problems(job_spec({"arch": "resnet18"}, {}), INFO10, 10, src)
    assert time.perf_counter() - started < 2.0

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Evil()))
    (msg,) = init_problems(job_spec({"arch": "mlp"}, {}), INFO10, 10, evil)
    assert "not a readable safetensors file" in msg
    assert not marker.exists()


def test_apply_init_refuses_a_misfit_and_loads_nothing(tmp_path: Path) -> None:
    src = mlp_file(tmp_path / "w.safetensors", [32])
    model = build_model(ModelSpec(arch="mlp", hidden=[16]), (1, 8, 8), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatch, match=r"layer '1.weight': this model has \[16, 64\]"):
        apply_init(model, src, "3")
    assert same(model.state_dict(), before)


def test_apply_init_loads_the_head_for_the_same_classes_only(tmp_path: Path) -> None:
    src = mlp_file(tmp_path / "w.safetensors", [32])
    theirs = load_file(str(src))
    same_classes = build_model(ModelSpec(arch="mlp", hidden=[32]), (1, 8, 8), 10)
    report = apply_init(same_classes, src, "3")
    assert report["head"] == "loaded" and report["loaded_tensors"] == 4
    assert same(same_classes.state_dict(), theirs)
    fewer = build_model(ModelSpec(arch="mlp", hidden=[32]), (1, 8, 8), 5)
    report = apply_init(fewer, src, "3")
    assert report["head"] == "new" and report["loaded_tensors"] == 2
    assert "other shapes" in report["head_reason"]
    assert len(report["sha256"]) == 64


# --- freezing through the pipeline ---------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_source(tmp_path_factory: pytest.TempPathFactory, digits: Arrays) -> Path:
    """A cnn trained one epoch on all of digits: its model directory's weights (and card)."""
    tmp = tmp_path_factory.mktemp("source")
    result = run(tmp, "src", job_spec(CNN, {"epochs": 1}), loader(digits))
    return source_file(result)


def test_freeze_backbone_trains_the_head_only(
    tmp_path: Path, digits: Arrays, digits_source: Path
) -> None:
    spec = job_spec({**CNN, "freeze": "backbone"}, {"epochs": 2})
    hooks = RecordingHooks()
    result = run(tmp_path, "ft", spec, loader(digits), hooks=hooks, init_weights=digits_source)
    src, out = load_file(str(digits_source)), weights(result)
    assert same(under(out, "0"), under(src, "0")) and same(under(out, "3"), under(src, "3"))
    assert not torch.equal(out["7.weight"], src["7.weight"])
    report = train_outputs(hooks)["transfer"]
    assert report["start"] == "init_from"
    assert report["init"]["head"] == "loaded"  # the same ten digits: the head is a start too
    assert report["frozen"] == ["0", "3"] and report["head"] == "7"
    head_params = 16 * 2 * 2 * 10 + 10
    total = head_params + (8 * 9 + 8) + (16 * 8 * 9 + 16)
    assert (report["trainable_params"], report["total_params"]) == (head_params, total)
    assert train_outputs(hooks)["parameters"] == {"trainable": head_params, "total": total}


def test_freeze_named_layers(tmp_path: Path, digits: Arrays, digits_source: Path) -> None:
    spec = job_spec({**CNN, "freeze": ["0"]}, {"epochs": 1})
    result = run(tmp_path, "ft", spec, loader(digits), init_weights=digits_source)
    src, out = load_file(str(digits_source)), weights(result)
    assert same(under(out, "0"), under(src, "0"))
    assert not torch.equal(out["3.weight"], src["3.weight"])
    assert not torch.equal(out["7.weight"], src["7.weight"])


def test_freeze_problems_name_the_models_layers(tmp_path: Path, digits: Arrays) -> None:
    def problems(freeze: Any) -> list[str]:
        return freeze_problems(job_spec({**CNN, "freeze": freeze}, {}), INFO10, 10)

    assert problems("backbone") == [] and problems(["0", "3.weight"]) == []
    (unknown,) = problems(["conv9"])
    assert "no layer 'conv9'" in unknown and "0, 1, 2, 3, 4, 5, 6, 7" in unknown
    assert problems(["1"]) == ["model.freeze: layer '1' has no parameters to freeze"]
    (everything,) = problems(["0", "3", "7"])
    assert "nothing would train" in everything
    resnet = freeze_problems(job_spec({"arch": "resnet18", "freeze": ["layer9"]}, {}), INFO10, 10)
    assert "conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4, avgpool, fc" in resnet[0]

    spec = job_spec({**CNN, "freeze": ["conv9"]}, {"epochs": 1})
    with pytest.raises(TrainingError) as info:
        run(tmp_path, "bad", spec, loader(digits))
    assert info.value.type == "UnknownLayer" and info.value.stage == "train"
    assert info.value.message == unknown
    with pytest.raises(UnknownLayer):
        apply_freeze(build_model(ModelSpec(**CNN), (1, 8, 8), 10), ["0", "3", "7"], "7")


# --- unfreeze_after, resume, backbone_lr --------------------------------------------------------


def unfreeze_spec() -> JobSpec:
    return job_spec(
        {**CNN, "freeze": "backbone", "unfreeze_after": 1, "backbone_lr": 0.003},
        {"epochs": 3, "scheduler": "step", "step_size": 1, "gamma": 0.5, "grad_clip": 1.0},
        dataset={"val_fraction": 0.15},
        checkpoint={"keep_last": 10},
    )


def test_unfreeze_after_and_its_resume(tmp_path: Path, digits: Arrays, digits_source: Path) -> None:
    """Epoch 1 trains the head only; from epoch 2 on everything trains, also in a run resumed in
    epoch 2 (unfrozen from the epoch count) and in one resumed in epoch 1 (still frozen then)."""
    src = load_file(str(digits_source))
    hooks = RecordingHooks()
    reference = run(
        tmp_path, "ref", unfreeze_spec(), loader(digits), hooks=hooks, init_weights=digits_source
    )
    after_1 = load_file(str(tmp_path / "ref/checkpoints/ckpt-e000001-s0000000/model.safetensors"))
    final = weights(reference)
    assert same(under(after_1, "0"), under(src, "0")) and same(under(after_1, "3"), under(src, "3"))
    assert not torch.equal(after_1["7.weight"], src["7.weight"])
    assert not torch.equal(final["0.weight"], src["0.weight"])
    assert not torch.equal(final["3.weight"], after_1["3.weight"])
    report = train_outputs(hooks)["transfer"]
    assert report["unfrozen_after_epoch"] == 1 and report["frozen"] == ["0", "3"]
    assert reference.trainable_params == reference.total_params

    state = torch.load(
        tmp_path / "ref/checkpoints/ckpt-e000001-s0000000/state.pt", weights_only=True
    )
    groups = state["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["head", "backbone"]
    assert [g["lr"] for g in groups] == [0.01 * 0.5, 0.003 * 0.5]  # each its own, step-decayed

    steps = -(-1527 // 64)  # 24 steps per epoch (val_fraction 0.15 of 1797)
    stops = [("early", 10, (0, 9)), ("mid", steps + 5, (1, 4)), ("late", 2 * steps + 5, (2, 4))]
    for job, stop_at, at in stops:
        stopped = run(
            tmp_path,
            job,
            unfreeze_spec(),
            loader(digits),
            hooks=RecordingHooks(stop_at=(stop_at, "preempted")),
            init_weights=digits_source,
        )
        assert stopped.checkpoint is not None
        assert (stopped.checkpoint.epoch, stopped.checkpoint.step) == at
        hooks = RecordingHooks()
        # A resumed run restores its own weights: the init source is not read again.
        resumed = run(
            tmp_path,
            job,
            unfreeze_spec(),
            loader(digits),
            hooks=hooks,
            init_weights=tmp_path / "gone.safetensors",
        )
        assert resumed.resumed_from is not None
        assert train_outputs(hooks)["transfer"]["start"] == "checkpoint"
        assert same(weights(resumed), final), job


def test_param_groups_and_onecycle_keep_each_groups_lr() -> None:
    model = build_model(ModelSpec(**CNN), (1, 8, 8), 10)
    assert param_groups(model, "7", 0.1, None) == list(model.parameters())
    groups = param_groups(model, "7", 0.1, 0.01)
    assert isinstance(groups, list)
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [
        ("head", 0.1, 2),
        ("backbone", 0.01, 4),
    ]
    t = TrainingSpec(optimizer="sgd", lr=0.1, epochs=2, scheduler="onecycle")
    opt = OPTIMIZERS["sgd"](groups, t)
    SCHEDULERS["onecycle"].build(opt, t, 10)
    assert [g["max_lr"] for g in opt.param_groups] == [0.1, 0.01]
    linear = build_model(ModelSpec(arch="linear"), (1, 8, 8), 10)
    assert [g["name"] for g in param_groups(linear, "1", 0.1, 0.01)] == ["head"]  # no empty group


def test_count_parameters_with_a_frozen_backbone() -> None:
    model = build_model(ModelSpec(arch="mobilenet_v2"), (3, 16, 16), 4)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == {"trainable": total, "total": total}
    frozen = apply_freeze(model, "backbone", "classifier.1")
    assert frozen.layers == ["features"]
    assert count_parameters(model) == {"trainable": 1280 * 4 + 4, "total": total}
    assert state_shapes(model)["classifier.1.weight"] == (4, 1280)


# --- transfer pays: a frozen backbone and a new head beat training from scratch on 100 samples --


def test_a_backbone_from_digits_0_to_4_helps_on_100_samples_of_5_to_9(
    tmp_path: Path, digits: Arrays
) -> None:
    """A cnn trained on digits 0-4; its backbone, frozen, with a new head trained on 100 samples of
    digits 5-9, against the same cnn trained from scratch on those 100 samples with the same budget
    (optimizer, lr, epochs, batch size, seed), both measured on all the other 5-9 digits."""
    started = time.perf_counter()
    X, y = digits.X, digits.y
    low = y < 5
    info_low = DatasetInfo("digits-0-4", "classification", (1, 8, 8), 5, DIGITS[:5], kind="image")
    source = run(
        tmp_path,
        "digits-0-4",
        job_spec({"arch": "cnn", "channels": [16, 32]}, {"epochs": 8, "batch_size": 32}),
        loader(Arrays(X[low], y[low])),
        info=info_low,
    )

    high = torch.nonzero(~low).flatten()
    order = high[torch.randperm(len(high), generator=torch.Generator().manual_seed(0))]
    few, rest = order[:100], order[100:]
    train = Arrays(X[few], y[few] - 5)  # labels 0..4 stand for the digits 5..9
    held_out = Arrays(X[rest], y[rest] - 5)
    info_high = DatasetInfo("digits-5-9", "classification", (1, 8, 8), 5, DIGITS[5:], kind="image")
    budget = {"epochs": 5, "batch_size": 20, "optimizer": "sgd", "lr": 0.05, "seed": 0}

    hooks = RecordingHooks()
    fine_tuned = run(
        tmp_path,
        "fine-tuned",
        job_spec({"arch": "cnn", "channels": [16, 32], "freeze": "backbone"}, budget),
        loader(train, held_out),
        info=info_high,
        hooks=hooks,
        init_weights=source_file(source),
    )
    scratch = run(
        tmp_path,
        "scratch",
        job_spec({"arch": "cnn", "channels": [16, 32]}, budget),
        loader(train, held_out),
        info=info_high,
    )

    assert fine_tuned.evaluation is not None and scratch.evaluation is not None
    assert fine_tuned.evaluation["split"] == "test"
    assert fine_tuned.evaluation["samples"] == int((~low).sum()) - 100
    ft_acc = fine_tuned.evaluation["metrics"]["accuracy"]
    scratch_acc = scratch.evaluation["metrics"]["accuracy"]
    print(
        f"\nheld-out digits 5-9 ({len(rest)} samples): fine-tuned (frozen backbone from 0-4)"
        f" {ft_acc:.3f}, from scratch {scratch_acc:.3f}; {time.perf_counter() - started:.1f} s"
    )
    report = train_outputs(hooks)["transfer"]
    assert report["init"]["head"] == "new"  # digits 0-4 are other classes than 5-9
    assert "other classes" in report["init"]["head_reason"]
    assert report["trainable_params"] == 32 * 2 * 2 * 5 + 5
    assert ft_acc >= 0.85
    assert ft_acc >= scratch_acc + 0.10
