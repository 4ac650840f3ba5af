# Build: compile the broker into one self-contained executable.
FROM denoland/deno:2.9.6 AS build
WORKDIR /app
COPY deno.json deno.lock main.ts ./
COPY src ./src
RUN deno task compile

# Run: the executable alone, as an unprivileged user, with the store on a volume.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data broker \
  && mkdir -p /data && chown broker /data && chmod 700 /data
COPY --from=build /app/message_broker /usr/local/bin/message_broker
USER broker
ENV BROKER_DATA_DIR=/data BROKER_HOSTNAME=0.0.0.0
VOLUME ["/data"]
EXPOSE 4040 4041 1883 8083
ENTRYPOINT ["/usr/local/bin/message_broker"]
