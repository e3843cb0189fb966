"""The whole suite imports TensorFlow as training does (training/__init__.py): with TF_USE_LEGACY_KERAS=1, set before
any test module imports TensorFlow. Without it, whichever test imported TensorFlow first (the service's) loaded Keras 3
and scikit-learn with it (about a third of TensorFlow's import time, in this process and in every `python -m service`
and training process the tests start, which inherit the variable), although neither the service nor training uses
them: training builds its models with tf_keras, the service only loads SavedModels."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
