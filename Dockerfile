# The server image. torch comes first and pinned (point pip at a CPU wheel index or a local wheel in production):
# letting opacus resolve torch by itself pulls a multi-GB CUDA build.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir torch==2.13.0 \
    && pip install --no-cache-dir -e clients/python -e .
EXPOSE 50051
CMD ["cleanroom", "--help"]
