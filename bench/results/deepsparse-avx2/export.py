"""One-off: the synthetic models as opset-13 ONNX files for DeepSparse 1.8 (ds_ab.py), from the project's venv.

    python bench/results/deepsparse-avx2/export.py /tmp/dsm

exporters.onnx writes opset 18 (torch.export); DeepSparse 1.8's onnx 1.14 wants an older one, so this uses
torch's TorchScript exporter at opset 13 with a dynamic batch axis. BatchNorm stays in the graph: both engines
fold it themselves. Same models as `synthetic:S` in the suite (bench.models.synthetic_resnet18).
"""
import pathlib
import sys
import warnings

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
from bench.models import synthetic_resnet18  # noqa: E402

folder = pathlib.Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
for sparsity in (0.0, 0.5, 0.9, 0.95):
    model = synthetic_resnet18(sparsity).eval()
    path = folder / f"synthetic-s{round(sparsity * 100):02d}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    print(path)
