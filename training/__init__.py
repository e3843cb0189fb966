"""Build, train, evaluate and export the TFP Layers VAE on MNIST."""

import os

# TFP layers are Keras 2 layers: TensorFlow must pick tf_keras, and that is decided at its import.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
