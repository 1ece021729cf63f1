# The trainjob image: TensorFlow with GPU support, the project's pinned dependencies, and the
# `trainjob` command as the entrypoint. Build and push with:
#   make image IMAGE=registry.example.com/you/trainjob:0.1.0 && make push IMAGE=...
# The Job runs it as `trainjob train /etc/trainjob/spec.yaml --run-id <run id>`.

# The TensorFlow version must equal the one pinned in constraints.txt (a test checks it).
# For CPU-only clusters, build a smaller image with
#   --build-arg BASE_IMAGE=tensorflow/tensorflow:2.21.0
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="trainjob" \
      org.opencontainers.image.description="Train Keras image classifiers as distributed batch jobs on Kubernetes." \
      org.opencontainers.image.licenses="Apache-2.0"

# HOME and the caches point at /tmp because the pod's root filesystem is read-only; the Job
# mounts an emptyDir there. KERAS_HOME does not: that emptyDir would hide the weights baked in
# below. Keras only reads it in the pods (a download, when a spec allows one, goes to
# /tmp/.keras, as Keras itself does with a cache it cannot write).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    KERAS_HOME=/opt/keras \
    MPLCONFIGDIR=/tmp/.matplotlib \
    TF_CPP_MIN_LOG_LEVEL=1

WORKDIR /opt/trainjob

# 1. Dependencies only. This slow layer stays cached until pyproject.toml or constraints.txt
#    change. The list is the runtime `dependencies` of pyproject.toml and its `export` extra
#    (the converters and runtimes of output.formats: what `pip install '.[export]'` adds);
#    constraints.txt pins each one (and everything they pull in) to the tested versions. Dev
#    tools appear only in the constraints, so they are never installed.
COPY pyproject.toml constraints.txt ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; deps = p['dependencies'] + p['optional-dependencies']['export']; open('/tmp/requirements.txt', 'w').write(chr(10).join(deps))" \
 && python3 -m pip install --no-cache-dir -r /tmp/requirements.txt -c constraints.txt \
 && rm /tmp/requirements.txt

# 2. The project itself, fast to rebuild; --no-deps so it cannot change the layer above.
COPY README.md ./
COPY job/ ./job/
RUN python3 -m pip install --no-cache-dir --no-deps . \
 && trainjob --version

# 3. ImageNet weights baked in, for specs with `model.weights: imagenet`:
#      --build-arg WEIGHTS="vgg16 resnet50"   (vgg16 resnet50 mobilenet_v2 efficientnet_b0)
#    fetches those backbones' notop files from Keras's own URLs into $KERAS_HOME/models, where
#    runs look first. Empty by default: no download, a smaller image.
ARG WEIGHTS=""
# $WEIGHTS is unquoted on purpose: one argument per backbone.
RUN if [ -n "$WEIGHTS" ]; then trainjob weights fetch $WEIGHTS; fi

# 4. The non-root user the pod's securityContext runs as (uid and gid 1000). Some base images
#    already have a user 1000; keep it then.
RUN (getent group 1000 || groupadd --gid 1000 trainjob) \
 && (getent passwd 1000 || useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin trainjob)
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 1000:1000

ENTRYPOINT ["trainjob"]
CMD ["--help"]
