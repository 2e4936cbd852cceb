# The egress-flows image: `flows worker`, `flows watch k8s`, `flows ship loki|file|journal`.
# Two stages: the first builds the wheel (setup.py copies sql/ and schemas/ into pipeline/_contracts),
# the second installs only that wheel and its dependencies, so the image runs exactly what
# `pip install egress-flows` gives a user, with no source tree beside it (tests/system/test_wheel.py builds
# the same wheel from the same files and runs it from another directory).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY pipeline ./pipeline
COPY sql ./sql
COPY schemas ./schemas
RUN pip wheel --no-deps -w /dist .

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

COPY --from=build /dist/ /dist/
WORKDIR /
RUN pip install /dist/*.whl && rm -rf /dist \
    && python -c "from pipeline.basics.resources import contract_dir; assert (contract_dir('sql') / '001_flows.sql').is_file()"

USER 10001:10001
EXPOSE 9108
ENTRYPOINT ["flows"]
CMD ["worker"]
