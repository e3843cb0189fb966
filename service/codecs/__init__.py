"""Wire formats of the standard protocols (KServe v2 / Open Inference Protocol, TF Serving REST): request bodies to
numpy arrays and model outputs back, on top of the signatures in `signatures.py`."""
