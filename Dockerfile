# CPU image of the PaST orchestrator: both environments (project + vLLM CPU serving), the packaged base model's
# GGUF, and the test suite as its default command. The Kubernetes deployments in deployments/prefect.yaml run
# their flows from /opt/past inside this image (PAST_IMAGE), pulling nothing from a host checkout.
#
#   docker build -t past-orchestrator:cpu .
#   docker run --rm past-orchestrator:cpu                  # = make test
#   docker run --rm -v past-home:/data/past -e PAST_HOME=/data/past past-orchestrator:cpu .venv/bin/past doctor
#
# Not built on the development machines (no Docker engine there; docs/scale-out.md says what was run).
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends make gcc g++ git procps util-linux \
    && rm -rf /var/lib/apt/lists/*

# torch's CPU build comes from PyTorch's CPU index (PyPI's default x86_64 wheel is a multi-GB CUDA build);
# everything else from PyPI. The Makefile pins the versions.
ENV PIP_INDEX_URL=https://download.pytorch.org/whl/cpu \
    PIP_EXTRA_INDEX_URL=https://pypi.org/simple \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PAST_REPO=/opt/past

WORKDIR /opt/past
# dependencies first (a code change does not reinstall them): the Makefile keys its stamps on pyproject.toml
COPY pyproject.toml Makefile README.md ./
COPY past/__init__.py past/__init__.py
RUN make venv serve-env PYTHON=python3
COPY . .
RUN .venv/bin/python -m pip install -q --no-deps -e . && touch .venv/.installed

CMD ["make", "test"]
