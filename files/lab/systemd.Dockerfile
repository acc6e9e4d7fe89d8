# The lab's systemd host: the debootstrap base plus systemd, run with /sbin/init.
# Built by `llmfleet lab images` with the classic builder (no BuildKit on these machines).
ARG BASE_IMAGE=llmfleet/debian:bookworm
FROM ${BASE_IMAGE}
ENV container=docker DEBIAN_FRONTEND=noninteractive
# Package lists are kept, as on a real host. python3-venv, libnuma1, g++ and python3-dev are what vLLM's CPU build
# needs on a host (g++ and Python.h for torch inductor at run time); having them in the image
# saves every lab converge the download, and the roles still declare (and check) them.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      systemd systemd-sysv dbus iproute2 python3-venv python3-apt libnuma1 g++ python3-dev ca-certificates curl procps \
 && apt-get clean \
 && systemctl mask getty.target systemd-logind.service systemd-udevd.service \
      systemd-udevd-control.socket systemd-udevd-kernel.socket console-getty.service \
      systemd-firstboot.service systemd-remount-fs.service sys-kernel-config.mount \
 && systemctl set-default multi-user.target
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
