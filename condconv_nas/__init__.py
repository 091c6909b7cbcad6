"""condconv-nas: neural architecture search for CondConv.

Importing the package is light: torch, timm and fvcore load on first use of the API below,
optuna only when searching, ray and nni only with their backends.

    import condconv_nas
    result = condconv_nas.search(budget="400M", trials=2)     # the run folder, its front and trials
    metrics = condconv_nas.train(result.front[-1]["spec"], trainer="cifar", out="runs/best")
    condconv_nas.export_onnx("runs/best/model.pt", "best.onnx")   # any batch size, 32 px images
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "ArchSpec": "condconv_nas.spec",
    "load_spec": "condconv_nas.spec",
    "PRESETS": "condconv_nas.spec",
    "build_model": "condconv_nas.models",
    "upcycle": "condconv_nas.models.upcycle",
    "from_timm": "condconv_nas.models.from_timm",
    "count_madds": "condconv_nas.madds",
    "count_params": "condconv_nas.madds",
    "predict_latency": "condconv_nas.latency",
    "measure_latency": "condconv_nas.latency",
    "load_exported": "condconv_nas.training.checkpoint",
    "search": "condconv_nas.nas.run",
    "SearchResult": "condconv_nas.nas.run_folder",
    "SearchConfig": "condconv_nas.nas.options",
    "Reporter": "condconv_nas.progress",
    "TrainReporter": "condconv_nas.progress:Reporter",  # its name before both shared it
    "train": "condconv_nas.training.run",
    "evaluate": "condconv_nas.training.run:evaluate_checkpoint",
    "analyze_routing": "condconv_nas.routing_analysis",
    "condconv_diagnostics": "condconv_nas.routing_analysis",
    "routing_ablation": "condconv_nas.ablation",
    "write_routing": "condconv_nas.routing_analysis",
    "export_onnx": "condconv_nas.export",
}
__all__ = sorted(_API) + ["layers"]


def __getattr__(name):
    if name in _API:
        module, _, attr = _API[name].partition(":")
        return getattr(import_module(module), attr or name)
    if name in ("latency", "layers", "models", "nas", "training"):
        return import_module(f"condconv_nas.{name}")
    raise AttributeError(f"module 'condconv_nas' has no attribute {name!r}")
