# The services' image for deploy/compose.yaml (machines with Docker).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared shared
COPY services services
COPY gongji gongji
COPY deploy deploy
RUN pip install --no-cache-dir .
