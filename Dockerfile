# asmg-serve: the API (`asmg serve`) and the trainer (`asmg trainer`) from one image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ASMG_HOST=0.0.0.0 \
    ASMG_PORT=8000 \
    ASMG_STATE_DIR=/var/lib/asmg

WORKDIR /opt/asmg
# a C compiler: the trainer builds its GRU kernels (trainer/learning/native) for the CPU it runs on, on first use
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# the CPU build of torch first, from PyTorch's CPU index: the default wheel carries CUDA (several GB)
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY app ./app
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/asmg --create-home asmg

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ASMG_PORT', '8000'), timeout=2)"]
CMD ["asmg", "serve"]
