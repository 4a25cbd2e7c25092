# nexus-jobs in a container: every console script, run as an unprivileged user.
# Used by the Docker Compose example of the README (the MQTT job worker); any command works:
#   docker build -t nexus-jobs:latest .
#   docker run --rm nexus-jobs:latest nexus-jobs --version
FROM python:3.12-slim

# Job steps are shell commands: git and a CA bundle are what they most often need.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/nexus-jobs
# Only what the package needs, so a change to tests or docs does not rebuild this layer.
COPY setup.cfg pyproject.toml README.md ./
COPY nexus_jobs ./nexus_jobs
RUN pip install --no-cache-dir . && nexus-jobs --version

# An unprivileged user (uid 1000, as the Compose example's `user:`); state in its home.
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin worker
USER 1000:1000
ENV NEXUS_STATE_DIR=/home/worker/.local/state/nexus-jobs \
    PYTHONUNBUFFERED=1

# Exec form everywhere: the command itself gets SIGTERM from `docker stop`.
CMD ["mqtt-job-worker", "--verbose"]
