"""HTTP service over the exported MNIST VAE SavedModel. Imports TensorFlow only: never `training` or TFP."""
