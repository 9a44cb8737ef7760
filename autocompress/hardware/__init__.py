"""Hardware profiles (profiles.py), the measurement protocol (latency.py, the only module that times
things), predictors for absent devices (predictor.py), and the dispatch that says, per profile, how a
latency is obtained here (obtain.py): ``obtain_latency(onnx_path, profile) -> Latency``."""


def obtain_latency(onnx_path, profile, **kwargs):
    """See ``hardware.obtain.obtain_latency``."""
    from .obtain import obtain_latency as obtain

    return obtain(onnx_path, profile, **kwargs)
