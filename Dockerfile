# The mixopt service. Build: docker build -t mixopt .   Run: see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY mixopt ./mixopt
COPY mixers ./mixers
COPY service ./service
COPY migrations ./migrations
COPY proxy_trainer ./proxy_trainer
RUN pip install . && useradd --create-home --uid 10001 mixopt

USER mixopt
WORKDIR /home/mixopt
# Inside a container the service must listen on every interface; auth stays on.
ENV MIXOPT_HOST=0.0.0.0 MIXOPT_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
CMD ["mixopt", "serve"]
