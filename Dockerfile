# balancer: a reverse-proxy HTTP load balancer.
#   docker build -t balancer .
#   docker run --rm -p 8080:8080 -p 9090:9090 balancer
#     the demo: two demo backends inside the container (balancer.demo) and the balancer in
#     front of them with the shipped balancer.yaml; curl http://127.0.0.1:8080/
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#       -v "$PWD/my-balancer.yaml:/etc/balancer/balancer.yaml:ro" balancer balancer
#     real use: your own config, and the command `balancer` (it reads $BALANCER_CONFIG).
# 3.11: what CI tests, and the fastest here (callgrind: 160k instructions a request on 3.11,
# ~182k on 3.12 and 3.13; benchmarks/instructions.py).
FROM python:3.11-slim

# BALANCER_LISTEN and BALANCER_ADMIN_LISTEN are read by the shipped balancer.yaml
# (`listen: ${BALANCER_LISTEN:-127.0.0.1:8080}`), not by the balancer itself: a config of your
# own follows them only if it uses them the same way.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BALANCER_CONFIG=/etc/balancer/balancer.yaml \
    BALANCER_LISTEN=0.0.0.0:8080 \
    BALANCER_ADMIN_LISTEN=0.0.0.0:9090

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY balancer ./balancer
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin balancer \
    && mkdir -p /etc/balancer
COPY balancer.yaml /etc/balancer/balancer.yaml

USER balancer
EXPOSE 8080 9090
# The admin API answers /health/live while the process runs (README.md, "Admin API"); the
# config must put it on port 9090 inside the container (the shipped one does, through
# BALANCER_ADMIN_LISTEN), or change the URL here.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health/live', timeout=2)"]
STOPSIGNAL SIGTERM
# The demo by default, so `docker run` shows something: the demo backends on 127.0.0.1:9001
# and :9002 (the shipped config's backends) with the balancer as their child; the demo
# forwards the stop signal to it and exits with its status. For real use, run `balancer`.
CMD ["python", "-m", "balancer.demo", "9001", "9002", "--", "balancer", "-c", "/etc/balancer/balancer.yaml"]
