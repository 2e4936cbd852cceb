# The egress-flows image: `flows worker`, `flows watch k8s`, `flows ship loki|file|journal`.
# The install is editable on purpose: pipeline/ reads sql/ and schemas/ from beside itself
# (Path(__file__).parent.parent), so the source tree stays whole in /opt/egress-flows instead of
# a wheel that would leave those directories behind.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLOWS_HOME=/var/lib/flows

# A numeric non-root user: the manifests run it with runAsNonRoot and runAsUser 10001.
RUN groupadd --system --gid 10001 flows \
    && useradd --system --uid 10001 --gid flows --home-dir /var/lib/flows --create-home \
       --shell /usr/sbin/nologin flows

WORKDIR /opt/egress-flows
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY sql ./sql
COPY schemas ./schemas
RUN pip install -e . && python -c "import pipeline.cli.app"

USER 10001:10001
EXPOSE 9108
ENTRYPOINT ["flows"]
CMD ["worker"]
