# The services' image for deploy/compose.yaml (machines with Docker).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
COPY shared shared
COPY services services
COPY gongji gongji
COPY deploy deploy
# The locked versions and hashes (requirements.lock), then the project alone.
RUN pip install --no-cache-dir --require-hashes -r requirements.lock && pip install --no-cache-dir --no-deps --no-build-isolation .
