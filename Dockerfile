# syntax=docker/dockerfile:1
# One image per Cloud Run function, each from this file:
#   docker buildx build --build-arg FUNCTION=on-webhook -t callflow/on-webhook .
# FUNCTION is one of on-webhook, on-audio-uploaded, on-transcript, on-analysis, on-crm-retry, cleanup-scheduled.
# Without a Docker engine, scripts/build-images builds the same image (same binary, files, entrypoint, user, env)
# with cargo and umoci; keep the two in step. scripts/deploy pushes the images and applies terraform/.

FROM rust:1.95-bookworm AS builder
ARG FUNCTION
WORKDIR /src
COPY . .
# A static binary, so the final image can be `scratch`: no loader, no libc, no shared libraries.
# +crt-static on the gnu target links glibc statically (a static-pie binary). That used to break name resolution:
# getaddrinfo loaded the NSS modules (libnss_files, libnss_dns) with dlopen at run time. Since glibc 2.34 those two
# are built into libc itself, so with /etc/nsswitch.conf saying `hosts: files dns` a static binary resolves names
# with no shared library at all (bookworm has glibc 2.36). The linker still warns that "Using 'getaddrinfo' in
# statically linked applications requires at runtime the shared libraries": that is about other NSS modules
# (myhostname, mdns, ...), which the image's nsswitch.conf does not name. (musl would avoid the question, but only
# the gnu target is in the toolchain we build with.)
# --target: RUSTFLAGS then reaches only the target's crates, not build scripts and proc macros (which the compiler
# must load dynamically). Cache mounts keep the registry and the target directory between builds; the binary is
# copied out of the cached target directory, which is not part of the image, without its debug sections (symbols
# stay, so a backtrace still names functions): the release profile's line tables and the C libraries' debug info
# are three quarters of the file.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    test -n "$FUNCTION" || { echo "build with --build-arg FUNCTION=<function>" >&2; exit 1; } \
 && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu -p "$FUNCTION" \
 && mkdir -p /rootfs/usr/local/bin \
 && objcopy --strip-debug "target/x86_64-unknown-linux-gnu/release/$FUNCTION" /rootfs/usr/local/bin/function \
 && chmod 0755 /rootfs/usr/local/bin/function \
 && { ldd /rootfs/usr/local/bin/function 2>&1 | grep -Eq 'statically linked|not a dynamic executable' \
      || { echo "$FUNCTION is not statically linked" >&2; exit 1; }; }
# The rest of the final filesystem:
# - the CA bundle (Debian's ca-certificates): the Google Cloud clients use rustls with the system's roots (tonic's
#   native roots, reqwest's platform verifier, yup-oauth2) and fail without any; SSL_CERT_FILE below names it;
# - a nonroot user and group (uid/gid 65532) for USER, and nsswitch.conf for static glibc's built-in files/dns;
# - the trigger definitions the functions read (CALLFLOW_EVENTARC);
# - a writable /tmp (the nonroot user cannot create one).
RUN install -D -m 0644 /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt \
 && printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' \
      > /rootfs/etc/passwd \
 && printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' > /rootfs/etc/group \
 && printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' > /rootfs/etc/nsswitch.conf \
 && chmod 0644 /rootfs/etc/passwd /rootfs/etc/group /rootfs/etc/nsswitch.conf \
 && mkdir -p /rootfs/etc/callflow/eventarc \
 && cp -R eventarc/. /rootfs/etc/callflow/eventarc/ \
 && chmod -R u=rwX,go=rX /rootfs/etc/callflow \
 && mkdir -p /rootfs/tmp && chmod 1777 /rootfs/tmp

FROM scratch
COPY --from=builder /rootfs/ /
ENV CALLFLOW_EVENTARC=/etc/callflow/eventarc \
    CALLFLOW_ENVIRONMENT=gcp \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
# Cloud Run sets PORT (8080 unless configured otherwise); the functions listen on it.
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/function"]
