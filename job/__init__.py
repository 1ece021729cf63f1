"""trainjob: train Keras image classifiers as distributed batch jobs on Kubernetes.

The package holds two programs that share the spec and the environment contract:
the job (runs in every pod and on a laptop) and the submitter (``job.submit``,
runs on the user's machine and never imports TensorFlow).
"""

__version__ = "0.1.0"
